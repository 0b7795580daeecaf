//! Which text format `/metrics` answers in, and the rewrite from the OpenMetrics text that
//! prometheus-client writes to the Prometheus text format (version 0.0.4).
//!
//! The two differ in what this port serves in three ways: an OpenMetrics counter family is named
//! without its `_total` suffix (`# TYPE x counter`, sample `x_total`) while the Prometheus format
//! names the family as its samples (`# TYPE x_total counter`); OpenMetrics has `# UNIT` lines and
//! ends with `# EOF`, which the Prometheus format has not; an `info` family is a gauge there.
//! Served as OpenMetrics to a client that does not ask for it (curl, `promtool check metrics`),
//! every counter reads as a family without HELP text, and the body does not parse.
//!
//! This module owns the format only: it must not know any metric.

/// Content type of the OpenMetrics answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text answer.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (Prometheus itself does, with the highest
/// preference); anything else gets the Prometheus text format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            let refused = params.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

/// Rewrites OpenMetrics text into the Prometheus text format: counter families take their
/// `_total` name, `info` families become gauges named `<family>_info`, `unknown` becomes
/// `untyped`, and `# UNIT`/`# EOF` lines, counters' `_created` samples and exemplars go.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The current family and its type, from its `# TYPE` line (HELP comes first: look ahead).
    let mut family = String::new();
    let mut kind = "";
    let lines: Vec<&str> = openmetrics.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let next_kind = lines
                .get(i + 1)
                .and_then(|l| l.strip_prefix("# TYPE "))
                .and_then(|t| t.split_once(' '))
                .filter(|(n, _)| *n == name)
                .map_or("", |(_, k)| k);
            out.push_str(&format!("# HELP {} {help}\n", family_name(name, next_kind)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, om_kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = name.to_string();
            kind = match om_kind {
                "counter" => "counter",
                "gauge" | "info" | "stateset" => "gauge",
                "histogram" | "gaugehistogram" => "histogram",
                "summary" => "summary",
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {kind}\n", family_name(name, om_kind)));
        } else if line.starts_with("# ") || line.is_empty() {
            // `# UNIT`, `# EOF`: no such lines in the Prometheus format.
        } else {
            let sample = line.split_once(" # ").map_or(*line, |(s, _exemplar)| s);
            let name = sample.split(['{', ' ']).next().unwrap_or("");
            if kind == "counter" && name == format!("{family}_created") {
                continue;
            }
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// A family's name in the Prometheus format, from its OpenMetrics name and type.
fn family_name(name: &str, om_kind: &str) -> String {
    match om_kind {
        "counter" => format!("{name}_total"),
        "info" => format!("{name}_info"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{prometheus_text, wants_openmetrics};

    #[test]
    fn prometheus_asks_for_openmetrics_and_curl_does_not() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(Some("Application/OpenMetrics-Text")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(None));
    }

    #[test]
    fn families_take_their_prometheus_names() {
        let om = "# HELP reqs Requests.\n# TYPE reqs counter\nreqs_total{side=\"in\"} 3\nreqs_created 1.5\n\
                  # HELP temp Temperature.\n# TYPE temp gauge\n# UNIT temp celsius\ntemp 2\n\
                  # HELP build Build.\n# TYPE build info\nbuild_info{v=\"1\"} 1\n\
                  # HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 1 # {id=\"a\"} 0.5\nlat_sum 0.5\nlat_count 1\n\
                  # HELP odd Odd.\n# TYPE odd unknown\nodd 1\n# EOF\n";
        let want = "# HELP reqs_total Requests.\n# TYPE reqs_total counter\nreqs_total{side=\"in\"} 3\n\
                    # HELP temp Temperature.\n# TYPE temp gauge\ntemp 2\n\
                    # HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{v=\"1\"} 1\n\
                    # HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 1\nlat_sum 0.5\nlat_count 1\n\
                    # HELP odd Odd.\n# TYPE odd untyped\nodd 1\n";
        assert_eq!(prometheus_text(om), want);
    }

    #[test]
    fn a_family_without_help_or_samples_stays_well_formed() {
        assert_eq!(
            prometheus_text("# TYPE c counter\n# EOF\n"),
            "# TYPE c_total counter\n"
        );
        assert_eq!(prometheus_text(""), "");
        assert_eq!(prometheus_text("# EOF\n"), "");
    }
}
