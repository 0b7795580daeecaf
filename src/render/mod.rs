//! Human output of the read commands: the admin socket's JSON (exactly what `--json` prints)
//! turned into aligned tables, durations and ages (`3s ago`). One module per command family;
//! every function here is pure (the JSON and the time in, text out), so tests feed it JSON.
//!
//! Must not: ask the federation anything or decide what a command prints with `--json`.

pub mod ca;
pub mod catalog;
pub mod gateway;
pub mod peering;
pub mod status;

use serde_json::Value;

/// A value as a table cell: strings bare, null as `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// A duration in the largest unit that keeps it readable: `850ms`, `3s`, `2m`, `5h`, `3d`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match () {
        _ if ms < 1000 => format!("{ms}ms"),
        _ if s < 120 => format!("{s}s"),
        _ if s < 120 * 60 => format!("{}m", s / 60),
        _ if s < 48 * 3600 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long ago something happened, from milliseconds ago (`3s ago`); negative: `never`.
pub fn ago_ms(ms_ago: i64) -> String {
    if ms_ago < 0 {
        "never".to_string()
    } else if ms_ago < 1000 {
        "just now".to_string()
    } else {
        format!("{} ago", duration_ms(ms_ago))
    }
}

/// How long ago a Unix-ms timestamp was, seen at `now_ms`; `-` when absent.
pub fn ago_at(at_ms: &Value, now_ms: i64) -> String {
    match at_ms.as_i64() {
        Some(at) if at > 0 => ago_ms(now_ms.saturating_sub(at).max(0)),
        _ => "-".to_string(),
    }
}

/// The time now in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A table whose columns are as wide as their widest cell (header included), two spaces apart.
/// Columns listed in `right` are right-aligned (numbers).
pub struct Table {
    header: Vec<&'static str>,
    right: Vec<usize>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            right: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Right-aligns these columns.
    pub fn right(mut self, columns: &[usize]) -> Self {
        self.right = columns.to_vec();
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table, one line per row after the header, each ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                let pad = width.saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right.contains(&i) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < columns {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key  value` lines with the keys padded to one width.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_durations_read_like_words() {
        assert_eq!(ago_ms(-1), "never");
        assert_eq!(ago_ms(400), "just now");
        assert_eq!(ago_ms(3_200), "3s ago");
        assert_eq!(ago_ms(119_000), "119s ago");
        assert_eq!(ago_ms(150_000), "2m ago");
        assert_eq!(ago_ms(3 * 3600 * 1000), "3h ago");
        assert_eq!(ago_ms(5 * 86_400 * 1000), "5d ago");
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(ago_at(&Value::Null, 10), "-");
        assert_eq!(ago_at(&serde_json::json!(7_000), 10_000), "3s ago");
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&["NAME", "N", "NOTE"]).right(&[1]);
        t.row(vec!["a-long-name".into(), "7".into(), "x".into()]);
        t.row(vec!["b".into(), "1234".into(), "".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME            N  NOTE");
        assert_eq!(lines[1], "a-long-name     7  x");
        assert_eq!(lines[2], "b            1234");
        // Every column starts at the same offset on every line.
        let col = lines[0].find("NOTE").expect("NOTE");
        assert_eq!(&lines[1][col..], "x");
    }
}
