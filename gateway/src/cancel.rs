//! Ending one served HTTP/2 stream from outside its body. hyper polls a response body only
//! when the stream has send capacity: a caller that stops reading (or a calling gateway that
//! relays its back-pressure) would keep a closed exchange open for as long as it likes if the
//! close were noticed only there ([`crate::body::Revocable`]). So the server's executor runs
//! every stream task inside a slot ([`StreamExecutor`]); the request path puts the exchange's
//! [`Ending`] there ([`follow`]) and, once it closes, the task gets [`GRACE`] to finish on its
//! own (a gRPC stream sends its PERMISSION_DENIED trailers, a read response fails) and is then
//! dropped: hyper resets the stream, and the backend call and both bodies go with it.
//!
//! Cost: nothing allocated per stream (the slot lives in the task's future); one thread-local
//! look-up per poll of a stream task. Must not: wait on an [`Ending`] another task waits on as
//! its owner (tunnels wait on theirs in their own task and are never put in a slot).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::live::Ending;

/// How long a closed stream's task may run on before it is dropped (its stream reset).
pub const GRACE: Duration = Duration::from_secs(2);

tokio::task_local! {
    static SLOT: RefCell<Option<Arc<Ending>>>;
}

/// hyper's executor for served connections: spawns each stream task on tokio, inside a slot a
/// closing exchange can cancel it through.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(SLOT.scope(RefCell::new(None), cancellable(fut)));
    }
}

/// Makes the current stream task end soon after `ending` closes. Outside a stream task (an
/// HTTP/1 connection, a test) it does nothing: there the connection's own task is the owner.
pub fn follow(ending: Arc<Ending>) {
    let _ = SLOT.try_with(|s| *s.borrow_mut() = Some(ending));
}

/// Runs a stream task until it ends, or until [`GRACE`] after its slot's exchange closed.
async fn cancellable<F: Future<Output = ()>>(fut: F) {
    // Pinned in this task's own future: nothing allocated per stream.
    tokio::pin!(fut);
    let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if fut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // Checked after the task ran: an ending it put in the slot just now is waited on too.
        let closed = SLOT
            .try_with(|s| {
                s.borrow()
                    .as_ref()
                    .is_some_and(|e| e.poll_closed(cx).is_ready())
            })
            .unwrap_or(false);
        if !closed {
            return Poll::Pending;
        }
        // Only a closed exchange allocates its timer. Returning drops the task, which resets
        // the stream.
        grace
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(GRACE)))
            .as_mut()
            .poll(cx)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use hyper::rt::Executor as _;

    use super::*;
    use crate::live::Closed;

    fn closed() -> Closed {
        Closed {
            cause: "authorization",
            reason: "denied".into(),
        }
    }

    /// A stream task that follows `ending` and then never ends on its own; reports when it is
    /// dropped.
    fn stuck(
        ending: Arc<Ending>,
        dropped: tokio::sync::oneshot::Sender<()>,
    ) -> impl Future<Output = ()> {
        struct OnDrop(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let guard = OnDrop(Some(dropped));
        async move {
            let _guard = guard;
            follow(ending);
            std::future::pending::<()>().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_stream_task_is_dropped_a_grace_after_its_exchange_closes() {
        let ending = Arc::new(Ending::default());
        let (tx, mut dropped) = tokio::sync::oneshot::channel();
        StreamExecutor.execute(stuck(ending.clone(), tx));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(dropped.try_recv().is_err(), "open while allowed");
        ending.close(closed());
        tokio::time::sleep(GRACE / 2).await;
        assert!(
            dropped.try_recv().is_err(),
            "the grace lets it finish itself"
        );
        tokio::time::sleep(GRACE).await;
        assert!(dropped.try_recv().is_ok(), "dropped after the grace");
    }

    #[tokio::test]
    async fn outside_a_stream_task_following_does_nothing() {
        follow(Arc::new(Ending::default()));
    }
}
