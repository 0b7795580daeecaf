//! `isthmus sample-client`: an open-loop HTTP/1.1 load generator for failover tests. It sends
//! `GET <url>` at a fixed rate for a fixed time — on schedule, whether or not earlier requests
//! have answered, so a stalled cluster shows up as latency and errors instead of a lower
//! rate — and prints one JSON line per request when it completes:
//!
//! ```text
//! {"started":{"unix_ms":1700000000000,"url":"…","rate":50.0,"seconds":30.0,"timeout_ms":5000}}
//! {"t_ms":20.1,"status":200,"cluster":"west","latency_ms":3.2,"error":null}
//! {"t_ms":40.0,"status":0,"cluster":null,"latency_ms":5000.0,"error":"timed out after 5000 ms"}
//! {"done":{"sent":1500,"ok":1499,"failed":1}}
//! ```
//!
//! `t_ms` is the send time since `started.unix_ms`; `status` is 0 when no response arrived;
//! `cluster` is the `cluster` field of the sample echo's JSON body (see [`crate::sample`]);
//! `error` is the transport error, or for a non-2xx answer the gateway's `x-isthmus-error`.
//! Keep-alive connections are pooled (connections are reused once their response ended); with
//! `--proxy` every request goes to the proxy in absolute form.
//!
//! Not part of the data plane: nothing here is used by the gateway or the federation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What `isthmus sample-client` was asked to do.
pub struct Options {
    pub url: String,
    pub proxy: Option<String>,
    pub rate: f64,
    pub seconds: f64,
    pub timeout: Duration,
}

/// Where requests go and how they are written.
struct Target {
    /// `host:port` to connect to (the proxy, or the URL's authority).
    connect: String,
    /// The request-target: absolute form through a proxy, else origin form.
    uri: Uri,
    host: String,
}

/// Idle keep-alive connections, reused last-in first-out.
type Pool = Arc<Mutex<Vec<SendRequest<Empty<Bytes>>>>>;

/// The result of one request, as printed.
struct Outcome {
    status: u16,
    cluster: Option<String>,
    error: Option<String>,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    if !(opts.rate > 0.0 && opts.rate <= 10_000.0) {
        bail!("--rate must be above 0 and at most 10000 requests per second");
    }
    if !(opts.seconds > 0.0 && opts.seconds <= 3_600.0) {
        bail!("--seconds must be above 0 and at most 3600");
    }
    if opts.timeout.is_zero() {
        bail!("--timeout-ms must be above 0");
    }
    let target = Arc::new(target(&opts.url, opts.proxy.as_deref())?);
    let pool: Pool = Arc::default();
    let total = (opts.rate * opts.seconds).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / opts.rate);
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let start = Instant::now();
    println!(
        "{}",
        json!({ "started": {
            "unix_ms": unix_ms as u64,
            "url": opts.url,
            "rate": opts.rate,
            "seconds": opts.seconds,
            "timeout_ms": opts.timeout.as_millis() as u64,
        }})
    );
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    // Burst: a late tick is sent at once, so the rate holds on a loaded machine (the printed
    // t_ms is the real send time).
    let mut ticks = tokio::time::interval_at(start, period);
    for _ in 0..total {
        ticks.tick().await;
        let (target, pool, ok, timeout) = (target.clone(), pool.clone(), ok.clone(), opts.timeout);
        tasks.spawn(async move {
            let sent = Instant::now();
            let outcome = match tokio::time::timeout(timeout, request(&target, &pool)).await {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => Outcome {
                    status: 0,
                    cluster: None,
                    error: Some(format!("{e:#}")),
                },
                Err(_) => Outcome {
                    status: 0,
                    cluster: None,
                    error: Some(format!("timed out after {} ms", timeout.as_millis())),
                },
            };
            println!(
                "{}",
                json!({
                    "t_ms": ms(sent.duration_since(start)),
                    "status": outcome.status,
                    "cluster": outcome.cluster,
                    "latency_ms": ms(sent.elapsed()),
                    "error": outcome.error,
                })
            );
            if (200..300).contains(&outcome.status) {
                ok.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Reap what finished so the set stays small on long runs.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({ "done": { "sent": total, "ok": ok, "failed": total - ok } })
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn target(url: &str, proxy: Option<&str>) -> anyhow::Result<Target> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("--url {url:?} is not a URL (e.g. http://127.0.0.1:8080/)"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url {url:?}: only http:// URLs are supported");
    }
    let authority = uri
        .authority()
        .context("--url needs a host (e.g. http://127.0.0.1:8080/)")?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(match proxy {
        Some(p) => Target {
            connect: p.to_string(),
            uri,
            host: authority.to_string(),
        },
        None => Target {
            connect: format!("{host}:{port}"),
            uri: path.parse().context("the URL's path")?,
            host: authority.to_string(),
        },
    })
}

/// A pooled connection that can take a request now, or a new one.
async fn sender(target: &Target, pool: &Pool) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    loop {
        let idle = match pool.lock() {
            Ok(mut p) => p.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        let Some(mut s) = idle else { break };
        if s.ready().await.is_ok() {
            return Ok(s);
        }
    }
    let tcp = TcpStream::connect(&target.connect)
        .await
        .with_context(|| format!("connect {}", target.connect))?;
    let _ = tcp.set_nodelay(true);
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(conn);
    Ok(s)
}

async fn request(target: &Target, pool: &Pool) -> anyhow::Result<Outcome> {
    let mut s = sender(target, pool).await?;
    let req = Request::get(target.uri.clone())
        .header(header::HOST, &target.host)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let resp = s.send_request(req).await.context("request")?;
    let status = resp.status().as_u16();
    let gateway_error = resp
        .headers()
        .get("x-isthmus-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the response body")?
        .to_bytes();
    if !s.is_closed() {
        match pool.lock() {
            Ok(mut p) => p.push(s),
            Err(poisoned) => poisoned.into_inner().push(s),
        }
    }
    let cluster = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["cluster"].as_str().map(str::to_string));
    let error = if (200..300).contains(&status) {
        None
    } else {
        Some(gateway_error.unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            text.trim().to_string()
        }))
    };
    Ok(Outcome {
        status,
        cluster,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_requests_use_origin_form_and_proxied_ones_absolute_form() {
        let t = target("http://127.101.0.1:8080/fo?x=1", None).expect("target");
        assert_eq!(t.connect, "127.101.0.1:8080");
        assert_eq!(t.uri.to_string(), "/fo?x=1");
        assert_eq!(t.host, "127.101.0.1:8080");
        let t = target(
            "http://echo.demo.svc.clusterset.local:8080/",
            Some("127.0.0.1:15001"),
        )
        .expect("target");
        assert_eq!(t.connect, "127.0.0.1:15001");
        assert_eq!(
            t.uri.to_string(),
            "http://echo.demo.svc.clusterset.local:8080/"
        );
        assert!(target("https://x/", None).is_err());
        assert!(target("not a url", None).is_err());
    }
}
