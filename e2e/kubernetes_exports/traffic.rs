//! Real traffic for the rolling restart: one small HTTP/1.1 backend per pod address (each
//! answers with its own address, keep-alive like a real server), and a client sending requests
//! without pause through east's gateway (its HTTP proxy port, absolute-form), recording every
//! answer and every failure.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One pod's backend.
pub struct Pod {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Pod {
    pub async fn start(addr: SocketAddr) -> Pod {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the pod backend {addr}: {e}"));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |_req| async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                            addr.ip().to_string(),
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                held.lock().expect("conns").push(conn);
            }
        });
        Pod {
            addr,
            accept,
            conns,
        }
    }

    /// The pod exits: its listener and every connection close.
    pub fn stop(&self) {
        self.accept.abort();
        for c in self.conns.lock().expect("conns").drain(..) {
            c.abort();
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request's outcome: when it ended, and the pod that answered or what went wrong.
pub type Outcome = (Instant, Result<String, String>);

/// A client calling `http://<host>/` through the proxy port `proxy` until dropped.
pub struct Client {
    pub outcomes: Arc<Mutex<Vec<Outcome>>>,
    task: JoinHandle<()>,
}

impl Client {
    pub fn start(proxy: SocketAddr, host: &'static str) -> Client {
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let out = outcomes.clone();
        let task = tokio::spawn(async move {
            loop {
                let r = get(proxy, host).await;
                out.lock().expect("outcomes").push((Instant::now(), r));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Client { outcomes, task }
    }

    pub fn snapshot(&self) -> Vec<Outcome> {
        self.outcomes.lock().expect("outcomes").clone()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One GET through the proxy on a fresh connection: the body of a 200, else the reason.
async fn get(proxy: SocketAddr, host: &str) -> Result<String, String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("connect {proxy}: {e}"))?;
        let req =
            format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if head.starts_with("HTTP/1.1 200") {
            // The pod's address (a chunked body has its sizes on lines of their own).
            body.lines()
                .map(str::trim)
                .find(|l| l.parse::<std::net::IpAddr>().is_ok())
                .map(str::to_owned)
                .ok_or_else(|| format!("200 without a pod address: {body:?}"))
        } else {
            Err(format!("{head} {body}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
}
