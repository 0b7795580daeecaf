//! The read-only admin HTTP port: health, readiness, Prometheus metrics and the config dump.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200 ready`, or `503` with the reason from the readiness callback |
//! | `GET /metrics` | the shared registry: OpenMetrics text when `Accept` asks for it (Prometheus does), else the Prometheus text format ([`super::exposition`]) |
//! | `GET /config_dump` | the config-dump callback's JSON, passed through [`redact_secrets`] |
//!
//! A component may add read-only JSON routes of its own ([`JsonRoute`], served by
//! [`serve_admin_http_with`]; the gateway's `/explain`) and static assets embedded in the binary
//! ([`Asset`], served by [`serve_admin_http_routes`]; the federation's dashboard at `/ui`).
//!
//! Any other method on these routes is `405`; any other path is `404`. This port must never
//! offer an operation that changes state: those live on the local admin socket
//! ([`super::socket`]), which is not reachable over the network.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::net::TcpListener;

use super::{AdminResponse, respond, serve_http1};

/// The admin port binds loopback unless configured otherwise: it reveals config and metrics.
pub const DEFAULT_ADMIN_HTTP_PORT: u16 = 15000;

/// Content type of `/metrics` when the client asks for OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str = super::exposition::OPENMETRICS;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// What replaces a secret in `/config_dump`.
pub const REDACTED: &str = "<redacted>";

/// Where the admin HTTP port listens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminHttpConfig {
    /// Listen address; keep it on loopback or a private interface.
    pub bind: SocketAddr,
}

impl Default for AdminHttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_ADMIN_HTTP_PORT)),
        }
    }
}

/// Readiness: `Ok(())` when ready, else the reason an operator should read.
pub type ReadinessFn = dyn Fn() -> Result<(), String> + Send + Sync;
/// The effective configuration as JSON. Redacting secrets is the callback's job;
/// [`redact_secrets`] is only a second line of defence.
pub type ConfigDumpFn = dyn Fn() -> Value + Send + Sync;

/// Everything the admin port reads. Cheap to clone.
#[derive(Clone)]
pub struct AdminHttpState {
    /// Register every metric before building the state: encoding needs only `&Registry`, so a
    /// registry that no longer changes can be shared without a lock.
    pub registry: Arc<Registry>,
    pub readiness: Arc<ReadinessFn>,
    pub config_dump: Arc<ConfigDumpFn>,
}

/// A read-only JSON route: the request's query string (undecoded) in, a status and a JSON
/// body out. It must not change state.
pub type JsonRouteFn = dyn Fn(Option<&str>) -> (StatusCode, Value) + Send + Sync;

/// A component's own read-only route on the admin port.
#[derive(Clone)]
pub struct JsonRoute {
    /// The exact path, e.g. `/explain`.
    pub path: &'static str,
    pub handler: Arc<JsonRouteFn>,
}

/// A static file embedded in the binary, served as is at an exact path.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub path: &'static str,
    /// A valid header value, e.g. `text/html; charset=utf-8`.
    pub content_type: &'static str,
    pub body: &'static [u8],
}

impl std::fmt::Debug for JsonRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonRoute")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AdminHttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminHttpState").finish_non_exhaustive()
    }
}

/// Serves the admin port on `listener` until `shutdown` resolves, then drains in-flight requests
/// (bounded by a few seconds) and returns.
///
/// The caller binds the listener (from [`AdminHttpConfig::bind`], or port 0 in tests) so that a
/// port already in use fails at startup with the caller's own error message.
pub async fn serve_admin_http(
    listener: TcpListener,
    state: AdminHttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_admin_http_with(listener, state, Vec::new(), shutdown).await
}

/// [`serve_admin_http`] with a component's own read-only JSON routes beside the standard ones.
pub async fn serve_admin_http_with(
    listener: TcpListener,
    state: AdminHttpState,
    routes: Vec<JsonRoute>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_admin_http_routes(listener, state, routes, &[], shutdown).await
}

/// [`serve_admin_http_with`] plus static `assets` (GET only, like every route here).
pub async fn serve_admin_http_routes(
    listener: TcpListener,
    state: AdminHttpState,
    routes: Vec<JsonRoute>,
    assets: &'static [Asset],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "admin HTTP port listening");
    let state = Arc::new((state, routes));
    let handle = move |req: Request<Incoming>| {
        let state = Arc::clone(&state);
        async move { route(&state.0, &state.1, assets, &req) }
    };
    // Requests here are answered inline: nothing outlives its connection.
    serve_http1(listener, |_| true, handle, shutdown, std::future::ready(())).await;
    tracing::info!(addr = %local, "admin HTTP port stopped");
    Ok(())
}

fn route(
    state: &AdminHttpState,
    routes: &[JsonRoute],
    assets: &[Asset],
    req: &Request<Incoming>,
) -> AdminResponse {
    let path = req.uri().path();
    let extra = routes.iter().find(|r| r.path == path);
    let asset = assets.iter().find(|a| a.path == path);
    if extra.is_none()
        && asset.is_none()
        && !matches!(path, "/healthz" | "/readyz" | "/metrics" | "/config_dump")
    {
        let mut known = String::from("/healthz, /readyz, /metrics, /config_dump");
        for r in routes {
            known.push_str(", ");
            known.push_str(r.path);
        }
        return respond(
            StatusCode::NOT_FOUND,
            TEXT,
            Bytes::from(format!("not found: try {known}\n")),
        );
    }
    if req.method() != Method::GET {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: the admin port is read-only (GET); changes go through the local admin socket\n",
        );
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
        return response;
    }
    if let Some(r) = extra {
        let (status, value) = (r.handler)(req.uri().query());
        return json(status, &value);
    }
    if let Some(a) = asset {
        return super::ui::respond_asset(a);
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match (state.readiness)() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                Bytes::from(format!("{reason}\n")),
            ),
        },
        "/metrics" => metrics(
            &state.registry,
            req.headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        ),
        _ => config_dump(state),
    }
}

fn text(status: StatusCode, body: &'static str) -> AdminResponse {
    respond(status, TEXT, Bytes::from_static(body.as_bytes()))
}

/// The registry in the format the client asked for (see [`super::exposition`]).
fn metrics(registry: &Registry, accept: Option<&str>) -> AdminResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) if super::exposition::wants_openmetrics(accept) => {
            respond(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, Bytes::from(body))
        }
        Ok(()) => respond(
            StatusCode::OK,
            super::exposition::PROMETHEUS_TEXT,
            Bytes::from(super::exposition::prometheus_text(&body)),
        ),
        Err(error) => {
            // Writing into a String fails only if a metric's own encoder fails.
            tracing::warn!(%error, "admin: encoding metrics failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed; see the process log\n",
            )
        }
    }
}

fn config_dump(state: &AdminHttpState) -> AdminResponse {
    let mut dump = (state.config_dump)();
    redact_secrets(&mut dump);
    json(StatusCode::OK, &dump)
}

fn json(status: StatusCode, value: &Value) -> AdminResponse {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            respond(status, JSON, Bytes::from(body))
        }
        Err(error) => {
            tracing::warn!(%error, "admin: serializing a JSON answer failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "serializing the answer failed; see the process log\n",
            )
        }
    }
}

/// Key fragments whose values never leave the process, compared with ASCII case and `_`/`-`
/// separators ignored (so `privateKey`, `private-key` and `PRIVATE_KEY` all match).
const SECRET_KEY_FRAGMENTS: [&str; 5] = ["secret", "token", "password", "privatekey", "kek"];

/// Defensive redaction for `/config_dump`: replaces the whole value of every object key that
/// contains `secret`, `token`, `password`, `private_key` or `kek`, and every string that holds a
/// PEM private key wherever it sits, with `"<redacted>"`.
///
/// Deliberately over-eager (`token_ttl` is redacted too): a hidden setting is an inconvenience,
/// a leaked key is an incident.
pub fn redact_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if is_secret_key(key) {
                    *field = Value::String(REDACTED.to_owned());
                } else {
                    redact_secrets(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        Value::String(s) if s.contains("PRIVATE KEY-----") => *s = REDACTED.to_owned(),
        _ => {}
    }
}

fn is_secret_key(key: &str) -> bool {
    let normalized: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SECRET_KEY_FRAGMENTS
        .iter()
        .any(|fragment| normalized.contains(fragment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    struct Running {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Running {
        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let finished = tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
                .await
                .expect("server drains within the bound");
            finished.expect("server task").expect("serve result");
        }
    }

    async fn start(ready: Arc<AtomicBool>) -> Running {
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        registry.register(
            "admin_test_requests",
            "Requests seen by the test",
            requests.clone(),
        );
        requests.inc_by(3);
        let state = AdminHttpState {
            registry: Arc::new(registry),
            readiness: Arc::new(move || {
                if ready.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("store not open yet: waiting for the data directory lock".to_owned())
                }
            }),
            config_dump: Arc::new(|| {
                json!({
                    "cluster": {"name": "east", "region": "eu-1"},
                    "store": {"etcd": {"password": "hunter2", "endpoints": ["http://127.0.0.1:2379"]}},
                    "ca": {"KEK": "base64stuff", "keyPem": "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"},
                })
            }),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve_admin_http(listener, state, async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// One raw HTTP/1.1 exchange over a real TCP connection: (status, headers, body).
    async fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        get_with(addr, method, path, "").await
    }

    /// `extra` is more header lines, each ending in CRLF.
    async fn get_with(
        addr: SocketAddr,
        method: &str,
        path: &str,
        extra: &str,
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\n{extra}connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn health_ready_metrics_and_config_dump_over_tcp() {
        let ready = Arc::new(AtomicBool::new(false));
        let server = start(Arc::clone(&ready)).await;

        assert_eq!(get(server.addr, "GET", "/healthz").await.0, 200);
        assert_eq!(get(server.addr, "GET", "/healthz").await.2, "ok\n");

        let (status, _, body) = get(server.addr, "GET", "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("store not open yet"), "{body}");
        ready.store(true, Ordering::SeqCst);
        let (status, _, body) = get(server.addr, "GET", "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));

        // What Prometheus 2.42 sends: OpenMetrics first.
        let accept = "accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
        let (status, head, body) = get_with(server.addr, "GET", "/metrics", accept).await;
        assert_eq!(status, 200);
        assert!(
            head.contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{head}"
        );
        assert!(body.contains("admin_test_requests_total 3"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        // curl and promtool: the Prometheus text format, the counter family named with `_total`.
        let (status, head, body) = get(server.addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(
            body.contains(
                "# TYPE admin_test_requests_total counter\nadmin_test_requests_total 3\n"
            ),
            "{body}"
        );
        assert!(!body.contains("# EOF"), "{body}");

        let (status, head, body) = get(server.addr, "GET", "/config_dump?pretty").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        let dump: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(dump["cluster"]["name"], "east");
        assert_eq!(dump["store"]["etcd"]["password"], REDACTED);
        assert_eq!(
            dump["store"]["etcd"]["endpoints"][0],
            "http://127.0.0.1:2379"
        );
        assert_eq!(dump["ca"]["KEK"], REDACTED);
        assert_eq!(dump["ca"]["keyPem"], REDACTED);
        assert!(
            !body.contains("hunter2") && !body.contains("BEGIN PRIVATE"),
            "{body}"
        );

        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_paths_404_and_other_methods_405() {
        let server = start(Arc::new(AtomicBool::new(true))).await;
        assert_eq!(get(server.addr, "GET", "/").await.0, 404);
        assert_eq!(get(server.addr, "GET", "/v1/rotate_ca").await.0, 404);
        assert_eq!(get(server.addr, "POST", "/v1/rotate_ca").await.0, 404);
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let (status, head, _) = get(server.addr, method, "/config_dump").await;
            assert_eq!(status, 405, "{method}");
            assert!(head.contains("allow: get"), "{head}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_keep_alive_connections_promptly() {
        let server = start(Arc::new(AtomicBool::new(true))).await;
        let addr = server.addr;
        // An idle keep-alive connection must not hold the drain open for its full bound.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let n = idle.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

        let started = std::time::Instant::now();
        server.stop().await;
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        assert!(TcpStream::connect(addr).await.is_err(), "stopped accepting");
    }

    #[tokio::test]
    async fn component_routes_answer_json_and_stay_read_only() {
        let state = AdminHttpState {
            registry: Arc::new(Registry::default()),
            readiness: Arc::new(|| Ok(())),
            config_dump: Arc::new(|| json!({})),
        };
        let routes = vec![JsonRoute {
            path: "/explain",
            handler: Arc::new(|query| match query {
                Some(q) => (StatusCode::OK, json!({ "query": q })),
                None => (StatusCode::BAD_REQUEST, json!({ "error": "say which" })),
            }),
        }];
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_admin_http_with(listener, state, routes, async {
            let _ = stopped.await;
        }));
        let (status, head, body) = get(addr, "GET", "/explain?service=demo%2Fecho").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["query"], "service=demo%2Fecho");
        assert_eq!(get(addr, "GET", "/explain").await.0, 400);
        assert_eq!(get(addr, "POST", "/explain").await.0, 405);
        let (status, _, body) = get(addr, "GET", "/nope").await;
        assert_eq!(status, 404);
        assert!(body.contains("/explain"), "{body}");
        assert_eq!(get(addr, "GET", "/healthz").await.0, 200);
        let _ = stop.send(());
        task.await.expect("task").expect("serve");
    }

    #[test]
    fn redaction_replaces_secret_keys_at_any_depth() {
        let mut dump = json!({
            "name": "east",
            "peering": {
                "tokens": [{"secret": "s1"}],
                "tokenTtlSeconds": 600,
                "peers": [{"name": "west", "client_secret": {"nested": "x"}}],
            },
            "ca": {"private_key": "k", "Private-Key-Path": "/k", "kek_env": "ISTHMUS_KEK", "cert": "PEM"},
            "db": {"PassWord": "p", "user": "u"},
            "notes": ["-----BEGIN EC PRIVATE KEY-----\nx\n-----END EC PRIVATE KEY-----"],
        });
        redact_secrets(&mut dump);
        assert_eq!(
            dump,
            json!({
                "name": "east",
                "peering": {
                    "tokens": REDACTED,
                    "tokenTtlSeconds": REDACTED,
                    "peers": [{"name": "west", "client_secret": REDACTED}],
                },
                "ca": {"private_key": REDACTED, "Private-Key-Path": REDACTED, "kek_env": REDACTED, "cert": "PEM"},
                "db": {"PassWord": REDACTED, "user": "u"},
                "notes": [REDACTED],
            })
        );
    }
}
