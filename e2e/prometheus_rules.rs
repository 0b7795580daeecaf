//! What `deploy/` ships for Prometheus and Grafana, checked without a cluster: `promtool check
//! rules`, `promtool check config` (the example scrape config) and `promtool test rules` pass,
//! every alert has a unit test, and every query of the Grafana dashboard is a recorded series or
//! an expression of the rules file. Also the readers the real-Prometheus scenario
//! (`prometheus.rs`) shares: the rules and `docs/metrics.md`.
//!
//! Needs `promtool` (Debian `prometheus`): without it the tests fail with the install hint.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub use crate::harness::prometheus::RULES;
pub const RULE_TESTS: &str = "deploy/prometheus/tests/alerts.test.yml";
pub const EXAMPLE_CONFIG: &str = "deploy/prometheus/prometheus.example.yml";
pub const DASHBOARD: &str = "deploy/grafana/isthmus-clusterset.json";
pub const METRICS_DOC: &str = "docs/metrics.md";

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A recording rule (`record` set) or an alert (`alert` set) with its expression.
#[derive(Debug, Clone)]
pub struct Rule {
    pub record: Option<String>,
    pub alert: Option<String>,
    pub expr: String,
}

/// Every rule of the shipped rules file, in order.
pub fn rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(repo(RULES)).expect("read the rules file");
    let doc: Value = serde_saphyr::from_str(&text).expect("rules file is YAML");
    let mut out = Vec::new();
    for group in doc["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            out.push(Rule {
                record: r["record"].as_str().map(str::to_string),
                alert: r["alert"].as_str().map(str::to_string),
                expr: r["expr"].as_str().expect("expr").trim().to_string(),
            });
        }
    }
    out
}

/// One row of `docs/metrics.md`'s table: name, type, sorted labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Documented {
    pub name: String,
    pub kind: String,
    pub labels: Vec<String>,
    /// Exposed only with some config ("With `kubernetes.exports`: ..." in its meaning).
    pub conditional: bool,
}

/// The table rows of `docs/metrics.md`: `| `name` | type | `a`, `b` | help |`.
pub fn documented_metrics() -> Vec<Documented> {
    let text = std::fs::read_to_string(repo(METRICS_DOC)).expect("read docs/metrics.md");
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let name = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            if !name.starts_with("isthmus_") {
                return None;
            }
            let mut labels: Vec<String> = cells
                .get(2)?
                .split(',')
                .map(|s| s.trim().trim_matches('`').to_string())
                .filter(|s| !s.is_empty() && s != "—")
                .collect();
            labels.sort();
            Some(Documented {
                name: name.to_string(),
                kind: cells.get(1)?.to_string(),
                labels,
                conditional: cells.get(3).is_some_and(|m| m.starts_with("With `")),
            })
        })
        .collect()
}

/// Runs `promtool args…` in the repository; its output, or a failure that says what to do.
pub fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install it with `apt-get install -y prometheus`")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`promtool {}` failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn promtool_checks_and_unit_tests_the_shipped_rules() {
    let checked = promtool(&["check", "rules", RULES]);
    let count = rules().len();
    assert!(
        checked.contains(&format!("SUCCESS: {count} rules found")),
        "{checked}"
    );
    let config = promtool(&["check", "config", EXAMPLE_CONFIG]);
    assert!(
        config.contains("is valid prometheus config file"),
        "{config}"
    );
    let tested = promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Each alert is unit-tested, firing and quiet (two or more evaluations of it).
    let tests = std::fs::read_to_string(repo(RULE_TESTS)).expect("read the rule tests");
    for alert in rules().into_iter().filter_map(|r| r.alert) {
        let evaluations = tests.matches(&format!("alertname: {alert}\n")).count();
        assert!(
            evaluations >= 2,
            "{alert} has {evaluations} evaluation(s) in {RULE_TESTS}: test it firing and quiet"
        );
    }
}

#[test]
fn the_dashboard_queries_only_what_the_rules_ship() {
    let rules = rules();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo(DASHBOARD)).expect("read the dashboard"),
    )
    .expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "no panels in {DASHBOARD}");
    let mut seen = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr").trim();
            let known = rules
                .iter()
                .any(|r| r.record.as_deref() == Some(expr) || r.expr == expr);
            assert!(
                known,
                "panel {:?} queries `{expr}`, which is neither a series recorded by {RULES} nor \
                 one of its expressions",
                panel["title"]
            );
            seen += 1;
        }
    }
    assert!(seen >= panels.len(), "every panel has a query");
}

#[test]
fn the_metrics_doc_is_a_well_formed_table() {
    let rows = documented_metrics();
    assert!(
        rows.len() >= 30,
        "only {} rows in {METRICS_DOC}",
        rows.len()
    );
    let kinds = ["counter", "gauge", "histogram"];
    for row in &rows {
        assert!(kinds.contains(&row.kind.as_str()), "{row:?}: type");
    }
    let mut names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    let total = names.len();
    names.dedup();
    assert_eq!(
        names.len(),
        total,
        "a metric is listed twice in {METRICS_DOC}"
    );
    // Every documented family is still registered somewhere in the sources.
    let mut sources = String::new();
    for dir in ["federation/src", "gateway/src", "dns/src"] {
        collect_rs(&repo(dir), &mut sources);
    }
    for row in &rows {
        let base = row
            .name
            .strip_suffix("_total")
            .unwrap_or(&row.name)
            .to_string();
        let short = ["isthmus_federation_", "isthmus_gateway_", "isthmus_store_"]
            .iter()
            .find_map(|p| base.strip_prefix(p))
            .unwrap_or(&base);
        // Or registered in a sub-registry: `sub_registry_with_prefix("<prefix>")` + `"<rest>"`.
        let in_sub_registry = sources
            .split("sub_registry_with_prefix(\"")
            .skip(1)
            .filter_map(|after| after.split_once('"').map(|(prefix, _)| prefix))
            .filter_map(|prefix| base.strip_prefix(prefix)?.strip_prefix('_'))
            .any(|rest| sources.contains(&format!("\"{rest}\"")));
        assert!(
            in_sub_registry
                || sources.contains(&format!("\"{short}\""))
                || sources.contains(&format!("\"{base}\"")),
            "{} is documented but registered nowhere in the sources",
            row.name
        );
    }
}

fn collect_rs(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
}
