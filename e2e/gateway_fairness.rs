//! Fair local listeners, against a real gateway: one address holding slow connections by the
//! hundred cannot lock another client out of a service VIP, and the gateway counts what it refuses
//! instead of logging each refusal. Federation indexes 126-128 belong to this file.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::harness::gateway::mesh;

const SLOW: Ipv4Addr = Ipv4Addr::new(127, 0, 126, 77);
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 126, 78);

/// Keeps one slowloris connection from [`SLOW`] open to `to` until `stop`: a request head sent a
/// line a second, and a new connection when the gateway closes it. Counts connections the gateway
/// closed before the first line (refused at accept).
async fn slow_client(to: SocketAddr, stop: Arc<AtomicBool>, refused: Arc<AtomicUsize>) {
    while !stop.load(Ordering::Relaxed) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((SLOW, 0))).expect("bind");
        let Ok(mut conn) = socket.connect(to).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let opened = Instant::now();
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        let mut byte = [0u8; 1];
        loop {
            if conn.write_all(&head).await.is_err() {
                break;
            }
            head = b"x-slow: 1\r\n".to_vec();
            match tokio::time::timeout(Duration::from_secs(1), conn.read(&mut byte)).await {
                Err(_) if !stop.load(Ordering::Relaxed) => {}
                _ => break,
            }
        }
        if opened.elapsed() < Duration::from_millis(900) {
            refused.fetch_add(1, Ordering::Relaxed);
            // A refused client retries, as a real one would, not in a tight loop.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `curl` from [`CLIENT`] (a real client, in its own process): the status, or 0 when there was
/// no HTTP answer.
async fn get_from_client(url: &str) -> u16 {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--interface", &CLIENT.to_string(), url])
        .output()
        .await
        .expect("curl is installed (apt-get install curl)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test]
async fn one_address_cannot_lock_another_out_of_a_vip_and_refusals_are_not_logged_each() {
    let members = mesh(
        126,
        "",
        json!({}),
        json!({ "limits": { "max_connections": 200 } }),
    )
    .await;
    let east = &members[0];
    let vip = east.vip("demo/echo").await;
    let url = format!("http://{vip}:8080/");
    assert_eq!(get_from_client(&url).await, 200, "echo answers before");
    let log_lines_before = warn_lines(east);

    // 260 slow connections from one address: more than the gateway's 200 slots.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let to = SocketAddr::new(vip, 8080);
    let slow: Vec<_> = (0..260)
        .map(|_| tokio::spawn(slow_client(to, stop.clone(), refused.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Another address is served every time while they hold on.
    let mut failed = Vec::new();
    for i in 0..60 {
        let status = get_from_client(&url).await;
        if status != 200 {
            failed.push((i, status));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in slow {
        let _ = t.await;
    }
    let refused = refused.load(Ordering::Relaxed);
    let counted = east
        .gw
        .metric(
            "isthmus_gateway_connections_refused_total",
            &["listener=\"vip\""],
        )
        .await;
    let warned = warn_lines(east) - log_lines_before;
    eprintln!(
        "failed requests {failed:?}; slow connections refused {refused} (counted {counted}); WARN lines about refusals {warned}"
    );
    assert!(
        failed.is_empty(),
        "requests from {CLIENT} failed while {SLOW} held slow connections: {failed:?}"
    );
    assert!(
        refused >= 60,
        "the slow address was held to its share: {refused} refused"
    );
    assert!(
        counted >= refused as f64 * 0.9,
        "every refusal is counted: {counted} of {refused}"
    );
    assert!(
        warned * 20 <= refused,
        "refusals are logged in summaries, not each: {warned} lines for {refused}"
    );
}

/// WARN lines of east's gateway log about refused connections.
fn warn_lines(east: &crate::harness::gateway::Member) -> usize {
    east.gw
        .log_tail(usize::MAX)
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("refus"))
        .count()
}
