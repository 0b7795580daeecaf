//! Authorization that follows open exchanges (three clusters as separate processes, real TCP
//! clients): a CONNECT tunnel, a raw TCP connection to a per-cluster VIP, a WebSocket, a
//! streaming download (one read, one its client stopped reading), an upload that has no
//! response yet and a bidirectional gRPC stream (whose caller keeps sending), all from east to
//! west and open before west's operator acts, are closed
//! within seconds — measured from the client — when west denies east, when west stops exporting
//! the service, and when west removes east as a peer; west's access log says why and a fresh
//! attempt is refused.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::harness::gateway::{Gateway, Member, mesh, west_download};
use crate::harness::{CONVERGE, IMPORT_ALL};

/// How long an open exchange may survive the change that disallows it, from the catalog write
/// (the federation notices the file, the gateway applies the config, the re-check runs; fresh
/// requests are refused in well under a second).
const CLOSE_WITHIN: Duration = Duration::from_secs(15);

const TCP_ECHO: &str = "west.tcp-echo.demo.svc.clusterset.local:9000";
const ECHO: &str = "west.echo.demo.svc.clusterset.local:8080";

/// West's catalog: echo (http 8080), grpc-echo (grpc 50051) and, when `tcp`, tcp-echo (tcp
/// 9000), with `policies`.
fn west_catalog(west: &Member, tcp: bool, policies: &str) -> String {
    let s = &west.samples;
    let tcp_echo = if tcp {
        format!(
            "  - namespace: demo\n    name: tcp-echo\n    ports: [{{port: 9000, protocol: tcp}}]\n    endpoints: [{{address: \"{}\"}}]\n",
            s.tcp
        )
    } else {
        String::new()
    };
    format!(
        "exports:\n\
         \x20 - namespace: demo\n    name: echo\n    ports: [{{port: 8080, protocol: http}}]\n    endpoints: [{{address: \"{}\"}}]\n\
         \x20 - namespace: demo\n    name: grpc-echo\n    ports: [{{port: 50051, protocol: grpc}}]\n    endpoints: [{{address: \"{}\"}}]\n\
         {tcp_echo}{IMPORT_ALL}policies:\n{policies}",
        s.http, s.grpc
    )
}

const NO_POLICY: &str = "  none: {services: [\"*\"], retry: {retries: 1}}\n";

const DENY_EAST: &str = "  deny-east:\n\
     \x20   services: [demo/tcp-echo, demo/echo, demo/grpc-echo]\n\
     \x20   authorization:\n\
     \x20     deny:\n\
     \x20       - {clusters: [east]}\n";

async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut byte))
            .await
            .expect("a response head within 20 s")
            .expect("read the head");
        assert!(
            n > 0,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Writes `msg` and expects it back within 20 s.
async fn echoes(s: &mut TcpStream, msg: &[u8], expect: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; expect.len()];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut back))
        .await
        .expect("the echo within 20 s")
        .expect("read the echo");
    assert_eq!(back, expect);
}

/// `CONNECT` to `authority` through east's proxy port; the head of the answer and the stream.
async fn connect(proxy: SocketAddr, authority: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .expect("write CONNECT");
    (read_head(&mut s).await, s)
}

/// An open CONNECT tunnel to west's tcp-echo, proven to echo.
async fn tunnel(proxy: SocketAddr) -> TcpStream {
    let (head, mut s) = connect(proxy, TCP_ECHO).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT {TCP_ECHO}: {head}"
    );
    echoes(&mut s, b"ping", b"ping").await;
    s
}

/// A masked client text frame.
fn ws_frame(text: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).expect("short")];
    frame.extend_from_slice(&mask);
    frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// An open WebSocket to west's echo through east's proxy port, proven to echo a message.
async fn websocket(proxy: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let handshake = format!(
        "GET http://{ECHO}/ws HTTP/1.1\r\nHost: {ECHO}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(handshake.as_bytes()).await.expect("handshake");
    let head = read_head(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "WebSocket to {ECHO}: {head}"
    );
    echoes(&mut s, &ws_frame(b"hello"), b"\x81\x05hello").await;
    s
}

/// A streaming download from west's echo (1 GiB, no declared length), its head read.
async fn download(proxy: SocketAddr) -> TcpStream {
    let mut s = west_download(proxy, 64 * 1024).await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "download: {head}");
    s
}

/// A streaming download from west's echo (2 GiB, no declared length) that its client stops
/// reading once the head is in: back-pressure reaches west through east.
async fn stalled_download(proxy: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    let mut s = socket.connect(proxy).await.expect("connect to the proxy");
    let req = format!("GET http://{ECHO}{STALLED} HTTP/1.1\r\nHost: {ECHO}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send the request");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "stalled download: {head}");
    s
}

const STALLED: &str = "/bytes?n=2147483648";

/// A chunked upload to west's `/sink` (which answers only once the body ends) through east's
/// proxy, its writer sending 16 KiB chunks until a write fails. The read half and the writer
/// (it returns how many bytes it sent and the write error).
async fn endless_upload(
    proxy: SocketAddr,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::task::JoinHandle<(u64, std::io::Error)>,
) {
    let mut s = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let head = format!(
        "POST http://{ECHO}/sink HTTP/1.1\r\nHost: {ECHO}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("send the head");
    let (r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = format!("4000\r\n{}\r\n", "u".repeat(0x4000));
        let mut sent = 0u64;
        loop {
            if let Err(e) = w.write_all(chunk.as_bytes()).await {
                return (sent, e);
            }
            sent += 0x4000;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (r, writer)
}

/// Waits for west's access-log line of the request to `path` closed by a config change.
async fn closed_path_line(gw: &Gateway, path: &str, deadline: Instant) -> Value {
    loop {
        let found = gw.access_log().into_iter().find(|l| {
            l["side"] == "inbound"
                && l["path"] == path
                && l["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("closed by a config change (authorization)"))
        });
        if let Some(line) = found {
            return line;
        }
        if Instant::now() > deadline {
            gw.fail(&format!(
                "no access-log line of {path} closed by a config change: {:?}",
                gw.access_log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads `s` (slowly enough that a download cannot finish) until the gateway closes it; fails
/// the test unless that happens before `deadline`. Returns when it closed.
async fn closed_by(gw: &Gateway, what: &str, s: &mut TcpStream, started: Instant) -> Duration {
    let deadline = started + CLOSE_WITHIN;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => gw.fail(&format!(
                "the {what} is still open {} s after the change that disallows it",
                CLOSE_WITHIN.as_secs()
            )),
        }
    }
}

/// Waits for the inbound access-log line of a `service` exchange closed with `cause`.
async fn closed_line(gw: &Gateway, service: &str, protocol: &str, cause: &str) -> Value {
    closed_line_on(gw, "inbound", service, protocol, cause).await
}

/// Waits for `gw`'s access-log line of a `service` exchange closed with `cause` on `side`.
async fn closed_line_on(
    gw: &Gateway,
    side: &str,
    service: &str,
    protocol: &str,
    cause: &str,
) -> Value {
    let wanted = format!("closed by a config change ({cause})");
    let deadline = Instant::now() + CONVERGE;
    loop {
        let found = gw.access_log().into_iter().find(|l| {
            l["side"] == side
                && l["service"] == service
                && l["protocol"] == protocol
                && l["reason"].as_str().is_some_and(|r| r.contains(&wanted))
        });
        if let Some(line) = found {
            return line;
        }
        if Instant::now() > deadline {
            gw.fail(&format!(
                "no access-log line of a {protocol} {service} exchange {wanted}: {:?}",
                gw.access_log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until a fresh CONNECT to west's tcp-echo through east answers `status`.
async fn fresh_connect_answers(east: &Member, status: &str) -> String {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (head, _s) = connect(east.gw.proxy, TCP_ECHO).await;
        if head.starts_with(&format!("HTTP/1.1 {status}")) {
            return head;
        }
        if Instant::now() > deadline {
            east.gw
                .fail(&format!("a fresh CONNECT still answers {head}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// West's per-cluster VIP for `key` (`ns/name`) on `port`, as east's federation assigned it.
async fn west_vip(east: &Member, key: &str, port: u16) -> SocketAddr {
    let catalog = east.fed.catalog().await;
    let vip = catalog["routes"][key]["cluster_vips"]
        .as_array()
        .and_then(|cs| cs.iter().find(|p| p[0] == "west"))
        .and_then(|p| p[1]["v4"].as_str())
        .unwrap_or_else(|| {
            east.fed
                .fail(&format!("no per-cluster VIP for west's {key}"))
        });
    SocketAddr::new(vip.parse().expect("vip"), port)
}

/// One gRPC message (length-prefixed) holding `text` as field 1.
fn grpc_message(text: &str) -> bytes::Bytes {
    let len = u8::try_from(text.len()).expect("short");
    let mut msg = vec![0, 0, 0, 0, len + 2, 0x0a, len];
    msg.extend_from_slice(text.as_bytes());
    msg.into()
}

/// A bidirectional gRPC stream (`Chat`) with west's grpc-echo through its per-cluster VIP on
/// east (h2c), proven to answer one message. The request side stays open.
async fn grpc_chat(vip: SocketAddr) -> (h2::SendStream<bytes::Bytes>, h2::RecvStream) {
    let tcp = TcpStream::connect(vip)
        .await
        .expect("connect to the gRPC VIP");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::post(format!("http://{}/isthmus.demo.Echo/Chat", vip))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(req, false).expect("send the request");
    send.send_data(grpc_message("hi"), false)
        .expect("send a message");
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("the response head within 20 s")
        .expect("the response head");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut got = Vec::new();
    while !got.windows(8).any(|w| w == b"west: hi") {
        let data = tokio::time::timeout(Duration::from_secs(20), body.data())
            .await
            .expect("an answer within 20 s");
        let data = data.expect("a message").expect("data");
        let _ = body.flow_control().release_capacity(data.len());
        got.extend_from_slice(&data);
    }
    (send, body)
}

/// Waits (until `started` + [`CLOSE_WITHIN`]) for the gRPC stream to end; its trailers.
async fn grpc_ended(gw: &Gateway, body: &mut h2::RecvStream, started: Instant) -> http::HeaderMap {
    let deadline = started + CLOSE_WITHIN;
    fn still_open(gw: &Gateway) -> ! {
        gw.fail(&format!(
            "the gRPC stream is still open {} s after the change that disallows it",
            CLOSE_WITHIN.as_secs()
        ))
    }
    loop {
        match tokio::time::timeout_at(deadline, body.data()).await {
            Err(_) => still_open(gw),
            Ok(Some(Ok(data))) => {
                let _ = body.flow_control().release_capacity(data.len());
            }
            Ok(Some(Err(e))) => panic!("the gRPC stream was reset, not ended with a status: {e}"),
            Ok(None) => break,
        }
    }
    match tokio::time::timeout_at(deadline, body.trailers()).await {
        Ok(Ok(Some(trailers))) => trailers,
        Ok(other) => panic!("the gRPC stream ended without trailers: {other:?}"),
        Err(_) => still_open(gw),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_websockets_and_streams_close_when_policy_export_or_peering_stops_allowing_them()
 {
    let m = mesh(97, "", json!({}), json!({})).await;
    let (east, west) = (&m[0], &m[1]);
    let proxy = east.gw.proxy;

    // 1. A deny rule for east closes every open exchange from east to the services it names.
    let mut tunneled = tunnel(proxy).await;
    let mut raw = TcpStream::connect(west_vip(east, "demo/tcp-echo", 9000).await)
        .await
        .expect("connect to west's tcp-echo VIP");
    echoes(&mut raw, b"raw", b"raw").await;
    let mut ws = websocket(proxy).await;
    let mut streaming = download(proxy).await;
    let (mut chat_requests, mut chat) =
        grpc_chat(west_vip(east, "demo/grpc-echo", 50051).await).await;
    let mut stalled = stalled_download(proxy).await;
    let (mut upload_answer, upload) = endless_upload(proxy).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!upload.is_finished(), "the upload is flowing");
    let started = Instant::now();
    west.fed.write_catalog(&west_catalog(west, true, DENY_EAST));
    let trailers = grpc_ended(&west.gw, &mut chat, started).await;
    eprintln!(
        "gRPC stream ended {:?} after the deny rule was written",
        started.elapsed()
    );
    assert_eq!(
        trailers["grpc-status"], "7",
        "PERMISSION_DENIED: {trailers:?}"
    );
    let message = trailers["grpc-message"].to_str().unwrap_or_default();
    assert!(
        message.contains("closed by a config change (authorization)")
            && message.contains("deny-east"),
        "{message}"
    );
    // The caller keeps sending on the closed gRPC stream: the stream is reset, end to end.
    let reset = loop {
        let sent = chat_requests.send_data(grpc_message("after the deny"), false);
        if let Err(e) = sent {
            break e;
        }
        if Instant::now() > started + CLOSE_WITHIN {
            west.gw.fail(&format!(
                "the caller still sends on the closed gRPC stream {} s after the deny",
                CLOSE_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "gRPC request stream reset {:?} after the deny rule was written: {reset}",
        started.elapsed()
    );
    // A download nobody reads is closed all the same (its client still reads nothing).
    let line = closed_path_line(&west.gw, STALLED, started + CLOSE_WITHIN).await;
    eprintln!(
        "unread download closed {:?} after the deny rule was written: {line}",
        started.elapsed()
    );
    // An upload that never got a response is cut: the caller is answered, its writes fail.
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout_at(started + CLOSE_WITHIN, upload_answer.read(&mut answer))
        .await
        .unwrap_or_else(|_| {
            west.gw.fail(&format!(
                "the upload is still open {} s after the deny",
                CLOSE_WITHIN.as_secs()
            ))
        })
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "the upload was answered as if it ended: {answer}"
    );
    let (sent, error) = tokio::time::timeout_at(started + CLOSE_WITHIN, upload)
        .await
        .unwrap_or_else(|_| {
            west.gw.fail(&format!(
                "the caller still uploads {} s after the deny (answered {answer:?})",
                CLOSE_WITHIN.as_secs()
            ))
        })
        .expect("writer");
    eprintln!(
        "upload cut {:?} after the deny rule was written, after {sent} bytes ({error}); answered {answer:?}",
        started.elapsed()
    );
    closed_path_line(&west.gw, "/sink", started + CLOSE_WITHIN).await;
    for (what, s) in [
        ("unread download", &mut stalled),
        ("CONNECT tunnel", &mut tunneled),
        ("raw TCP connection", &mut raw),
        ("WebSocket", &mut ws),
        ("streaming download", &mut streaming),
    ] {
        let took = closed_by(&west.gw, what, s, started).await;
        eprintln!("{what} closed {took:?} after the deny rule was written");
    }
    let head = fresh_connect_answers(east, "403").await;
    assert!(head.contains("deny-east"), "{head}");
    for (service, protocol) in [
        ("tcp-echo.demo", "tcp"),
        ("echo.demo", "websocket"),
        ("echo.demo", "http"),
        ("grpc-echo.demo", "http"),
    ] {
        let line = closed_line(&west.gw, service, protocol, "authorization").await;
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("denied by policy deny-east"),
            "the request path's reason: {line}"
        );
        assert_eq!(line["src_cluster"], "east", "{line}");
    }
    let closed = west
        .gw
        .metric(
            "isthmus_gateway_connections_closed_by_policy_total",
            &["side=\"inbound\"", "reason=\"authorization\""],
        )
        .await;
    assert!(
        closed >= 4.0,
        "four exchanges closed by authorization: {closed}"
    );

    // 2. Withdrawing the export closes an open tunnel to it.
    west.fed.write_catalog(&west_catalog(west, true, NO_POLICY));
    fresh_connect_answers(east, "200").await;
    let mut tunneled = tunnel(proxy).await;
    let started = Instant::now();
    west.fed
        .write_catalog(&west_catalog(west, false, NO_POLICY));
    let took = closed_by(&west.gw, "CONNECT tunnel", &mut tunneled, started).await;
    eprintln!("tunnel closed {took:?} after the export was withdrawn");
    closed_line(&west.gw, "tcp-echo.demo", "tcp", "export").await;

    // 3. Removing east as a peer closes east's connections and the tunnels on them.
    west.fed.write_catalog(&west_catalog(west, true, NO_POLICY));
    fresh_connect_answers(east, "200").await;
    let mut tunneled = tunnel(proxy).await;
    let started = Instant::now();
    west.fed.cli_ok(&["peering", "remove", "east"]).await;
    let took = closed_by(&west.gw, "CONNECT tunnel", &mut tunneled, started).await;
    eprintln!("tunnel closed {took:?} after east was removed as a peer");
    closed_line(&west.gw, "tcp-echo.demo", "tcp", "peer").await;
    let closed = west
        .gw
        .metric(
            "isthmus_gateway_connections_closed_by_policy_total",
            &["side=\"inbound\"", "reason=\"peer\""],
        )
        .await;
    assert!(closed >= 2.0, "east's connection and its tunnel: {closed}");

    // 4. On the calling side, a tunnel whose import is removed closes too.
    let south_tcp = "south.tcp-echo.demo.svc.clusterset.local:9000";
    let (head, mut tunneled) = connect(proxy, south_tcp).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT {south_tcp}: {head}"
    );
    echoes(&mut tunneled, b"ping", b"ping").await;
    let started = Instant::now();
    east.fed.write_catalog("exports: []\nimports: []\n");
    let took = closed_by(&east.gw, "CONNECT tunnel", &mut tunneled, started).await;
    eprintln!("tunnel closed {took:?} after east stopped importing tcp-echo");
    closed_line_on(&east.gw, "outbound", "tcp-echo.demo", "tcp", "import").await;
}
