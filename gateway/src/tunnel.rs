//! Byte tunnels (raw TCP over HTTP/2 CONNECT, WebSocket over extended CONNECT): copy both ways
//! until both sides finish, close on idle or when a new config no longer allows the tunnel
//! ([`crate::live`]), count bytes for the access log.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::accesslog::Counters;
use crate::live::Ending;
use crate::serve::{Activity, Tracked};

/// Copies `client` <-> `upstream` until both directions end, an error occurs, or nothing moves
/// for `idle`, or `ending` (when given) says the tunnel must close; both sides are then dropped.
/// Returns whether it ended cleanly.
pub async fn pipe<A, B>(
    client: A,
    upstream: B,
    idle: Duration,
    counters: &Counters,
    ending: Option<&Ending>,
) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    // The tunnel counts as an open request: its activity goes quiet when no byte moves.
    let _open = activity.open();
    let mut client = Tracked::new(client, activity.clone());
    let mut upstream = upstream;
    tokio::select! {
        result = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, 64 * 1024, 64 * 1024) => match result {
            Ok((up, down)) => {
                counters.bytes_in.fetch_add(up, Ordering::Relaxed);
                counters.bytes_out.fetch_add(down, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "tunnel ended with an error");
                false
            }
        },
        _ = activity.quiet_for(idle) => {
            tracing::debug!(idle_ms = idle.as_millis() as u64, "closing an idle tunnel");
            false
        }
        Some(closed) = async { Some(ending?.wait().await) }, if ending.is_some() => {
            tracing::debug!(reason = %closed, "closing a tunnel the config no longer allows");
            false
        }
    }
}
