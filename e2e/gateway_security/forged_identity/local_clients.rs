//! Hand-written local clients for the paths curl cannot take: raw HTTP/1.1 with `CONNECT`,
//! WebSocket over HTTP/1.1 and over extended CONNECT (RFC 8441), and HTTP/2 `CONNECT` with
//! HTTP/1.1 inside. Each sends the forged identity headers and returns what the service saw.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{ECHO, FORGED, forged_lines};

/// Whether `buf` holds a whole HTTP/1.1 response (Content-Length or chunked body).
pub(super) fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    match head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    }) {
        Some(n) => body.len() >= n,
        None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
        None => true,
    }
}

/// The JSON body of a whole HTTP/1.1 200 response.
pub(super) fn json_body(buf: &[u8]) -> Result<Value, String> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no response head: {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("not a 200: {text:?}"));
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One JSON document: the chunk-size lines are the only other lines.
        body.lines()
            .filter(|l| l.starts_with('{'))
            .collect::<String>()
    } else {
        body.to_string()
    };
    serde_json::from_str(body.trim()).map_err(|e| format!("{e}: {text:?}"))
}

/// Reads from `s` until `done(buf)`, within 20 s.
pub(super) async fn read_until(
    s: &mut TcpStream,
    mut buf: Vec<u8>,
    done: fn(&[u8]) -> bool,
) -> Vec<u8> {
    let mut chunk = [0u8; 8192];
    while !done(&buf) {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("an answer within 20 s")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}

pub(super) fn has_head(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Head and what followed it.
pub(super) fn split_head(buf: &[u8]) -> (String, Vec<u8>) {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    (
        String::from_utf8_lossy(&buf[..end]).into_owned(),
        buf[end + 4..].to_vec(),
    )
}

/// Sends `CONNECT authority` on `s`; the answer's head.
pub(super) async fn connect_on(s: &mut TcpStream, authority: &str) -> String {
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .expect("write CONNECT");
    let (head, rest) = split_head(&read_until(s, Vec::new(), has_head).await);
    assert!(
        rest.is_empty() || !head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    head
}

/// A complete, unmasked text frame at the start of `buf`, once it is there.
pub(super) fn ws_text(buf: &[u8]) -> Option<String> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    assert_eq!(b0, 0x81, "a final text frame first: {buf:?}");
    let (len, at) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => panic!("a 64-bit length for an identity report"),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(at..at + len)?;
    Some(String::from_utf8_lossy(payload).into_owned())
}

/// An HTTP/1.1 WebSocket handshake for /ws/identity on `s` (`target`: the request-target, an
/// absolute URI on the proxy port); the service's first message, as JSON.
pub(super) async fn websocket_h1(mut s: TcpStream, target: &str) -> Result<Value, String> {
    let handshake = format!(
        "GET {target} HTTP/1.1\r\nHost: {ECHO}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
        forged_lines()
    );
    s.write_all(handshake.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let (head, rest) = split_head(&read_until(&mut s, Vec::new(), has_head).await);
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("no switch: {head}"));
    }
    let frame = read_until(&mut s, rest, |b| ws_text(b).is_some()).await;
    let text = ws_text(&frame).unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text:?}"))
}

/// An HTTP/2 connection (prior knowledge) to `addr`, driven in a task.
pub(super) async fn h2c(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(conn);
    client.ready().await.expect("ready")
}

/// Reads a stream's data until `done(buf)`, within 20 s.
pub(super) async fn h2_read_until(
    body: &mut h2::RecvStream,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let mut buf = Vec::new();
    while !done(&buf) {
        let data = tokio::time::timeout(Duration::from_secs(20), body.data())
            .await
            .expect("data within 20 s");
        match data {
            Some(Ok(d)) => {
                let _ = body.flow_control().release_capacity(d.len());
                buf.extend_from_slice(&d);
            }
            other => panic!("stream ended: {other:?} after {buf:?}"),
        }
    }
    buf
}

/// Extended CONNECT (RFC 8441) for a WebSocket to /ws/identity over h2c; the first message.
pub(super) async fn websocket_h2(addr: SocketAddr) -> Result<Value, String> {
    let mut client = h2c(addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !client.is_extended_connect_protocol_enabled() {
        if tokio::time::Instant::now() > deadline {
            return Err("the server never enabled extended CONNECT".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        client = client.ready().await.map_err(|e| e.to_string())?;
    }
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{ECHO}/ws/identity"))
        .header("sec-websocket-version", "13");
    for (k, v) in FORGED {
        req = req.header(k, v);
    }
    let mut req = req.body(()).expect("request");
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (response, _send) = client.send_request(req, false).map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("extended CONNECT answered {}", response.status()));
    }
    let mut body = response.into_body();
    let frame = h2_read_until(&mut body, |b| ws_text(b).is_some()).await;
    let text = ws_text(&frame).unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text:?}"))
}

/// An HTTP/2 CONNECT (not extended) to the proxy port, with an HTTP/1.1 request inside.
pub(super) async fn connect_h2_then_h1(proxy: SocketAddr) -> Result<Value, String> {
    let mut client = h2c(proxy).await;
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(ECHO)
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(req, false).map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("CONNECT answered {}", response.status()));
    }
    let inner = format!(
        "GET /h2-connect HTTP/1.1\r\nHost: {ECHO}\r\n{}\r\n",
        forged_lines()
    );
    send.send_data(Bytes::from(inner), false)
        .map_err(|e| e.to_string())?;
    let mut body = response.into_body();
    json_body(&h2_read_until(&mut body, complete).await)
}
