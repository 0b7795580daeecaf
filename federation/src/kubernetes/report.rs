//! What is wrong with the Kubernetes side right now, for `isthmus status` (`kubernetes` in
//! `--json`): whether the export watches have listed their objects, and every current problem
//! of the export watches and the import writer (the API server unreachable, a verb refused,
//! target ports exhausted...) with when it began. The log says each problem once when it
//! appears and when it clears; metrics count occurrences; this says what holds *now*.
//!
//! Must not: decide anything; it only mirrors what the watches and the writer report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::node::now_ms;

#[derive(Clone, Default)]
pub struct KubeReport {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// `None` when the export source does not run.
    exports_synced: Option<bool>,
    imports: bool,
    /// By area (e.g. `exports: watch endpointslices in all namespaces`, `imports: api`).
    problems: BTreeMap<String, Problem>,
}

struct Problem {
    text: String,
    since_ms: i64,
}

impl KubeReport {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The export source runs; `synced` once every watch has listed its objects.
    pub fn exports_synced(&self, synced: bool) {
        self.with(|i| i.exports_synced = Some(synced));
    }

    /// The import writer runs.
    pub fn imports_running(&self) {
        self.with(|i| i.imports = true);
    }

    /// `area` has a problem now (its start time is kept while the text changes).
    pub fn problem(&self, area: &str, text: &str) {
        self.with(|i| {
            let since_ms = i.problems.get(area).map_or_else(now_ms, |p| p.since_ms);
            i.problems.insert(
                area.to_owned(),
                Problem {
                    text: text.to_owned(),
                    since_ms,
                },
            );
        });
    }

    /// `area` works.
    pub fn clear(&self, area: &str) {
        self.with(|i| i.problems.remove(area));
    }

    /// `null` when neither exports nor imports run.
    pub fn to_json(&self) -> Value {
        self.with(|i| {
            if i.exports_synced.is_none() && !i.imports {
                return Value::Null;
            }
            let problems: Vec<Value> = i
                .problems
                .iter()
                .map(|(area, p)| json!({"area": area, "problem": p.text, "since_ms": p.since_ms}))
                .collect();
            json!({
                "exports": i.exports_synced.map(|s| json!({ "synced": s })),
                "imports": i.imports,
                "problems": problems,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_show_while_they_hold_with_their_start() {
        let r = KubeReport::default();
        assert_eq!(r.to_json(), Value::Null);
        r.exports_synced(false);
        r.problem("exports: list services", "connection refused");
        let first = r.to_json()["problems"][0]["since_ms"].clone();
        r.problem("exports: list services", "403");
        let v = r.to_json();
        assert_eq!(v["exports"]["synced"], false);
        assert_eq!(v["imports"], false);
        assert_eq!(v["problems"][0]["problem"], "403");
        assert_eq!(v["problems"][0]["since_ms"], first);
        r.clear("exports: list services");
        r.exports_synced(true);
        assert_eq!(
            r.to_json(),
            json!({"exports": {"synced": true}, "imports": false, "problems": []})
        );
    }
}
