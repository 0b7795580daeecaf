//! When the import writer runs its next round: on every change that alters its desired
//! objects — a new mesh view (a route appearing or ending, healthy endpoint counts, a catalog
//! going stale), a gateway's health verdicts changing (`status.clusters`), a gateway
//! registration appearing or its lease ending, a namespace appearing — each delivered as a
//! notification, never found by polling. A burst of changes (a peer's update followed by the
//! writer's own republished view, verdicts of several services) becomes one round: the round
//! starts once the triggers have been quiet for [`QUIET`], and never later than [`MAX_DELAY`]
//! after the first. A slow resync remains as a backstop for changes made by others (an
//! operator deleting a derived object); after a failed round the backoff decides ([`Triggers::pause`]).
//!
//! Must not: decide what to write.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::mesh::MeshView;

/// A round waits for this long without another trigger...
pub const QUIET: Duration = Duration::from_millis(100);
/// ...but no longer than this after the first trigger it carries.
pub const MAX_DELAY: Duration = Duration::from_millis(400);

/// Why a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A change was notified (and the burst it started has settled).
    Changed,
    /// Nothing was notified within the wait (resync, or the backoff after a failure).
    Timer,
}

/// What wakes the writer.
pub struct Triggers {
    pub view: watch::Receiver<Arc<MeshView>>,
    pub verdicts: watch::Receiver<u64>,
    /// Gateway registrations and namespaces (their followers notify it).
    pub wake: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
}

impl Triggers {
    /// Marks everything seen so far as handled (called as a round starts: the round reads the
    /// current state, so only later changes need another).
    pub fn seen(&mut self) {
        self.view.borrow_and_update();
        self.verdicts.borrow_and_update();
    }

    /// Waits up to `wait` for a trigger, then for its burst to settle. `None` on shutdown (or
    /// when the federation's channels closed).
    pub async fn next(&mut self, wait: Duration) -> Option<Cause> {
        tokio::select! {
            r = self.one() => r?,
            _ = tokio::time::sleep(wait) => return Some(Cause::Timer),
        }
        let first = Instant::now();
        loop {
            let deadline = (Instant::now() + QUIET).min(first + MAX_DELAY);
            tokio::select! {
                r = self.one() => r?,
                _ = tokio::time::sleep_until(deadline) => return Some(Cause::Changed),
            }
            if Instant::now() >= first + MAX_DELAY {
                return Some(Cause::Changed);
            }
        }
    }

    /// Waits `d` whatever changes (a backoff); false on shutdown.
    pub async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stop.changed() => false,
        }
    }

    /// One trigger; `None` when the federation stops.
    async fn one(&mut self) -> Option<()> {
        tokio::select! {
            r = self.view.changed() => r.ok(),
            r = self.verdicts.changed() => r.ok(),
            _ = self.wake.notified() => Some(()),
            _ = self.stop.changed() => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        view: watch::Sender<Arc<MeshView>>,
        verdicts: watch::Sender<u64>,
        wake: Arc<Notify>,
        stop: watch::Sender<bool>,
        triggers: Triggers,
    }

    fn fixture() -> Fixture {
        let me = crate::mesh::ClusterPlace {
            cluster: "east".parse().expect("name"),
            trust_domain: "east.mesh".parse().expect("td"),
            region: "r1".parse().expect("region"),
            zone: None,
        };
        let (view, view_rx) = watch::channel(Arc::new(MeshView::empty(me)));
        let (verdicts, verdicts_rx) = watch::channel(0);
        let (stop, stop_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        Fixture {
            triggers: Triggers {
                view: view_rx,
                verdicts: verdicts_rx,
                wake: wake.clone(),
                stop: stop_rx,
            },
            view,
            verdicts,
            wake,
            stop,
        }
    }

    const RESYNC: Duration = Duration::from_secs(30);

    /// One kind of change, made on the fixture.
    type Poke = fn(&Fixture);

    #[tokio::test(start_paused = true)]
    async fn each_kind_of_change_wakes_the_writer_at_once() {
        let mut f = fixture();
        let kinds: [(&str, Poke); 3] = [
            ("view", |f| f.view.send_modify(|_| {})),
            ("verdicts", |f| f.verdicts.send_modify(|n| *n += 1)),
            ("wake", |f| f.wake.notify_one()),
        ];
        for (name, poke) in kinds {
            f.triggers.seen();
            let start = Instant::now();
            poke(&f);
            let cause = f.triggers.next(RESYNC).await;
            assert_eq!(cause, Some(Cause::Changed), "{name}");
            assert_eq!(start.elapsed(), QUIET, "{name}: not woken at once");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_round_and_a_steady_stream_still_runs() {
        let mut f = fixture();
        // Ten changes 20 ms apart: one round, QUIET after the last.
        let start = Instant::now();
        let verdicts = &f.verdicts;
        let pokes = async move {
            for _ in 0..10 {
                verdicts.send_modify(|n| *n += 1);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (cause, ()) = tokio::join!(f.triggers.next(RESYNC), pokes);
        assert_eq!(cause, Some(Cause::Changed));
        assert_eq!(start.elapsed(), Duration::from_millis(180) + QUIET);
        // Nothing pending afterwards: the next wait runs to its timer.
        f.triggers.seen();
        assert_eq!(
            f.triggers.next(Duration::from_secs(1)).await,
            Some(Cause::Timer)
        );
        // A change every 50 ms without end: a round still starts MAX_DELAY after the first.
        let start = Instant::now();
        let view = f.view.clone();
        let stream = tokio::spawn(async move {
            loop {
                view.send_modify(|_| {});
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        assert_eq!(f.triggers.next(RESYNC).await, Some(Cause::Changed));
        assert_eq!(start.elapsed(), MAX_DELAY);
        stream.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn without_changes_the_timer_decides_and_shutdown_ends_it() {
        let mut f = fixture();
        let start = Instant::now();
        assert_eq!(f.triggers.next(RESYNC).await, Some(Cause::Timer));
        assert_eq!(start.elapsed(), RESYNC);
        f.stop.send_replace(true);
        assert_eq!(f.triggers.next(RESYNC).await, None);
    }
}
