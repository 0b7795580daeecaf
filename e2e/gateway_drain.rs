//! Gateway hygiene over time: header-read, TLS-handshake and idle timeouts close what they
//! should, and SIGTERM drains — the request in flight finishes, new requests go to another
//! cluster, nobody sees an error.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::gateway::mesh;

/// Reads until EOF or `limit`; returns what was read and when the peer closed (None: still open).
async fn read_until_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(started.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, None),
        }
    }
}

async fn get_via_proxy(proxy: std::net::SocketAddr, url: &str) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-x",
        ])
        .arg(proxy.to_string())
        .arg(url)
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_close_stalled_connections_and_sigterm_drains() {
    let limits = json!({ "limits": {
        "header_read_timeout": "1s", "handshake_timeout": "1s", "idle_timeout": "3s"
    }});
    let mut m = mesh(91, "", json!({}), limits).await;
    let proxy = m[0].gw.proxy;

    // Half a request head, then nothing: closed after the header-read timeout.
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(b"GET http://echo.demo.svc.clusterset.local:8080/ HTTP/1.1\r\nHost: echo")
        .await
        .expect("write");
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
    let closed = closed.expect("a stalled request head is cut off");
    assert!(closed < Duration::from_secs(6), "closed after {closed:?}");

    // A TCP connection to the inbound port that never starts TLS: closed after the handshake
    // timeout.
    let mut s = TcpStream::connect(m[1].gw.inbound).await.expect("connect");
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
    let closed = closed.expect("a silent TLS client is cut off");
    assert!(closed < Duration::from_secs(6), "closed after {closed:?}");

    // A keep-alive connection that goes quiet after one request: closed after the idle timeout.
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(b"GET http://echo.demo.svc.clusterset.local:8080/ HTTP/1.1\r\nHost: echo.demo.svc.clusterset.local:8080\r\n\r\n")
        .await
        .expect("write");
    let (got, closed) = read_until_close(&mut s, Duration::from_secs(15)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let closed = closed.expect("an idle keep-alive connection is closed");
    assert!(
        closed >= Duration::from_secs(2) && closed < Duration::from_secs(12),
        "closed after {closed:?}"
    );

    // Drain: a slow request in flight to west survives west's gateway being told to stop, and
    // requests during and after the drain go to south without a single failure.
    // The service answers its headers at once and its body 3 s later: once the headers are
    // here, the request is in flight at west (no guess of how long that takes).
    let mut slow = TcpStream::connect(proxy).await.expect("connect");
    slow.write_all(
        b"GET http://west.echo.demo.svc.clusterset.local:8080/hold?ms=3000 HTTP/1.1\r\n\
          Host: west.echo.demo.svc.clusterset.local:8080\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
            .await
            .expect("the held request's headers within 10 s")
            .expect("read");
        assert!(n > 0, "closed before the headers: {head:?}");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let slow = tokio::spawn(async move {
        let (rest, closed) = read_until_close(&mut slow, Duration::from_secs(20)).await;
        head.extend_from_slice(&rest);
        (String::from_utf8_lossy(&head).into_owned(), closed)
    });
    let west_gw = &mut m[1].gw;
    let term = west_gw.pid().expect("west gateway pid");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &term.to_string()])
        .status();
    let mut served = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let (code, body) =
            get_via_proxy(proxy, "http://echo.demo.svc.clusterset.local:8080/").await;
        assert_eq!(code, 200, "a request failed during west's drain: {body}");
        served.push(body);
    }
    let (text, closed) = slow.await.expect("held request");
    assert!(closed.is_some(), "the held response never ended: {text}");
    assert!(
        text.contains("\"cluster\":\"west\",\"held_ms\":3000"),
        "the in-flight request was cut: {text}"
    );
    let last = served.last().expect("requests ran");
    assert!(
        last.contains("\"cluster\":\"south\""),
        "after the drain: {last}"
    );
    m[1].gw.wait_exit(Duration::from_secs(15)).await;
}
