//! `isthmus sample-backends` is a supported tool: it is listed in `isthmus --help`, its own
//! `--help` explains every endpoint the code serves, and the real binary answers them (HTTP
//! `GET /`, `/hold`, and the TCP echo here).

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

use crate::harness::federation::exe;
use crate::harness::gateway::http_get;

fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(exe())
        .args(args)
        .output()
        .expect("run isthmus");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sample_backends_help_lists_every_endpoint() {
    let top = help(&["--help"]);
    assert!(
        top.lines()
            .any(|l| l.trim_start().starts_with("sample-backends")),
        "`isthmus --help` lists sample-backends:\n{top}"
    );
    let own = help(&["sample-backends", "--help"]);
    // Every HTTP path, gRPC method and listener the handlers in src/sample.rs serve.
    for needle in [
        "GET  /  ",
        "/echo",
        "/sink",
        "/bytes?n=N",
        "/slow?ms=N",
        "/hold?ms=N",
        "/ws ",
        "/ws/identity",
        "isthmus.demo.Echo",
        "Say",
        "Count",
        "Chat",
        "TCP: echoes",
        "--cluster",
        "[default: 127.0.0.1:8080]",
        "ISTHMUS_SAMPLE_HTTP",
    ] {
        assert!(own.contains(needle), "missing {needle:?} in:\n{own}");
    }
}

#[tokio::test]
async fn sample_backends_answer_what_their_help_says() {
    let mut child = Command::new(exe())
        .args(["sample-backends", "--cluster", "west"])
        .args([
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start sample-backends");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a ready line within 20 s")
        .expect("read")
        .expect("a line");
    let ready: Value = serde_json::from_str(&line).expect("JSON ready line");
    let addr = |k: &str| -> std::net::SocketAddr {
        ready["ready"][k]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {ready}"))
    };

    let root: Value = serde_json::from_str(
        http_get(addr("http"), "/anything")
            .await
            .expect("GET /anything")
            .trim(),
    )
    .expect("JSON");
    assert_eq!(root["cluster"], "west", "{root}");
    assert_eq!(root["path"], "/anything", "{root}");
    assert_eq!(root["method"], "GET", "{root}");

    // /hold answers its body no sooner than asked.
    let started = Instant::now();
    let held = http_get(addr("grpc"), "/hold?ms=300")
        .await
        .expect("GET /hold");
    assert!(
        held.contains(r#"{"cluster":"west","held_ms":300}"#),
        "{held}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    let mut tcp = tokio::net::TcpStream::connect(addr("tcp"))
        .await
        .expect("tcp");
    tcp.write_all(b"ping across clusters").await.expect("write");
    tcp.shutdown().await.expect("half-close");
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut back))
        .await
        .expect("echo within 10 s")
        .expect("read");
    assert_eq!(back, b"ping across clusters");
    let _ = child.kill().await;
}
