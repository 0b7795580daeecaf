//! The CLI's side of the local admin API ([`super::socket`]): one call per connection, errors
//! worded for the operator at the terminal.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use super::socket::is_valid_op;

/// Largest response the client reads (config-sized answers, with a wide margin).
const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// How much of a non-JSON error body is quoted back.
const MAX_QUOTED_BODY: usize = 200;

/// Why an admin call failed; `Display` is meant to be printed to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// Nothing listens on the socket (no file, or a stale one).
    #[error(
        "no federation is listening on {}: is `isthmus federation` running with this --config / --admin-socket?",
        path.display()
    )]
    NotRunning { path: PathBuf },
    /// The socket exists but belongs to another user.
    #[error("permission denied on {}: run as the user that runs the federation", path.display())]
    PermissionDenied { path: PathBuf },
    /// The federation answered with an error; `message` says what to do next.
    #[error("{message}")]
    Server { status: u16, message: String },
    /// No answer in time. The operation runs on in the federation and may still complete.
    #[error(
        "no answer from the federation on {} within {timeout:?}; the operation may still complete: \
         check the federation's state before retrying, or raise the timeout",
        path.display()
    )]
    Timeout { path: PathBuf, timeout: Duration },
    /// The operation name cannot be sent (a bug in the caller).
    #[error("invalid admin operation name `{op}`: use 1-64 letters, digits, `_`, `-` or `.`")]
    InvalidOp { op: String },
    /// The connection or the HTTP exchange failed.
    #[error("the admin call on {} failed: {reason}; check the federation's log", path.display())]
    Transport { path: PathBuf, reason: String },
}

/// Calls `POST /v1/<op>` on the federation's admin socket with `body`, and returns the JSON it
/// answers (`null` for an empty answer). The whole exchange is bounded by `timeout`.
pub async fn admin_call(
    socket: &Path,
    op: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, AdminClientError> {
    if !is_valid_op(op) {
        return Err(AdminClientError::InvalidOp { op: op.to_owned() });
    }
    match tokio::time::timeout(timeout, exchange(socket, op, body)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(AdminClientError::Timeout {
            path: socket.to_owned(),
            timeout,
        }),
    }
}

async fn exchange(socket: &Path, op: &str, body: &Value) -> Result<Value, AdminClientError> {
    let transport = |reason: String| AdminClientError::Transport {
        path: socket.to_owned(),
        reason,
    };
    let payload = serde_json::to_vec(body).map_err(|e| transport(e.to_string()))?;
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| connect_error(socket, &e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(e.to_string()))?;
    let driver = tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "admin client: connection ended with an error");
        }
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/{op}"))
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|_| AdminClientError::InvalidOp { op: op.to_owned() })?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, bytes))
    }
    .await;
    driver.abort();
    let (status, bytes) = result?;

    if status.is_success() {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(&bytes)
            .map_err(|e| transport(format!("the answer is not valid JSON: {e}")));
    }
    Err(AdminClientError::Server {
        status: status.as_u16(),
        message: error_message(status, &bytes),
    })
}

/// The server's `{"error": "..."}` message, or a short quote of whatever else came back.
fn error_message(status: hyper::StatusCode, bytes: &[u8]) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes)
        && let Some(Value::String(message)) = map.get("error")
    {
        return message.clone();
    }
    let text = String::from_utf8_lossy(bytes);
    let quoted: String = text.trim().chars().take(MAX_QUOTED_BODY).collect();
    format!("the federation answered {status}: {quoted}")
}

fn connect_error(path: &Path, e: &io::Error) -> AdminClientError {
    let path = path.to_owned();
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            AdminClientError::NotRunning { path }
        }
        io::ErrorKind::PermissionDenied => AdminClientError::PermissionDenied { path },
        _ => AdminClientError::Transport {
            path,
            reason: format!("cannot connect: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn missing_socket_tells_the_operator_what_to_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.sock");
        let err = admin_call(&path, "status", &Value::Null, T)
            .await
            .expect_err("absent");
        assert!(
            matches!(err, AdminClientError::NotRunning { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("--config / --admin-socket"), "{text}");
    }

    #[tokio::test]
    async fn stale_socket_reads_as_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let err = admin_call(&path, "status", &Value::Null, T)
            .await
            .expect_err("stale");
        assert!(
            matches!(err, AdminClientError::NotRunning { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn permission_denied_says_which_user_to_run_as() {
        // Tests often run as root, which no file mode stops: check the mapping directly.
        let err = connect_error(
            Path::new("/var/lib/isthmus/admin.sock"),
            &io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert_eq!(
            err.to_string(),
            "permission denied on /var/lib/isthmus/admin.sock: run as the user that runs the federation"
        );
    }

    #[tokio::test]
    async fn invalid_op_names_are_refused_before_connecting() {
        for op in ["", "a/b", "../x", "a b", "é"] {
            let err = admin_call(Path::new("/nonexistent"), op, &Value::Null, T)
                .await
                .expect_err("invalid");
            assert!(
                matches!(err, AdminClientError::InvalidOp { .. }),
                "{op}: {err:?}"
            );
        }
    }

    #[test]
    fn non_json_error_bodies_are_quoted_briefly() {
        let long = "y".repeat(1000);
        let message = error_message(hyper::StatusCode::BAD_GATEWAY, long.as_bytes());
        assert!(
            message.starts_with("the federation answered 502 Bad Gateway: yyy"),
            "{message}"
        );
        assert!(message.len() < 300);
        let message = error_message(hyper::StatusCode::CONFLICT, br#"{"error":"token spent"}"#);
        assert_eq!(message, "token spent");
    }
}
