//! Pooled, long-lived mTLS HTTP/2 connections to peer clusters' gateways: one per peer gateway,
//! many streams each. The TLS client verifies the exact SPIFFE ID of the gateway it dials
//! against that gateway's own trust domain bundle; it presents this gateway's current
//! certificate (read from the live `CertStore`, so rotation needs no reconnect). Keepalive PINGs
//! find dead connections; a failed dial backs off (doubling, capped) so a dead peer costs one
//! fast error per request instead of a connect timeout each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use isthmus_federation::identity::{
    CertStore, SpiffeId, SpiffeServerVerifier, TrustDomain, TrustStore, tls,
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::body::Body;
use crate::coalesce::Coalesced;
use crate::config::Limits;
use crate::health::Health;
use crate::lb::random;
use crate::table::{Backend, PeerGateway};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("peer gateway {gateway} of {cluster} is unreachable: {reason}")]
    Unreachable {
        cluster: Arc<str>,
        gateway: Arc<str>,
        reason: String,
    },
    #[error("{cluster} has no gateway registered")]
    NoGateway { cluster: Arc<str> },
}

/// The order in which to try a cluster's `n` gateways: those marked up in `up` (bit `i` for
/// gateway `i`; gateways past the 128th count as up) first, then the others; each group from
/// `start` on, wrapping, so requests spread over the gateways that answer.
fn gateway_order(n: usize, start: usize, up: u128) -> impl Iterator<Item = usize> {
    let is_up = move |i: usize| i >= 128 || up & (1u128 << i) != 0;
    let rotation = move || (0..n).map(move |k| (start + k) % n);
    rotation()
        .filter(move |&i| is_up(i))
        .chain(rotation().filter(move |&i| !is_up(i)))
}

/// A peer gateway: its address, and the trust domain and name its certificate must carry.
type SlotKey = (Arc<str>, Arc<str>, Arc<str>);

/// Slots past this many are swept of those with no connection, no dial and no backoff.
const SWEEP_ABOVE: usize = 64;

#[derive(Default)]
struct Slot {
    /// The open connection, read without a lock on the request path.
    ready: arc_swap::ArcSwapOption<SendRequest<Body>>,
    /// Held while dialing (by the dial's own task), so one dial serves every waiting request.
    conn: Arc<tokio::sync::Mutex<SlotState>>,
}

impl Slot {
    /// Nothing here worth keeping: no live connection, no dial, no backoff still running.
    fn is_spent(&self, now: Instant) -> bool {
        self.ready.load().as_ref().is_none_or(|s| s.is_closed())
            && self
                .conn
                .try_lock()
                .is_ok_and(|st| st.retry_at.is_none_or(|at| at <= now))
    }
}

#[derive(Default)]
struct SlotState {
    sender: Option<SendRequest<Body>>,
    /// After a failed dial: when to try again, and the next backoff.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
}

/// What a dial needs, shared with the tasks that dial.
struct Dialer {
    certs: CertStore,
    trust: TrustStore,
    limits: Limits,
}

/// Connections to peer gateways, keyed by address and expected identity.
pub struct PeerPool {
    dialer: Arc<Dialer>,
    slots: Mutex<HashMap<SlotKey, Arc<Slot>>>,
}

impl PeerPool {
    pub fn new(certs: CertStore, trust: TrustStore, limits: Limits) -> Self {
        Self {
            dialer: Arc::new(Dialer {
                certs,
                trust,
                limits,
            }),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A ready stream sender to one of `backend`'s gateways, and which one. The gateways that
    /// answer probes are tried first, from a random one on; then the others; `last` (a gateway
    /// that just failed a try) after all of them. Each is tried once (one whose last dial
    /// failed fails at once while it backs off), so one dead gateway of a cluster costs that
    /// cluster nothing while another answers. The error is the last one.
    pub async fn get_any<'b>(
        &self,
        backend: &'b Backend,
        health: &Health,
        last: Option<&str>,
    ) -> Result<(SendRequest<Body>, &'b PeerGateway), PoolError> {
        let gateways = &backend.gateways;
        let up = health.gateways_up(gateways);
        let start = usize::try_from(random()).unwrap_or(0) % gateways.len().max(1);
        let is_last = |i: &usize| last.is_some_and(|a| *gateways[*i].address == *a);
        let order = || gateway_order(gateways.len(), start, up);
        let mut error = PoolError::NoGateway {
            cluster: backend.cluster.clone(),
        };
        // No allocation on the request path: the order is walked twice, `last` held back.
        for i in order()
            .filter(|i| !is_last(i))
            .chain(order().filter(is_last))
        {
            let gateway = &gateways[i];
            match self.get(backend, gateway).await {
                Ok(sender) => return Ok((sender, gateway)),
                Err(e) => error = e,
            }
        }
        Err(error)
    }

    /// A ready stream sender to `gateway` of `backend`'s cluster: the pooled connection, or a
    /// new one. Fails fast while a recent dial to it is backing off. The dial runs in its own
    /// task: a caller that gives up (a probe's timeout, a client gone) does not cancel it, and
    /// the callers after it get its connection instead of dialing again.
    pub async fn get(
        &self,
        backend: &Backend,
        gateway: &PeerGateway,
    ) -> Result<SendRequest<Body>, PoolError> {
        self.get_with(backend, gateway, false).await
    }

    /// [`PeerPool::get`] for a health probe: it dials even while the gateway's backoff runs
    /// (probes come once a probe interval), so the first probe after a heal reconnects, and
    /// its success resets the backoff for every caller — requests need not wait out up to
    /// 5 s of backoff left from the outage.
    pub async fn get_for_probe(
        &self,
        backend: &Backend,
        gateway: &PeerGateway,
    ) -> Result<SendRequest<Body>, PoolError> {
        self.get_with(backend, gateway, true).await
    }

    async fn get_with(
        &self,
        backend: &Backend,
        gateway: &PeerGateway,
        past_backoff: bool,
    ) -> Result<SendRequest<Body>, PoolError> {
        let slot = self.slot(backend, gateway);
        if let Some(sender) = &*slot.ready.load()
            && !sender.is_closed()
        {
            return Ok((**sender).clone());
        }
        let mut state = slot.conn.clone().lock_owned().await;
        if let Some(sender) = &state.sender
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        state.sender = None;
        slot.ready.store(None);
        let unreachable = |reason: String| PoolError::Unreachable {
            cluster: backend.cluster.clone(),
            gateway: gateway.address.clone(),
            reason,
        };
        if let Some(at) = state.retry_at
            && Instant::now() < at
            && !past_backoff
        {
            return Err(unreachable(format!(
                "{} (next dial in {} ms)",
                state.last_error,
                at.saturating_duration_since(Instant::now()).as_millis()
            )));
        }
        let dialer = self.dialer.clone();
        let (backend_, gateway_) = (backend.clone(), gateway.clone());
        let task = tokio::spawn(async move {
            let result = dialer.dial(&backend_, &gateway_).await;
            match &result {
                Ok(sender) => {
                    state.sender = Some(sender.clone());
                    slot.ready.store(Some(Arc::new(sender.clone())));
                    state.retry_at = None;
                    state.backoff = Duration::ZERO;
                }
                Err(reason) => {
                    state.backoff = (state.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                    state.retry_at = Some(Instant::now() + state.backoff);
                    state.last_error.clone_from(reason);
                    tracing::warn!(peer.cluster = %backend_.cluster, gateway = %gateway_.address, error = %reason, "dialing peer gateway failed");
                }
            }
            result
        });
        match task.await {
            Ok(result) => result.map_err(unreachable),
            Err(e) => Err(unreachable(format!("the dial was cut short: {e}"))),
        }
    }

    /// The slot of `gateway`, made on first use. Making one sweeps away spent slots once there
    /// are many (gateways that left, addresses reused under new names).
    fn slot(&self, backend: &Backend, gateway: &PeerGateway) -> Arc<Slot> {
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = (
            gateway.address.clone(),
            backend.trust_domain.clone(),
            gateway.name.clone(),
        );
        if let Some(slot) = slots.get(&key) {
            return slot.clone();
        }
        if slots.len() >= SWEEP_ABOVE {
            let now = Instant::now();
            slots.retain(|_, slot| Arc::strong_count(slot) > 1 || !slot.is_spent(now));
        }
        slots.entry(key).or_default().clone()
    }
}

impl Dialer {
    async fn dial(
        &self,
        backend: &Backend,
        gateway: &PeerGateway,
    ) -> Result<SendRequest<Body>, String> {
        let td: TrustDomain = backend
            .trust_domain
            .parse()
            .map_err(|e| format!("bad trust domain: {e}"))?;
        let id = SpiffeId::gateway(&td, &gateway.name).map_err(|e| e.to_string())?;
        let verifier = SpiffeServerVerifier::for_id(self.trust.clone(), id).into_arc();
        let config = tls::client_config(Some(&self.certs), verifier, &[tls::ALPN_H2])
            .map_err(|e| e.to_string())?;
        let host = gateway
            .address
            .rsplit_once(':')
            .map_or(&*gateway.address, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned())
            .or_else(|_| ServerName::try_from("isthmus.invalid"))
            .map_err(|e| e.to_string())?;
        let connect = async {
            let tcp = TcpStream::connect(&*gateway.address)
                .await
                .map_err(|e| format!("connect: {e} (is the peer's inbound port reachable?)"))?;
            let _ = tcp.set_nodelay(true);
            TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))
        };
        let tls = tokio::time::timeout(self.limits.connect_timeout, connect)
            .await
            .map_err(|_| {
                format!(
                    "no connection within {} ms",
                    self.limits.connect_timeout.as_millis()
                )
            })??;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(self.limits.stream_window)
            .initial_connection_window_size(self.limits.connection_window)
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_send_buf_size(usize::try_from(self.limits.stream_window).unwrap_or(1 << 20))
            .handshake(TokioIo::new(Coalesced::new(tls)))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let cluster = backend.cluster.clone();
        let address = gateway.address.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(peer.cluster = %cluster, gateway = %address, error = %e, "peer gateway connection ended");
            }
        });
        tracing::debug!(peer.cluster = %backend.cluster, gateway = %gateway.address, "connected to peer gateway");
        Ok(sender)
    }
}

impl PeerPool {
    /// Open pooled connections to peer gateways (for metrics).
    pub fn open_connections(&self) -> usize {
        let slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        slots
            .values()
            .filter(|s| s.ready.load().as_ref().is_some_and(|c| !c.is_closed()))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::service::service_fn;
    use isthmus_federation::identity::{Accept, Ca, Kek, SpiffeClientVerifier};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    fn credential(ca: &Ca, name: &str) -> CertStore {
        let id = SpiffeId::gateway(ca.trust_domain(), name).expect("id");
        let (cert, key) = ca
            .issue_local(&id, Duration::from_secs(3600))
            .expect("leaf");
        let store = CertStore::new();
        store.set_from_pem(&cert.chain_pem, &key).expect("pem");
        store
    }

    /// West's and east's CAs, and a trust store holding both.
    fn two_clusters() -> (Ca, Ca, TrustStore) {
        let kek = Kek::generate().expect("kek");
        let day = Duration::from_secs(86_400);
        let west = Ca::generate("west.mesh".parse().expect("td"), &kek, day).expect("ca");
        let east = Ca::generate("east.mesh".parse().expect("td"), &kek, day).expect("ca");
        let trust = TrustStore::new();
        trust.set(west.bundle());
        trust.set(east.bundle());
        (west, east, trust)
    }

    /// The west cluster, served by `gateway` alone.
    fn west_with(gateway: &PeerGateway) -> Backend {
        Backend {
            cluster: "west".into(),
            trust_domain: "west.mesh".into(),
            region: "r".into(),
            zone: "".into(),
            gateways: vec![gateway.clone()],
            healthy: 1,
            weight: 1,
            stale: false,
            confirmed_at: Instant::now(),
        }
    }

    /// A peer gateway that counts its TCP connections and waits `delay` before each TLS
    /// handshake; it answers every request 200.
    async fn slow_peer(
        listener: TcpListener,
        certs: CertStore,
        trust: TrustStore,
        delay: Duration,
    ) -> (String, Arc<AtomicUsize>) {
        let address = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let verifier = SpiffeClientVerifier::new(trust, Accept::Any).into_arc();
        let config = tls::server_config(&certs, verifier, &[tls::ALPN_H2]).expect("config");
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = TlsAcceptor::from(config.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let ok = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::new(crate::body::empty()),
                        )
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), ok)
                        .await;
                });
            }
        });
        (address, accepted)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dial_its_caller_gave_up_on_still_lands_and_serves_the_next_caller() {
        let (west, east, trust) = two_clusters();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (address, accepted) = slow_peer(
            listener,
            credential(&west, "gw-1"),
            trust.clone(),
            Duration::from_millis(400),
        )
        .await;
        let pool = PeerPool::new(credential(&east, "gw-1"), trust, Limits::default());
        let gateway = PeerGateway {
            name: "gw-1".into(),
            address: address.into(),
            zone: "".into(),
        };
        let backend = west_with(&gateway);
        // A caller (a probe with a short timeout) gives up while the handshake is held back.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(100), pool.get(&backend, &gateway));
        assert!(
            gave_up.await.is_err(),
            "the peer answered before the caller gave up"
        );
        let mut sender = pool.get(&backend, &gateway).await.expect("a connection");
        let mut req = hyper::Request::new(crate::body::empty());
        *req.uri_mut() = "http://peer/".parse().expect("uri");
        let response = sender.send_request(req).await.expect("an answer");
        assert_eq!(response.status(), hyper::StatusCode::OK);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the second caller dialed again instead of taking the first dial's connection"
        );
        assert_eq!(pool.open_connections(), 1);
    }

    /// A gateway that was down for a while: requests back off (up to 5 s) before dialing it
    /// again, but a probe dials at once, and its connection serves every caller from then on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_probe_after_a_heal_reconnects_and_ends_the_backoff() {
        let (west, east, trust) = two_clusters();
        // The gateway's port, closed for now (the outage).
        let address = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let pool = PeerPool::new(credential(&east, "gw-1"), trust.clone(), Limits::default());
        let gateway = PeerGateway {
            name: "gw-1".into(),
            address: address.to_string().into(),
            zone: "".into(),
        };
        let backend = west_with(&gateway);
        // Failed dials grow the backoff: 200 ms, 400, 800, 1.6 s.
        for _ in 0..4 {
            let failed = pool.get_for_probe(&backend, &gateway).await;
            assert!(failed.is_err(), "nothing listens yet");
        }
        // The heal: the gateway listens again.
        let listener = TcpListener::bind(address).await.expect("rebind");
        slow_peer(listener, credential(&west, "gw-1"), trust, Duration::ZERO).await;
        let waiting = pool.get(&backend, &gateway).await;
        assert!(
            matches!(&waiting, Err(PoolError::Unreachable { reason, .. }) if reason.contains("next dial in")),
            "a request backs off after the outage"
        );
        pool.get_for_probe(&backend, &gateway)
            .await
            .expect("the probe reconnects at once");
        let mut sender = pool
            .get(&backend, &gateway)
            .await
            .expect("requests use the probe's connection, no backoff left");
        let mut req = hyper::Request::new(crate::body::empty());
        *req.uri_mut() = "http://peer/".parse().expect("uri");
        let response = sender.send_request(req).await.expect("an answer");
        assert_eq!(response.status(), hyper::StatusCode::OK);
    }

    #[test]
    fn gateways_that_answer_are_tried_first_from_the_start_then_the_rest() {
        let order = |n, start, up| gateway_order(n, start, up).collect::<Vec<_>>();
        assert_eq!(order(1, 0, 0b1), [0]);
        assert_eq!(
            order(1, 0, 0b0),
            [0],
            "a gateway marked down is still tried last"
        );
        assert_eq!(order(3, 1, 0b111), [1, 2, 0]);
        assert_eq!(order(3, 1, 0b101), [2, 0, 1], "gateway 1 is down");
        assert_eq!(order(4, 3, 0b0110), [1, 2, 3, 0]);
        assert_eq!(order(0, 0, 0), Vec::<usize>::new());
        let many = order(130, 127, 0);
        assert_eq!(
            &many[..2],
            [128, 129],
            "gateways past the 128th count as up"
        );
        assert_eq!(many.len(), 130);
    }
}
