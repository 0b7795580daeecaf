//! The etcd members the store talks to, and failover between them.
//!
//! One client per configured endpoint, not one balanced channel: tonic's balancer keeps a dead
//! member in rotation and keeps handing it requests, which then fail with `tcp connect error`
//! although the cluster still has quorum. Here every call goes to the *current* member; when that
//! member cannot be reached, has no leader or does not answer within a third of the request
//! timeout (a member whose leader just died holds a forwarded request until etcd's own timeout),
//! the current member moves on and the call is sent again to the next one, until the call's
//! deadline (`request_timeout_ms`). Losing a minority of members therefore costs a call at most
//! the etcd election time.
//!
//! Every call made through here may be sent more than once, so callers only make calls whose
//! repetition is safe, and say why at the call site: reads, puts of immutable chunks, deletes of
//! chunk generations, lease calls, and commits made idempotent by a per-commit marker key (see
//! `commit.rs`).
//!
//! Must not: decide what a call means.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tonic::Code;

/// Shortest time an attempt gets before the call moves on to the next member.
const ATTEMPT_MIN: Duration = Duration::from_millis(500);
/// First pause after every member failed once in a row; doubled per round, capped.
const ROUND_PAUSE_MIN: Duration = Duration::from_millis(50);
const ROUND_PAUSE_MAX: Duration = Duration::from_millis(500);

/// The configured members and which one calls go to.
pub(super) struct Members {
    members: Vec<Member>,
    /// Index (modulo the member count) of the member calls go to.
    current: AtomicUsize,
    options: ConnectOptions,
    request_timeout: Duration,
}

struct Member {
    url: String,
    /// Connected on first use (with auth this needs the member), then kept: the client's
    /// channel reconnects by itself when the member comes back.
    client: OnceCell<Client>,
}

impl Members {
    /// Remembers the endpoints; connects nothing yet.
    pub(super) fn new(
        endpoints: &[String],
        options: ConnectOptions,
        request_timeout: Duration,
    ) -> Self {
        Members {
            members: endpoints
                .iter()
                .map(|url| Member {
                    url: url.clone(),
                    client: OnceCell::new(),
                })
                .collect(),
            current: AtomicUsize::new(0),
            options,
            request_timeout,
        }
    }

    /// The member calls go to now, e.g. for logs and tests.
    pub(super) fn current_url(&self) -> &str {
        let index = self.current.load(Ordering::Relaxed) % self.members.len().max(1);
        self.members
            .get(index)
            .map(|m| m.url.as_str())
            .unwrap_or_default()
    }

    async fn client(&self, index: usize) -> Result<Client, etcd_client::Error> {
        let member = &self.members[index];
        member
            .client
            .get_or_try_init(|| Client::connect([member.url.as_str()], Some(self.options.clone())))
            .await
            .cloned()
    }

    /// Runs `call` against the current member, failing over to the next members (sending it
    /// again), within the request timeout. The caller guarantees a repeat is safe.
    pub(super) async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let count = self.members.len().max(1);
        let deadline = Instant::now() + self.request_timeout;
        let mut failed_in_a_row = 0usize;
        let mut pause = ROUND_PAUSE_MIN;
        let per_attempt = (self.request_timeout / 3).max(ATTEMPT_MIN);
        loop {
            let index = self.current.load(Ordering::Relaxed) % count;
            let attempt = async {
                let client = self.client(index).await?;
                call(client).await
            };
            let until = (Instant::now() + per_attempt).min(deadline);
            let error = match tokio::time::timeout_at(until, attempt).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => e,
                Err(_) => no_answer(per_attempt),
            };
            if !member_failed(&error) {
                return Err(error);
            }
            // Move calls on to the next member, unless another call already did.
            let _ = self.current.compare_exchange(
                index,
                (index + 1) % count,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            tracing::debug!(member = %self.members[index].url, error = %error,
                "etcd member failed a call; moving to the next member");
            if Instant::now() >= deadline {
                return Err(error);
            }
            failed_in_a_row += 1;
            if failed_in_a_row.is_multiple_of(count) {
                // Every member failed once: the cluster is electing or down; wait a little.
                let until = (Instant::now() + pause).min(deadline);
                tokio::time::sleep_until(until).await;
                pause = (pause * 2).min(ROUND_PAUSE_MAX);
            }
        }
    }
}

/// The deadline error of a call that got no answer in time.
pub(super) fn no_answer(timeout: Duration) -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(format!(
        "no answer within {timeout:?}"
    )))
}

/// The member could not serve the call (unreachable, no leader, no answer); another may.
fn member_failed(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
        E::TransportError(_) | E::IoError(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn member_failures_are_told_from_refusals() {
        for failed in [
            status(Code::Unavailable, "tcp connect error"),
            status(Code::Unavailable, "etcdserver: no leader"),
            status(Code::Unavailable, "etcdserver: request timed out"),
            status(Code::Unknown, "h2 protocol error: connection reset"),
            no_answer(Duration::from_secs(1)),
        ] {
            assert!(member_failed(&failed), "{failed}");
        }
        let compacted = status(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert!(!member_failed(&compacted));
        let denied = status(Code::PermissionDenied, "etcdserver: permission denied");
        assert!(!member_failed(&denied));
    }

    #[tokio::test]
    async fn a_dead_member_is_left_for_the_next_one() {
        // Nothing listens on these ports: every call fails, moving through both members.
        let dead = |port: u16| format!("http://127.0.0.1:{port}");
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .expect("free port")
            })
            .collect();
        let members = Members::new(
            &[dead(ports[0]), dead(ports[1])],
            ConnectOptions::new().with_connect_timeout(Duration::from_millis(200)),
            Duration::from_millis(600),
        );
        assert_eq!(members.current_url(), dead(ports[0]));
        let mut attempts = 0;
        let result = members
            .call(|mut c| {
                attempts += 1;
                async move { c.get("k", None).await.map(|_| ()) }
            })
            .await;
        let error = result.expect_err("nobody listens");
        assert!(member_failed(&error), "{error}");
        assert!(attempts >= 2, "both members were tried: {attempts}");
    }
}
