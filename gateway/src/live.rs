//! Long-lived exchanges, judged again on every config snapshot. Authorization is decided when a
//! stream starts; a tunnel, a WebSocket, a streaming upload or response or a peer's mTLS
//! connection may outlive that decision by hours. Each one registers here what it was admitted as (its grant);
//! on every new snapshot the re-check task ([`LiveSet::follow`]) runs the request path's own
//! decision over every grant and closes the exchanges it no longer allows, with the reason (for
//! the access log) and a count in `isthmus_gateway_connections_closed_by_policy_total`.
//!
//! Cost: a registration is one small allocation and a `std::sync::Mutex` held for a map insert
//! at the start of the exchange and a remove at its end; nothing per byte or per frame beyond a
//! waker check. What each side registers (and why) is said where it registers: the inbound side
//! in [`crate::inbound`], the outbound side in [`crate::outbound`].
//!
//! Must not: decide anything itself (the judge is the caller's), or hold its lock across an
//! `.await`.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::watch;

use crate::accesslog::Side;
use crate::metrics::Metrics;
use crate::table::Snapshot;

/// Why a snapshot no longer allows an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The rule that failed, a metric label: `peer`, `export`, `port`, `authorization`,
    /// `import`.
    pub cause: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "closed by a config change ({}): {}",
            self.cause, self.reason
        )
    }
}

/// The decision: `Ok` while `snapshot` still allows what the grant was admitted as.
pub type Judge<G> = fn(&Snapshot, &G) -> Result<(), Closed>;

/// One registered exchange's end: set once, then its waiters are woken.
#[derive(Default)]
pub struct Ending {
    closed: OnceLock<Closed>,
    /// The exchange's own task (the one serving it).
    waker: AtomicWaker,
    /// The task that reads the caller's request body (the backend call's), another task.
    upload: AtomicWaker,
}

impl Ending {
    /// Closes the exchange (the first reason wins); false when it already was.
    pub(crate) fn close(&self, closed: Closed) -> bool {
        let first = self.closed.set(closed).is_ok();
        self.wake();
        first
    }

    fn wake(&self) {
        self.waker.wake();
        self.upload.wake();
    }

    /// Why the exchange was closed, once it was.
    pub fn closed(&self) -> Option<&Closed> {
        self.closed.get()
    }

    /// Ready once the exchange must close (one waiter: the exchange's own task).
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<&Closed> {
        self.poll_on(&self.waker, cx)
    }

    /// [`Self::poll_closed`] for the task that reads the request body (one waiter).
    pub fn poll_closed_upload(&self, cx: &mut Context<'_>) -> Poll<&Closed> {
        self.poll_on(&self.upload, cx)
    }

    fn poll_on(&self, waker: &AtomicWaker, cx: &mut Context<'_>) -> Poll<&Closed> {
        if let Some(c) = self.closed.get() {
            return Poll::Ready(c);
        }
        waker.register(cx.waker());
        match self.closed.get() {
            Some(c) => Poll::Ready(c),
            None => Poll::Pending,
        }
    }

    /// Resolves once the exchange must close.
    pub async fn wait(&self) -> &Closed {
        poll_fn(|cx| self.poll_closed(cx)).await
    }
}

struct Live<G> {
    grant: G,
    ending: Arc<Ending>,
}

/// The open long-lived exchanges of one side, with the grant each was admitted as.
pub struct LiveSet<G> {
    live: Mutex<HashMap<u64, Live<G>>>,
    next: AtomicU64,
    judge: Judge<G>,
    table: watch::Receiver<Arc<Snapshot>>,
    side: Side,
}

/// An exchange's place in its [`LiveSet`]: dropping it (when the exchange ends) removes it.
pub struct Registration<G> {
    set: Arc<LiveSet<G>>,
    id: u64,
    ending: Arc<Ending>,
}

impl<G> Registration<G> {
    pub fn ending(&self) -> &Arc<Ending> {
        &self.ending
    }
}

impl<G> Drop for Registration<G> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

impl<G> LiveSet<G> {
    pub fn new(table: watch::Receiver<Arc<Snapshot>>, side: Side, judge: Judge<G>) -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            judge,
            table,
            side,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Live<G>>> {
        // Entries are inserted and removed whole: a panic elsewhere cannot leave one half-made.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers an exchange admitted as `grant` against `admitted`. When a newer snapshot was
    /// published meanwhile (the re-check may have run before this entry existed), the grant is
    /// judged against it at once: the exchange may start closed.
    pub fn register(self: &Arc<Self>, grant: G, admitted: &Snapshot) -> Registration<G> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let ending = Arc::new(Ending::default());
        // The table is read under the set's lock, which a re-check holds while it judges: a
        // snapshot published meanwhile is either judged here or finds this entry in the set.
        let mut live = self.lock();
        let stale = {
            let current = self.table.borrow();
            (!std::ptr::eq(&**current, admitted)).then(|| (self.judge)(&current, &grant))
        };
        if let Some(Err(closed)) = stale {
            ending.close(closed);
        }
        live.insert(
            id,
            Live {
                grant,
                ending: ending.clone(),
            },
        );
        drop(live);
        Registration {
            set: self.clone(),
            id,
            ending,
        }
    }

    /// How many exchanges are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Judges every registered exchange against `snap`; closes (and returns) those it no
    /// longer allows. The lock is held while judging: the judge is pure and cheap, and
    /// registrations wait for it, never the data path.
    pub fn recheck(&self, snap: &Snapshot) -> Vec<Closed> {
        let mut closed = Vec::new();
        let mut wake = Vec::new();
        for live in self.lock().values() {
            if live.ending.closed().is_some() {
                continue;
            }
            if let Err(c) = (self.judge)(snap, &live.grant)
                && live.ending.closed.set(c.clone()).is_ok()
            {
                closed.push(c);
                wake.push(live.ending.clone());
            }
        }
        // Every reason is set before any owner wakes: an exchange that ends because another
        // closed (a tunnel on a connection closed whole) still finds its own reason.
        for ending in wake {
            ending.wake();
        }
        closed
    }

    /// Re-checks on every new snapshot until the table's sender is gone.
    pub async fn follow(self: Arc<Self>, metrics: Arc<Metrics>) {
        let mut table = self.table.clone();
        loop {
            // The snapshot current when the task starts is judged too: one may have arrived
            // between the registrations and the task's first run.
            let snap = table.borrow_and_update().clone();
            let closed = self.recheck(&snap);
            for c in &closed {
                tracing::debug!(side = ?self.side, cause = c.cause, reason = %c.reason, "closing an exchange the new config no longer allows");
                metrics.closed_by_policy(self.side, c.cause);
            }
            if !closed.is_empty() {
                tracing::info!(side = ?self.side, closed = closed.len(), version = snap.version, "closed open exchanges the new config no longer allows");
            }
            if table.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A grant allowed while the snapshot's cluster name is `allowed`.
    fn judge(snap: &Snapshot, allowed: &&'static str) -> Result<(), Closed> {
        if &*snap.cluster == *allowed {
            Ok(())
        } else {
            Err(Closed {
                cause: "peer",
                reason: format!("{} is not {allowed}", snap.cluster),
            })
        }
    }

    fn snapshot(cluster: &str) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            cluster: cluster.into(),
            ..Snapshot::default()
        })
    }

    #[tokio::test]
    async fn a_new_snapshot_closes_what_it_no_longer_allows_and_wakes_its_owner() {
        let first = snapshot("a");
        let (tx, rx) = watch::channel(first.clone());
        let set = Arc::new(LiveSet::new(rx, Side::Inbound, judge));
        let metrics = Arc::new(Metrics::default());
        tokio::spawn(set.clone().follow(metrics));
        let kept = set.register("b", &first);
        let doomed = set.register("a", &first);
        assert_eq!(set.len(), 2);
        let ending = doomed.ending().clone();
        let waiter = tokio::spawn(async move { ending.wait().await.clone() });
        tx.send(snapshot("b")).expect("send");
        let closed = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(closed.cause, "peer");
        assert_eq!(closed.reason, "b is not a");
        assert!(kept.ending().closed().is_none());
        drop(doomed);
        assert_eq!(set.len(), 1, "an ended exchange leaves the set");
        drop(kept);
        assert!(set.is_empty());
    }

    #[test]
    fn a_registration_after_a_missed_snapshot_is_judged_at_once() {
        let old = snapshot("a");
        let (tx, rx) = watch::channel(old.clone());
        let set = Arc::new(LiveSet::new(rx, Side::Outbound, judge));
        tx.send(snapshot("b")).expect("send");
        let late = set.register("a", &old);
        assert_eq!(late.ending().closed().map(|c| c.cause), Some("peer"));
        let current = tx.borrow().clone();
        let fresh = set.register("a", &current);
        assert!(
            fresh.ending().closed().is_none(),
            "judged by the request path against this snapshot already"
        );
    }

    #[test]
    fn a_closed_exchange_is_counted_once() {
        let first = snapshot("a");
        let (_tx, rx) = watch::channel(first.clone());
        let set = Arc::new(LiveSet::new(rx, Side::Inbound, judge));
        let _r = set.register("a", &first);
        assert_eq!(set.recheck(&snapshot("b")).len(), 1);
        assert!(set.recheck(&snapshot("c")).is_empty());
    }
}
