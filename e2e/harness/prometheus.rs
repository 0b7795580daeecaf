//! A real Prometheus (Debian's `prometheus`) for a [`Wan`]: it runs in the WAN router's namespace,
//! which reaches every cluster's veth address, with its own config (every federation's and
//! gateway's admin port, labelled with the cluster; the rules shipped in `deploy/prometheus/`),
//! data dir and log in a temp dir, listening on loopback there. Queried through its HTTP API with
//! `ip netns exec … curl`. Killed on drop.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::netns::{FED_ADMIN, GW_ADMIN, Wan};

/// Where Prometheus listens inside the router namespace.
const PROM: &str = "127.0.0.1:19090";
/// From a change (traffic, a killed gateway) to the rules seeing it: scrapes and evaluations
/// every second, rates over a minute; generous for a loaded 2-core machine.
pub const SEE_WITHIN: Duration = Duration::from_secs(60);

/// The rules file Prometheus loads (relative to the repository).
pub const RULES: &str = "deploy/prometheus/isthmus-rules.yml";

/// Prometheus in the router namespace; killed on drop.
pub struct Prometheus {
    router: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(wan: &Wan) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("isthmus-prometheus-")
            .tempdir()
            .expect("temp dir");
        let targets = |port: u16| -> Vec<Value> {
            wan.nodes
                .iter()
                .map(|n| json!({ "targets": [format!("{}:{port}", n.addr)], "labels": { "cluster": n.name } }))
                .collect()
        };
        // JSON is YAML.
        let config = json!({
            "global": { "scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s" },
            "rule_files": [std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(RULES)],
            "scrape_configs": [
                { "job_name": "isthmus-federation", "static_configs": targets(FED_ADMIN) },
                { "job_name": "isthmus-gateway", "static_configs": targets(GW_ADMIN) },
            ],
        });
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config.to_string()).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", wan.router(), "prometheus"])
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={PROM}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("run prometheus: install it with `apt-get install -y prometheus`");
        let prometheus = Prometheus {
            router: wan.router().to_string(),
            _child: child,
            _dir: dir,
        };
        let started = Instant::now();
        while prometheus.get("/-/ready", &[]).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Prometheus not ready within 30 s:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` with URL-encoded query parameters, from inside the router namespace.
    pub async fn get(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<String> {
        super::netns::curl_in(&self.router, &format!("http://{PROM}"), path, params).await
    }

    /// An instant query through `/api/v1/query`: its series.
    pub async fn query(&self, promql: &str) -> Vec<Series> {
        let body = self
            .get("/api/v1/query", &[("query", promql)])
            .await
            .unwrap_or_else(|e| panic!("query `{promql}`: {e:#}\n{}", self.log()));
        let v: Value = serde_json::from_str(&body).expect("query answer is JSON");
        assert_eq!(v["status"], "success", "query `{promql}`: {body}");
        v["data"]["result"]
            .as_array()
            .expect("vector result")
            .iter()
            .map(|s| Series {
                labels: s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// Polls `promql` until `ok` holds for its series; the last answer, or a failure naming it.
    pub async fn wait_for(
        &self,
        what: &str,
        promql: &str,
        ok: impl Fn(&[Series]) -> bool,
    ) -> Vec<Series> {
        let started = Instant::now();
        loop {
            let series = self.query(promql).await;
            if ok(&series) {
                return series;
            }
            assert!(
                started.elapsed() < SEE_WITHIN,
                "{what}: `{promql}` did not show it within {SEE_WITHIN:?}; last answer: {series:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[derive(Debug, Clone)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Clusters named by a query's series.
pub fn clusters_of(series: &[Series]) -> BTreeSet<String> {
    series
        .iter()
        .map(|s| s.label("cluster").to_string())
        .collect()
}

pub fn value_of(series: &[Series], labels: &[(&str, &str)]) -> f64 {
    series
        .iter()
        .filter(|s| labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}
