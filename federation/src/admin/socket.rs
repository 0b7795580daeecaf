//! The local admin API: state-changing operations over a Unix socket, never a TCP port.
//!
//! Protocol: `POST /v1/<op>` with a JSON body (an empty body reads as `null`) answers `200` with
//! a JSON body, or an error status with `{"error": "<what happened and what to do next>"}`:
//! `400` bad request, `404` unknown op, `405` not POST, `409` conflict, `413` body over 1 MiB,
//! `500` internal, `503` unavailable.
//!
//! Access control is the file system: the socket is created with mode 0600, so only the
//! federation's user (and root) can connect. Each connection's peer uid is checked too, which
//! also covers the moment between `bind` and `chmod`. Request bodies may carry secrets (peering
//! tokens): they are never logged.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};

use super::{AdminResponse, InFlight, in_flight, respond, serve_http1};

/// Largest request body the socket accepts.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Longest operation name, and its alphabet (see [`is_valid_op`]).
const MAX_OP_LEN: usize = 64;

const JSON: &str = "application/json";

/// Why an admin operation failed. The message is shown to the operator as is, so it should say
/// what to do next. Each variant maps to one HTTP status ([`AdminError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// 400: the request is malformed or invalid.
    #[error("{0}")]
    BadRequest(String),
    /// 404: unknown operation or unknown object (peer, gateway...).
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with the current state (already exists, token spent...).
    #[error("{0}")]
    Conflict(String),
    /// 503: cannot be served right now (not ready, no leader...); retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an environment failure; details belong in the federation's log.
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    /// The HTTP status this error is sent with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Executes admin operations. The server knows no operation itself: it routes `POST /v1/<op>`
/// here with the parsed JSON body and sends back whatever this returns.
///
/// Contract:
/// - `op` is non-empty, at most 64 bytes of `[A-Za-z0-9_.-]`; return [`AdminError::NotFound`]
///   for an op you do not know.
/// - The returned future may borrow `self` only: copy what you need from `op` first.
/// - Each call runs in its own task and is not cancelled when the client goes away or times
///   out, so an operation is not abandoned half way. Shutdown waits for running calls only up to
///   its drain bound (a few seconds): keep operations short, and crash-safe like everything
///   that writes the store.
/// - A panic answers 500; prefer returning [`AdminError::Internal`].
pub trait AdminHandler: Send + Sync + 'static {
    fn call(&self, op: &str, body: Value) -> BoxFuture<'_, Result<Value, AdminError>>;
}

/// Whether `op` is an acceptable operation name (shared with the client).
pub(crate) fn is_valid_op(op: &str) -> bool {
    !op.is_empty()
        && op.len() <= MAX_OP_LEN
        && op
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Serves the local admin API on a Unix socket at `path` until `shutdown` resolves, then drains
/// in-flight calls (bounded by a few seconds) and removes the socket file.
///
/// A socket file left by a dead process is replaced; a live one (something accepts connections
/// on it) is refused with [`AdminError::Conflict`], as is a path that exists but is not a socket.
/// Setup failures (missing directory, path too long, permissions) are [`AdminError::Internal`]
/// with the path and a hint.
pub async fn serve_admin_socket(
    path: &Path,
    handler: Arc<dyn AdminHandler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    bind_admin_socket(path)
        .await?
        .serve(handler, shutdown)
        .await
}

/// A bound (listening) admin socket, not yet serving: lets a caller report readiness only once
/// clients can connect.
pub struct BoundAdminSocket {
    listener: UnixListener,
    socket_file: SocketFile,
}

/// Binds the admin socket at `path` (see [`serve_admin_socket`] for what is replaced or refused).
pub async fn bind_admin_socket(path: &Path) -> Result<BoundAdminSocket, AdminError> {
    remove_stale_socket(path).await?;
    let listener = UnixListener::bind(path).map_err(|e| bind_error(path, &e))?;
    // From here on the file is ours: remove it on every exit path, including errors below.
    let socket_file = SocketFile::new(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        AdminError::Internal(format!(
            "cannot restrict {} to mode 0600: {e}; check the file system supports permissions",
            path.display()
        ))
    })?;
    tracing::info!(path = %path.display(), "admin socket listening");
    Ok(BoundAdminSocket {
        listener,
        socket_file,
    })
}

impl BoundAdminSocket {
    /// Serves until `shutdown` resolves, drains in-flight calls, removes the socket file.
    pub async fn serve(
        self,
        handler: Arc<dyn AdminHandler>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AdminError> {
        let BoundAdminSocket {
            listener,
            socket_file,
        } = self;
        let path = socket_file.path.clone();
        let owner = socket_file.owner_uid;

        let admit = move |stream: &UnixStream| match stream.peer_cred() {
            Ok(cred) if cred.uid() == owner || cred.uid() == 0 => true,
            Ok(cred) => {
                tracing::warn!(
                    peer.uid = cred.uid(),
                    "admin socket: refused a connection from another user"
                );
                false
            }
            Err(error) => {
                tracing::warn!(%error, "admin socket: cannot read the peer's credentials; refused");
                false
            }
        };
        let (ops, ops_done) = in_flight();
        let handle = move |req: Request<Incoming>| route(Arc::clone(&handler), ops.clone(), req);
        serve_http1(listener, admit, handle, shutdown, ops_done.wait()).await;
        drop(socket_file);
        tracing::info!(path = %path.display(), "admin socket stopped");
        Ok(())
    }
}

/// Clears the way for `bind`: nothing there is fine, a dead socket is removed, anything else is
/// refused rather than deleted.
async fn remove_stale_socket(path: &Path) -> Result<(), AdminError> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(AdminError::Internal(format!(
                "cannot inspect {shown}: {e}; check the permissions of its directory"
            )));
        }
    };
    if !meta.file_type().is_socket() {
        return Err(AdminError::Conflict(format!(
            "{shown} exists and is not a socket; refusing to replace it: remove it or choose another \
             `listen.admin_socket` in the federation config"
        )));
    }
    match UnixStream::connect(path).await {
        Ok(_live) => Err(AdminError::Conflict(format!(
            "another process is serving the admin socket {shown}: is another `isthmus federation` \
             running with this `data_dir`? Stop it, or choose another `listen.admin_socket` in the \
             federation config"
        ))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|e| {
                AdminError::Internal(format!(
                    "cannot remove the stale admin socket {shown}: {e}; remove it by hand"
                ))
            })?;
            tracing::info!(path = %shown, "removed a stale admin socket left by a previous process");
            Ok(())
        }
        Err(e) => Err(AdminError::Conflict(format!(
            "{shown} exists and cannot be probed ({e}); if no federation uses it, remove it by hand"
        ))),
    }
}

fn bind_error(path: &Path, e: &io::Error) -> AdminError {
    let shown = path.display();
    let hint = match e.kind() {
        io::ErrorKind::NotFound => "create its directory first (normally the config's `data_dir`)",
        io::ErrorKind::PermissionDenied => "run as the user that owns its directory",
        io::ErrorKind::AddrInUse => {
            return AdminError::Conflict(format!(
                "{shown} was created by another process just now: is another `isthmus federation` starting with this `data_dir`?"
            ));
        }
        // Linux limits socket paths to 107 bytes.
        io::ErrorKind::InvalidInput => {
            "choose a shorter `listen.admin_socket` path in the federation config (at most 107 bytes)"
        }
        _ => "check the path and its directory",
    };
    AdminError::Internal(format!(
        "cannot create the admin socket {shown}: {e}; {hint}"
    ))
}

/// The socket file this server created; removed on drop unless something else replaced it.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    owner_uid: u32,
}

impl SocketFile {
    fn new(path: &Path) -> Result<Self, AdminError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| {
            AdminError::Internal(format!(
                "the admin socket {} vanished right after bind: {e}",
                path.display()
            ))
        })?;
        Ok(Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            owner_uid: meta.uid(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let still_ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if still_ours && let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the admin socket");
        }
    }
}

async fn route(
    handler: Arc<dyn AdminHandler>,
    op_running: InFlight,
    req: Request<Incoming>,
) -> AdminResponse {
    let Some(op) = req.uri().path().strip_prefix("/v1/") else {
        return error_response(
            StatusCode::NOT_FOUND,
            "no such endpoint: admin operations are `POST /v1/<op>`",
        );
    };
    if !is_valid_op(op) {
        return error_response(
            StatusCode::NOT_FOUND,
            "unknown admin operation: names are 1-64 letters, digits, `_`, `-` or `.`",
        );
    }
    let op = op.to_owned();
    if req.method() != Method::POST {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin operations are called with POST",
        );
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return response;
    }
    let body = match read_json_body(req).await {
        Ok(body) => body,
        Err(response) => return response,
    };

    // Own task: the operation finishes even if the client disconnects (the shutdown drain still
    // waits for it), and a panic becomes a 500.
    let call = {
        let op = op.clone();
        tokio::spawn(async move {
            let _running = op_running;
            handler.call(&op, body).await
        })
    };
    let (status, body) = match call.await {
        Ok(Ok(value)) => (StatusCode::OK, value),
        Ok(Err(error)) => (
            error.status(),
            serde_json::json!({ "error": error.to_string() }),
        ),
        Err(join_error) => {
            tracing::error!(op = %op, error = %join_error, "admin operation panicked");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({
                    "error": format!("admin operation `{op}` failed unexpectedly; see the federation's log")
                }),
            )
        }
    };
    tracing::info!(op = %op, status = status.as_u16(), "admin operation");
    json_response(status, &body)
}

/// The request body as JSON (empty = `null`), or the error response to send instead.
async fn read_json_body(req: Request<Incoming>) -> Result<Value, AdminResponse> {
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body over 1 MiB: pass large inputs as a file path instead",
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_REQUEST_BODY as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(error) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body failed: {error}"),
            ));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|error| {
        error_response(
            StatusCode::BAD_REQUEST,
            &format!("the request body is not valid JSON: {error}"),
        )
    })
}

fn error_response(status: StatusCode, message: &str) -> AdminResponse {
    json_response(status, &serde_json::json!({ "error": message }))
}

fn json_response(status: StatusCode, body: &Value) -> AdminResponse {
    match serde_json::to_vec(body) {
        Ok(bytes) => respond(status, JSON, Bytes::from(bytes)),
        // A `Value` always serializes; keep a valid answer anyway.
        Err(_) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            JSON,
            Bytes::from_static(br#"{"error":"serializing the response failed"}"#),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{AdminClientError, admin_call};
    use serde_json::json;
    use std::time::Duration;
    use tokio::sync::oneshot;

    const T: Duration = Duration::from_secs(5);

    /// Echoes `{op, body}`; `fail` answers with every error kind; `slow` sleeps, then counts
    /// itself in `slow_done`; `hang` never ends; `panic` panics.
    #[derive(Default)]
    struct TestHandler {
        slow_done: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AdminHandler for TestHandler {
        fn call(&self, op: &str, body: Value) -> BoxFuture<'_, Result<Value, AdminError>> {
            let op = op.to_owned();
            let slow_done = Arc::clone(&self.slow_done);
            Box::pin(async move {
                match op.as_str() {
                    "echo" => Ok(json!({ "op": op, "body": body })),
                    "fail" => Err(match body["kind"].as_str() {
                        Some("bad") => {
                            AdminError::BadRequest("missing --peer: name the peer".into())
                        }
                        Some("conflict") => {
                            AdminError::Conflict("peer west already exists: remove it first".into())
                        }
                        Some("unavailable") => AdminError::Unavailable(
                            "store not ready: retry in a few seconds".into(),
                        ),
                        Some("internal") => {
                            AdminError::Internal("disk full: free space in the data_dir".into())
                        }
                        _ => AdminError::NotFound("no such peer".into()),
                    }),
                    "slow" => {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        slow_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok(json!("done"))
                    }
                    "hang" => std::future::pending().await,
                    "panic" => panic!("handler bug"),
                    other => Err(AdminError::NotFound(format!(
                        "unknown admin operation `{other}`"
                    ))),
                }
            })
        }
    }

    struct Running {
        dir: tempfile::TempDir,
        path: PathBuf,
        slow_done: Arc<std::sync::atomic::AtomicUsize>,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), AdminError>>,
    }

    impl Running {
        async fn stop(self) -> tempfile::TempDir {
            let _ = self.stop.send(());
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("drains within the bound")
                .expect("server task")
                .expect("serve result");
            assert!(!self.path.exists(), "socket file removed on shutdown");
            self.dir
        }
    }

    async fn start_in(dir: tempfile::TempDir) -> Running {
        let path = dir.path().join("admin.sock");
        let (stop, stopped) = oneshot::channel();
        let handler = TestHandler::default();
        let slow_done = Arc::clone(&handler.slow_done);
        let task = {
            let path = path.clone();
            tokio::spawn(async move {
                serve_admin_socket(&path, Arc::new(handler), async {
                    let _ = stopped.await;
                })
                .await
            })
        };
        // Ready once the socket file is there with its final mode.
        for _ in 0..200 {
            if std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o600) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Running {
            dir,
            path,
            slow_done,
            stop,
            task,
        }
    }

    async fn start() -> Running {
        start_in(tempfile::tempdir().expect("tempdir")).await
    }

    #[tokio::test]
    async fn round_trip_and_errors_reach_the_client() {
        let server = start().await;
        let echoed = admin_call(&server.path, "echo", &json!({"peer": "west"}), T)
            .await
            .expect("echo");
        assert_eq!(echoed, json!({"op": "echo", "body": {"peer": "west"}}));

        for (kind, status, text) in [
            ("bad", 400, "missing --peer"),
            ("missing", 404, "no such peer"),
            ("conflict", 409, "already exists"),
            ("internal", 500, "disk full"),
            ("unavailable", 503, "retry in a few seconds"),
        ] {
            let err = admin_call(&server.path, "fail", &json!({"kind": kind}), T)
                .await
                .expect_err("fails");
            match &err {
                AdminClientError::Server {
                    status: got,
                    message,
                } => {
                    assert_eq!(*got, status, "{kind}");
                    assert!(message.contains(text), "{message}");
                    assert_eq!(err.to_string(), *message);
                }
                other => panic!("unexpected {other:?}"),
            }
        }

        let err = admin_call(&server.path, "panic", &Value::Null, T)
            .await
            .expect_err("panics");
        assert!(
            matches!(err, AdminClientError::Server { status: 500, .. }),
            "{err:?}"
        );
        // The server survives a panicking handler.
        assert!(
            admin_call(&server.path, "echo", &Value::Null, T)
                .await
                .is_ok()
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn socket_is_owner_only() {
        let server = start().await;
        let mode = std::fs::metadata(&server.path)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        server.stop().await;
    }

    #[tokio::test]
    async fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.sock");
        // A dead process's socket: the file stays, nobody accepts.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        let server = start_in(dir).await;
        assert!(
            admin_call(&server.path, "echo", &Value::Null, T)
                .await
                .is_ok()
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn live_socket_and_non_socket_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.sock");
        let live = UnixListener::bind(&path).expect("bind");
        let err = serve_admin_socket(&path, Arc::new(TestHandler::default()), async {})
            .await
            .expect_err("refused");
        assert!(matches!(err, AdminError::Conflict(_)), "{err:?}");
        assert!(err.to_string().contains("another process"), "{err}");
        assert!(path.exists(), "the live socket is left alone");
        drop(live);

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "data").expect("write");
        let err = serve_admin_socket(&file, Arc::new(TestHandler::default()), async {})
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("kept"), "data");
    }

    #[tokio::test]
    async fn oversized_body_is_413() {
        let server = start().await;
        let big = json!("x".repeat(MAX_REQUEST_BODY + 1));
        let err = admin_call(&server.path, "echo", &big, T)
            .await
            .expect_err("too big");
        match err {
            AdminClientError::Server { status, message } => {
                assert_eq!(status, 413);
                assert!(message.contains("1 MiB"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Just under the cap still goes through.
        let fits = json!("x".repeat(MAX_REQUEST_BODY - 100));
        assert!(admin_call(&server.path, "echo", &fits, T).await.is_ok());
        server.stop().await;
    }

    #[tokio::test]
    async fn protocol_errors() {
        let server = start().await;
        let err = admin_call(&server.path, "nope", &Value::Null, T)
            .await
            .expect_err("unknown");
        assert!(
            matches!(err, AdminClientError::Server { status: 404, .. }),
            "{err:?}"
        );

        // Raw requests for what the client never sends.
        let raw = |req: &'static str| {
            let path = server.path.clone();
            async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = UnixStream::connect(path).await.expect("connect");
                s.write_all(req.as_bytes()).await.expect("write");
                let mut out = String::new();
                s.read_to_string(&mut out).await.expect("read");
                out
            }
        };
        let get = raw("GET /v1/echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        assert!(get.starts_with("HTTP/1.1 405"), "{get}");
        let bad = raw("POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\n{x}").await;
        assert!(
            bad.starts_with("HTTP/1.1 400") && bad.contains("not valid JSON"),
            "{bad}"
        );
        let other = raw(
            "POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_lets_in_flight_calls_finish() {
        let server = start().await;
        let path = server.path.clone();
        let call = tokio::spawn(async move { admin_call(&path, "slow", &Value::Null, T).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.stop().await;
        assert_eq!(call.await.expect("task").expect("finished"), json!("done"));
    }

    #[tokio::test]
    async fn client_timeout_says_the_operation_may_still_complete() {
        let server = start().await;
        let err = admin_call(
            &server.path,
            "hang",
            &Value::Null,
            Duration::from_millis(200),
        )
        .await
        .expect_err("times out");
        assert!(matches!(err, AdminClientError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("may still complete"), "{err}");
        // The hung call holds shutdown open only up to the drain bound.
        let started = std::time::Instant::now();
        server.stop().await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(9),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn an_operation_outlives_its_client_and_shutdown_waits_for_it() {
        let server = start().await;
        let err = admin_call(
            &server.path,
            "slow",
            &Value::Null,
            Duration::from_millis(100),
        )
        .await
        .expect_err("times out");
        assert!(matches!(err, AdminClientError::Timeout { .. }), "{err:?}");
        let slow_done = Arc::clone(&server.slow_done);
        server.stop().await;
        assert_eq!(slow_done.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
