//! Connection slots of the local listeners (the proxy port and every VIP listener, which share
//! one budget), shared fairly between sources: a source (an IPv4 address, or an IPv6 /64, as on
//! the TLS listeners) holds at most `limits.max_connections_per_source` of them, and when every
//! slot is taken a newcomer from a source holding fewer takes the oldest slot of the source
//! holding the most (that connection is closed), so one client, or a few, cannot lock every other
//! client out. Refusals are counted and logged through [`RefusalLog`], never once each.
//!
//! Must not: hold its lock across an `.await` or for more than one admission's bookkeeping.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use isthmus_federation::identity::source_of;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::refusals::{Reason, RefusalLog};
use crate::serve::Drain;

/// Accepts connections on `listener` (named `label` in metrics and logs) until draining starts,
/// admits each through `limit` (a refused one is closed at once) and runs `serve` on it in a
/// task of its own, which ends, closing the connection, when its slot is taken for another
/// source.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limit: FairLimit,
    label: &'static str,
    drain: Drain,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = drain.signaled() => return,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, listener = label, "accepting a local connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = limit.admit(remote, label) else {
            continue;
        };
        let served = serve(stream, remote);
        tokio::spawn(async move {
            tokio::select! {
                () = served => {}
                () = permit.evicted() => {
                    tracing::debug!(%remote, listener = label, "connection closed to make room for another source's");
                }
            }
        });
    }
}

/// One budget of connection slots, shared by every local listener. Cheap to clone.
#[derive(Clone)]
pub struct FairLimit {
    inner: Arc<Inner>,
}

struct Inner {
    total: usize,
    per_source: usize,
    state: Mutex<State>,
    refusals: RefusalLog,
}

#[derive(Default)]
struct State {
    open: usize,
    next_id: u64,
    /// Open connections per source, oldest first; no entry at zero.
    sources: HashMap<IpAddr, BTreeMap<u64, Arc<Notify>>>,
    /// (connections, source) of every source with one open: the last is the heaviest.
    by_count: BTreeSet<(usize, IpAddr)>,
}

impl State {
    fn held(&self, source: IpAddr) -> usize {
        self.sources.get(&source).map_or(0, BTreeMap::len)
    }

    fn insert(&mut self, source: IpAddr, id: u64, evict: Arc<Notify>) {
        let conns = self.sources.entry(source).or_default();
        let before = conns.len();
        conns.insert(id, evict);
        self.by_count.remove(&(before, source));
        self.by_count.insert((before + 1, source));
        self.open += 1;
    }

    /// Forgets connection `id` of `source`; `None` when it was already gone (evicted).
    fn remove(&mut self, source: IpAddr, id: u64) -> Option<Arc<Notify>> {
        let conns = self.sources.get_mut(&source)?;
        let before = conns.len();
        let evict = conns.remove(&id)?;
        self.by_count.remove(&(before, source));
        if before == 1 {
            self.sources.remove(&source);
        } else {
            self.by_count.insert((before - 1, source));
        }
        self.open -= 1;
        Some(evict)
    }

    /// Closes the oldest connection of the source holding the most, when it holds more than
    /// `source` would with one more: the slot it frees is the newcomer's.
    fn evict_for(&mut self, source: IpAddr) -> Option<IpAddr> {
        let &(heaviest, victim) = self.by_count.last()?;
        if heaviest <= self.held(source) + 1 {
            return None;
        }
        let oldest = *self.sources.get(&victim)?.keys().next()?;
        let evict = self.remove(victim, oldest)?;
        evict.notify_one();
        Some(victim)
    }
}

/// One admitted connection's slot, given back when dropped.
pub struct FairPermit {
    inner: Arc<Inner>,
    source: IpAddr,
    id: u64,
    evict: Arc<Notify>,
}

impl FairPermit {
    /// Resolves when the connection lost its slot to another source's: the caller closes it.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        self.inner.lock().remove(self.source, self.id);
    }
}

impl FairLimit {
    /// `total` slots, at most `per_source` of them for one source.
    pub fn new(total: usize, per_source: usize, refusals: RefusalLog) -> Self {
        Self {
            inner: Arc::new(Inner {
                total,
                per_source: per_source.clamp(1, total.max(1)),
                state: Mutex::new(State::default()),
                refusals,
            }),
        }
    }

    /// A slot for a connection from `remote` on `listener` (a metric label), or `None` when it is
    /// refused (the caller closes it; the refusal is counted and logged at most once an interval).
    pub fn admit(&self, remote: SocketAddr, listener: &'static str) -> Option<FairPermit> {
        let source = source_of(remote.ip());
        let admitted = {
            let mut st = self.inner.lock();
            let verdict = if st.held(source) >= self.inner.per_source {
                Err(Reason::SourceLimit)
            } else if st.open < self.inner.total {
                Ok(None)
            } else {
                st.evict_for(source).map(Some).ok_or(Reason::ListenerFull)
            };
            verdict.map(|evicted| {
                let id = st.next_id;
                st.next_id += 1;
                let evict = Arc::new(Notify::new());
                st.insert(source, id, evict.clone());
                (id, evict, evicted)
            })
        };
        match admitted {
            Ok((id, evict, evicted)) => {
                if let Some(victim) = evicted {
                    self.inner
                        .refusals
                        .refused(listener, Reason::Evicted, victim);
                }
                Some(FairPermit {
                    inner: self.inner.clone(),
                    source,
                    id,
                    evict,
                })
            }
            Err(reason) => {
                self.inner.refusals.refused(listener, reason, source);
                None
            }
        }
    }

    /// Connections holding a slot.
    pub fn open(&self) -> usize {
        self.inner.lock().open
    }

    /// Waits until every connection closed or `deadline` passed.
    pub async fn drained(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.open() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is counts and maps updated in single steps: a panic elsewhere cannot leave
        // it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], port))
    }

    fn limit(total: usize, per_source: usize) -> FairLimit {
        FairLimit::new(total, per_source, RefusalLog::new(&Metrics::default()))
    }

    #[tokio::test]
    async fn a_source_holds_its_share_and_a_full_listener_takes_from_the_heaviest() {
        let limit = limit(8, 4);
        let a: Vec<_> = (0..4)
            .map(|p| limit.admit(addr(1, p), "vip").expect("a's share"))
            .collect();
        assert!(limit.admit(addr(1, 99), "vip").is_none(), "a is at its cap");
        let b: Vec<_> = (0..3)
            .map(|p| limit.admit(addr(2, p), "vip").expect("b"))
            .collect();
        let c = limit.admit(addr(3, 0), "vip").expect("the last slot");
        assert_eq!(limit.open(), 8);
        // Full: d holds none, a holds the most; a's oldest connection makes room.
        let d = limit
            .admit(addr(4, 0), "proxy")
            .expect("d takes a slot from a");
        tokio::time::timeout(Duration::from_secs(1), a[0].evicted())
            .await
            .expect("a's oldest connection is told to close");
        assert_eq!(limit.open(), 8);
        // a (3) and b (3) now hold the most; c (1) may take one, b gives it up (a before b
        // on a tie, by address order, is not promised: one of them does).
        let c2 = limit.admit(addr(3, 1), "vip").expect("c takes a slot");
        // Now a, b hold 3 or 2 and c 2: a source at 2 asking for a third is refused rather
        // than taking from a source with 3.
        assert!(
            limit.admit(addr(3, 2), "vip").is_none(),
            "no churn between equals"
        );
        drop((b, c, c2, d));
        drop(a);
        assert_eq!(limit.open(), 0, "every slot comes back");
        assert!(limit.inner.lock().by_count.is_empty());
    }

    async fn connect_from(last: u8, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(addr(last, 0)).expect("bind a loopback source");
        socket.connect(to).await.expect("connect")
    }

    /// Whether the listener closed `conn` within a short while (idle connections it keeps stay
    /// open: the test server answers only once it reads a byte).
    async fn closed(conn: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt as _;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(300), conn.read(&mut byte)).await {
            Err(_) => false,
            Ok(read) => matches!(read, Ok(0) | Err(_)),
        }
    }

    async fn served(last: u8, to: SocketAddr) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut conn = connect_from(last, to).await;
        conn.write_all(b"?").await.expect("send");
        let mut answer = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut answer))
            .await
            .expect("served in time")
            .expect("an answer");
        assert_eq!(&answer, b"ok");
    }

    /// Idle connections from one address take its share of a listener's slots and no more: a
    /// client from another address is served at once, and once every slot is taken it still is,
    /// in place of the oldest connection of the source holding the most.
    #[tokio::test]
    async fn one_source_cannot_take_every_local_connection_slot() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let metrics = Metrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let limit = FairLimit::new(8, 4, RefusalLog::new(&metrics));
        let listener = TcpListener::bind(addr(1, 0)).await.expect("bind");
        let at = listener.local_addr().expect("addr");
        let (_drain_tx, drain) = Drain::new();
        tokio::spawn(accept_loop(
            listener,
            limit.clone(),
            "vip",
            drain,
            |mut s, _| async move {
                let mut byte = [0u8; 1];
                if s.read_exact(&mut byte).await.is_ok() {
                    let _ = s.write_all(b"ok").await;
                }
            },
        ));

        let mut from_one = Vec::new();
        for _ in 0..8 {
            from_one.push(connect_from(1, at).await);
        }
        let mut kept = Vec::new();
        for mut conn in from_one {
            if !closed(&mut conn).await {
                kept.push(conn);
            }
        }
        assert_eq!(kept.len(), 4, "idle connections from 127.0.0.1 left open");
        served(2, at).await;

        // 127.0.0.3 takes the other four slots: the listener is full.
        let mut from_three = Vec::new();
        for _ in 0..4 {
            from_three.push(connect_from(3, at).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(limit.open(), 8);
        // 127.0.0.2 still gets in; the oldest connection of a source holding four goes.
        served(2, at).await;
        let mut evicted = 0;
        for conn in kept.iter_mut().chain(from_three.iter_mut()).take(8) {
            evicted += usize::from(closed(conn).await);
        }
        assert_eq!(evicted, 1, "one connection made room");

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for series in [
            "listener=\"vip\",reason=\"source_limit\"} 4",
            "listener=\"vip\",reason=\"evicted\"} 1",
        ] {
            assert!(text.contains(series), "no {series} in\n{text}");
        }
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let limit = limit(8, 1);
        let one: SocketAddr = "[2001:db8:1:2::1]:1".parse().expect("addr");
        let same: SocketAddr = "[2001:db8:1:2:ffff::9]:2".parse().expect("addr");
        let other: SocketAddr = "[2001:db8:1:3::1]:1".parse().expect("addr");
        let _p = limit.admit(one, "vip").expect("first");
        assert!(limit.admit(same, "vip").is_none(), "same /64");
        assert!(limit.admit(other, "vip").is_some(), "another /64");
    }
}
