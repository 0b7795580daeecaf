//! `isthmus sample-backends`: sample services to call across clusters (the demo runs one
//! process per cluster). A supported tool: `isthmus sample-backends --help` documents every
//! endpoint below; keep the two in step.
//! - HTTP (HTTP/1.1 and h2c): `GET /` answers JSON naming the cluster and what the caller's
//!   gateway told it (caller identity, source cluster, W3C `traceparent`, any `isthmus-*`
//!   header names); `POST
//!   /echo` streams the body back; `POST /sink` reads the body and then answers its size; `GET /bytes?n=N` streams N bytes; `GET /slow?ms=N` answers
//!   after N ms; `GET /hold?ms=N` sends its headers at once and its body after N ms (a request
//!   a test can see in flight); `GET /ws` is a WebSocket echo, and `GET /ws/identity` one whose first message
//!   is that JSON for its handshake.
//! - gRPC `isthmus.demo.Echo` (h2c): `Say` (unary), `Count` (server streaming), `Chat` (bidi).
//!   Messages are `{ string text = 1; }`. The response headers carry the call's `traceparent` as
//!   `x-sample-traceparent`.
//! - TCP: echoes every byte.
//!
//! Not part of the data plane: nothing here is used by the gateway or the federation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

pub async fn run(
    cluster: String,
    http: SocketAddr,
    grpc: SocketAddr,
    tcp: SocketAddr,
) -> anyhow::Result<()> {
    let cluster: Arc<str> = cluster.into();
    let http_l = TcpListener::bind(http)
        .await
        .with_context(|| format!("binding {http}"))?;
    let grpc_l = TcpListener::bind(grpc)
        .await
        .with_context(|| format!("binding {grpc}"))?;
    let tcp_l = TcpListener::bind(tcp)
        .await
        .with_context(|| format!("binding {tcp}"))?;
    println!(
        "{}",
        serde_json::json!({ "ready": { "http": http_l.local_addr()?, "grpc": grpc_l.local_addr()?, "tcp": tcp_l.local_addr()? } })
    );
    tokio::spawn(serve_http(http_l, cluster.clone()));
    tokio::spawn(serve_http(grpc_l, cluster.clone()));
    tokio::spawn(serve_tcp(tcp_l));
    std::future::pending::<()>().await;
    Ok(())
}

async fn serve_tcp(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

async fn serve_http(listener: TcpListener, cluster: Arc<str>) {
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    while let Ok((s, _)) = listener.accept().await {
        let (builder, cluster) = (builder.clone(), cluster.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let cluster = cluster.clone();
                async move { Ok::<_, Infallible>(handle(cluster, req).await) }
            });
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn handle(cluster: Arc<str>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path.starts_with("/isthmus.demo.Echo/") {
        return grpc(cluster, req).await;
    }
    match path.as_str() {
        "/echo" => Response::new(
            req.into_body()
                .map_err(std::io::Error::other)
                .boxed_unsync(),
        ),
        "/sink" => {
            // Reads the whole body, then answers how many bytes it held: an upload that gets
            // no response while it lasts.
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => return Response::new(full(format!("upload failed: {e}\n"))),
                }
            }
            Response::new(full(format!(
                "{{\"cluster\":\"{cluster}\",\"received\":{n}}}\n"
            )))
        }
        "/bytes" => {
            let n: u64 = query_number(&req, "n", 0);
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len() as u64) as usize;
                    if tx.send(Ok(Frame::data(chunk.slice(..take)))).await.is_err() {
                        return;
                    }
                    left -= take as u64;
                }
            });
            Response::new(StreamBody::new(tokio_stream_from(rx)).boxed_unsync())
        }
        "/ws" => websocket(req, None),
        // A WebSocket whose first message (text) is what the handshake told the service.
        "/ws/identity" => {
            let seen = identity(&cluster, &req).to_string();
            websocket(req, Some(seen))
        }
        "/hold" => {
            // Headers now, the body after `ms`: the caller sees the request reach the service.
            let ms: u64 = query_number(&req, "ms", 1000);
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
            let body = format!("{{\"cluster\":\"{cluster}\",\"held_ms\":{ms}}}\n");
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from(body)))).await;
            });
            Response::new(StreamBody::new(tokio_stream_from(rx)).boxed_unsync())
        }
        "/slow" => {
            // Answers after `ms` milliseconds: an in-flight request for drain tests.
            let ms: u64 = query_number(&req, "ms", 1000);
            tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
            Response::new(full(format!(
                "{{\"cluster\":\"{cluster}\",\"slept_ms\":{ms}}}\n"
            )))
        }
        _ => {
            let mut body = identity(&cluster, &req);
            body["method"] = req.method().as_str().into();
            body["path"] = req.uri().path().into();
            body["version"] = format!("{:?}", req.version()).into();
            body["host"] = header_text(&req, "host")
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .into();
            body["shadow"] = header_text(&req, "x-isthmus-shadow").is_some().into();
            let mut r = Response::new(full(format!("{body}\n")));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
    }
}

fn header_text<B>(req: &Request<B>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// What the caller's gateway told the service: the caller's identity, the calling cluster, and
/// the names of any `isthmus-*` headers (gateways keep those between themselves).
fn identity<B>(cluster: &str, req: &Request<B>) -> serde_json::Value {
    let mut isthmus: Vec<&str> = req
        .headers()
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("isthmus-"))
        .collect();
    isthmus.sort_unstable();
    isthmus.dedup();
    serde_json::json!({
        "cluster": cluster,
        "forwarded_client_cert": header_text(req, "x-forwarded-client-cert"),
        "source_cluster": header_text(req, "x-isthmus-source-cluster"),
        "traceparent": header_text(req, "traceparent"),
        "isthmus_headers": isthmus,
    })
}

/// `?<key>=<number>` from the request's query (the only parameter these endpoints take).
fn query_number<B>(req: &Request<B>, key: &str, default: u64) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.strip_prefix(key)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `{ string text = 1; }`
fn encode_text(text: &str) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[0x0a]);
    let mut n = text.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.extend_from_slice(&[b]);
            break;
        }
        out.extend_from_slice(&[b | 0x80]);
    }
    out.extend_from_slice(text.as_bytes());
    out.freeze()
}

fn decode_text(msg: &[u8]) -> String {
    // Field 1, length-delimited; anything else is ignored (a demo, not a protobuf library).
    if msg.first() != Some(&0x0a) {
        return String::new();
    }
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    while i < msg.len() {
        len |= usize::from(msg[i] & 0x7f) << shift;
        shift += 7;
        i += 1;
        if msg[i - 1] & 0x80 == 0 {
            break;
        }
    }
    msg.get(i..i + len)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(msg);
    out.freeze()
}

async fn grpc(cluster: Arc<str>, req: Request<Incoming>) -> Response<Body> {
    let traceparent = req.headers().get("traceparent").cloned();
    let method = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut status = "0";
        'read: loop {
            let frame = match body.frame().await {
                Some(Ok(f)) => f,
                Some(Err(_)) => {
                    status = "13";
                    break;
                }
                None => break,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < 5 + len {
                    break;
                }
                let msg = buf.split_to(5 + len);
                let text = decode_text(&msg[5..]);
                let replies: Vec<String> = match method.as_str() {
                    "Say" | "Chat" => vec![format!("{cluster}: {text}")],
                    "Count" => {
                        let n: usize = text.parse().unwrap_or(3);
                        (1..=n.min(10_000))
                            .map(|i| format!("{cluster}: {i}"))
                            .collect()
                    }
                    _ => {
                        status = "12";
                        break 'read;
                    }
                };
                for r in replies {
                    if tx
                        .send(Ok(Frame::data(grpc_frame(&encode_text(&r)))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if method != "Chat" {
                    break 'read;
                }
            }
        }
        let mut trailers = header::HeaderMap::new();
        trailers.insert("grpc-status", header::HeaderValue::from_static(status));
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let mut r = Response::new(StreamBody::new(tokio_stream_from(rx)).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/grpc"),
    );
    if let Some(v) = traceparent {
        // The W3C trace context this call arrived with, for callers that check the trace.
        r.headers_mut().insert("x-sample-traceparent", v);
    }
    r
}

/// A WebSocket echo: text and binary frames come back as they were sent, after `first` (a text
/// message) when given.
fn websocket(mut req: Request<Incoming>, first: Option<String>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a WebSocket handshake\n"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = upgrade.await {
            let mut up = TokioIo::new(up);
            if let Some(text) = first
                && up.write_all(&ws_frame(0x1, text.as_bytes())).await.is_err()
            {
                return;
            }
            let _ = ws_echo(up).await;
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

async fn ws_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await?;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            len = u64::from(s.read_u16().await?);
        } else if len == 127 {
            len = s.read_u64().await?;
        }
        if len > 16 * 1024 * 1024 {
            return Ok(());
        }
        let mut mask = [0u8; 4];
        if masked {
            s.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        let reply_opcode = match opcode {
            0x8 => 0x8,
            0x9 => 0xA,
            0xA => continue,
            o => o,
        };
        s.write_all(&ws_frame(reply_opcode, &payload)).await?;
        if opcode == 0x8 {
            return Ok(());
        }
    }
}

/// One unmasked, final WebSocket frame (as a server sends it).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n < 65_536 => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}
