//! A real OTLP/gRPC trace receiver (`otlp_receiver.py`: `opentelemetry-proto` + `grpcio` in the
//! e2e venv) that writes every span it receives to a file, and what the scenario reads back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::gateway_protocols::venv_python;

const SCRIPT: &str = include_str!("otlp_receiver.py");

pub struct Receiver {
    child: Child,
    pub endpoint: String,
    file: PathBuf,
}

impl Receiver {
    pub async fn start(dir: &Path) -> Receiver {
        let script = dir.join("otlp_receiver.py");
        std::fs::write(&script, SCRIPT).expect("write the receiver");
        let file = dir.join("spans.jsonl");
        let mut child = Command::new(venv_python())
            .arg(&script)
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the venv's python");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the OTLP receiver starts within 30 s")
            .expect("read")
            .unwrap_or_else(|| {
                panic!(
                    "the OTLP receiver exited; is the venv complete (`~/.cache/isthmus-venv/bin/pip \
                     install grpcio opentelemetry-proto`, or deploy/test-deps)?"
                )
            });
        let port = serde_json::from_str::<Value>(&line).expect("port line")["port"]
            .as_u64()
            .expect("port");
        Receiver {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            file,
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`) to the receiver.
    pub async fn signal(&mut self, signal: &str) {
        let pid = self.child.id().expect("receiver running").to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .expect("kill");
        assert!(ok.success(), "kill -{signal} {pid}");
        if signal == "KILL" {
            let _ = self.child.wait().await;
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The spans of `trace_id`, once `done` holds for them (30 s at most).
    pub async fn trace(&self, trace_id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            if done(&spans) {
                return spans;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("trace {trace_id} incomplete after 30 s: {spans:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// OTLP span kinds.
pub const SERVER: u64 = 2;
pub const CLIENT: u64 = 3;
/// OTLP status code of a failed span.
pub const ERROR: u64 = 2;

pub fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// The one span among `spans` whose parent is `parent` and that matches `pred`.
pub fn child<'a>(spans: &'a [Value], parent: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parent_span_id"] == parent && pred(s))
        .collect();
    assert_eq!(found.len(), 1, "one child of {parent} expected: {spans:#?}");
    found[0]
}

/// A random hex ID of `bytes` bytes.
pub fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom as _;
    let mut b = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}
