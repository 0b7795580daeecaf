//! The running DNS server: UDP workers, the TCP listener, and the task that rebuilds the zone
//! snapshot whenever the mesh view (or a gateway verdict) changes.
//!
//! Threading: each UDP worker is a plain OS thread blocked in `recv_from` on its own socket
//! (SO_REUSEPORT spreads clients over them); it answers from a thread-local cached `Arc` of the
//! current snapshot (`arc-swap`), into a reused buffer, and never touches the async runtime. The
//! workers share one rate limiter (sharded by client prefix, see [`crate::rrl`]).
//! TCP runs on the runtime through hickory-server. Rebuilds run on the blocking pool (one at a
//! time: the [`Rebuilder`] moves into the task and back; changes that arrive meanwhile are
//! coalesced into the next one) and swap the snapshot in one store: a query sees the old zone or
//! the new one, never a mix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use arc_swap::cache::Cache;
use isthmus_federation::config::DnsConfig;
use isthmus_federation::mesh::MeshView;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::answer::{self, Transport};
use crate::health::Verdicts;
use crate::metrics::DnsMetrics;
use crate::rebuild::Rebuilder;
use crate::rrl::{RateLimiter, Verdict};
use crate::settings::Settings;
use crate::snapshot::Snapshot;
use crate::tcp::TcpServer;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(
        "cannot listen for DNS on {addr} ({proto}): {detail} (is another DNS server using it? set dns.bind, or dns.enabled: false)"
    )]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        detail: String,
    },
}

/// What the query path reads, shared by every worker.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: DnsMetrics,
    stop: AtomicBool,
}

/// What the server follows: the federation's mesh view and this cluster's gateway verdicts.
pub struct Inputs {
    pub views: watch::Receiver<Arc<MeshView>>,
    pub verdicts: watch::Receiver<Arc<Verdicts>>,
    pub metrics: DnsMetrics,
}

pub struct DnsServer {
    /// The address UDP and TCP are bound to.
    pub bound: SocketAddr,
    shared: Arc<Shared>,
    udp: Vec<std::thread::JoinHandle<()>>,
    tcp: TcpServer,
    driver: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

fn bind_udp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Room for bursts while a worker is busy (the kernel caps it at rmem_max).
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    let socket: std::net::UdpSocket = s.into();
    // Workers wake up this often to notice shutdown.
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket)
}

fn workers(cfg: &DnsConfig) -> usize {
    if cfg.udp_workers > 0 {
        return cfg.udp_workers;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Binds TCP and `n` UDP sockets to the same address (with port 0: the same ephemeral port).
async fn bind(
    addr: SocketAddr,
    n: usize,
) -> Result<(TcpListener, Vec<std::net::UdpSocket>), DnsError> {
    let mut last = None;
    for _ in 0..8 {
        let tcp = TcpListener::bind(addr).await.map_err(|e| DnsError::Bind {
            addr,
            proto: "tcp",
            detail: e.to_string(),
        })?;
        let port = tcp.local_addr().map(|a| a.port()).unwrap_or(addr.port());
        let at = SocketAddr::new(addr.ip(), port);
        let udp: Result<Vec<_>, _> = (0..n).map(|_| bind_udp(at, n > 1)).collect();
        match udp {
            Ok(sockets) => return Ok((tcp, sockets)),
            // An ephemeral TCP port may be taken for UDP: try another.
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => {
                return Err(DnsError::Bind {
                    addr,
                    proto: "udp",
                    detail: e.to_string(),
                });
            }
        }
    }
    Err(DnsError::Bind {
        addr,
        proto: "udp",
        detail: last.map(|e| e.to_string()).unwrap_or_default(),
    })
}

impl DnsServer {
    /// Binds, builds the first snapshot from the current view, and starts serving.
    pub async fn start(cfg: &DnsConfig, inputs: Inputs) -> Result<Self, DnsError> {
        let n = workers(cfg);
        let (tcp_listener, udp_sockets) = bind(cfg.bind, n).await?;
        let bound = tcp_listener.local_addr().unwrap_or(cfg.bind);
        let settings = Arc::new(Settings::from_config(cfg, Some(bound)));
        let Inputs {
            mut views,
            mut verdicts,
            metrics,
        } = inputs;
        let mut rebuilder = Rebuilder::new(settings.clone());
        let first = build(
            &mut rebuilder,
            &views.borrow_and_update().clone(),
            &verdicts.borrow_and_update().clone(),
            1,
            &metrics,
        );
        let serial = first.serial;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(first),
            metrics,
            stop: AtomicBool::new(false),
        });
        // One limiter for every worker: a prefix's budget is the server's, however SO_REUSEPORT
        // spreads its source ports.
        let rrl = RateLimiter::new(&settings.rate_limit).map(Arc::new);
        let mut udp = Vec::with_capacity(n);
        for (i, socket) in udp_sockets.into_iter().enumerate() {
            let shared = shared.clone();
            let rrl = rrl.clone();
            let handle = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || udp_worker(&socket, &shared, rrl.as_deref()))
                .map_err(|e| DnsError::Bind {
                    addr: bound,
                    proto: "udp",
                    detail: format!("cannot start a worker thread: {e}"),
                })?;
            udp.push(handle);
        }
        let tcp = TcpServer::start(tcp_listener, shared.clone());
        let (stop, mut stopped) = watch::channel(false);
        let driver_shared = shared.clone();
        let driver = tokio::spawn(async move {
            let mut serial = serial;
            loop {
                tokio::select! {
                    r = views.changed() => if r.is_err() { return },
                    r = verdicts.changed() => if r.is_err() { return },
                    _ = stopped.changed() => return,
                }
                let view = views.borrow_and_update().clone();
                let v = verdicts.borrow_and_update().clone();
                let metrics = driver_shared.metrics.clone();
                serial = next_serial(serial);
                let s = serial;
                let mut r = rebuilder;
                match tokio::task::spawn_blocking(move || {
                    let snap = build(&mut r, &view, &v, s, &metrics);
                    (r, snap)
                })
                .await
                {
                    Ok((r, snap)) => {
                        rebuilder = r;
                        driver_shared.snapshot.store(Arc::new(snap));
                    }
                    Err(e) => {
                        // The rebuilder went down with the task: the next change builds afresh.
                        rebuilder = Rebuilder::new(settings.clone());
                        tracing::error!(error = %e, "rebuilding the DNS zone failed; still serving the previous one")
                    }
                }
            }
        });
        tracing::info!(%bound, udp_workers = n, zones = ?cfg.all_zones().collect::<Vec<_>>(), "DNS serving");
        Ok(Self {
            bound,
            shared,
            udp,
            tcp,
            driver,
            stop,
        })
    }

    /// The snapshot being served (tests, status).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Stops accepting, lets in-flight TCP requests finish, and joins the UDP workers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.shared.stop.store(true, Ordering::Relaxed);
        self.tcp.shutdown().await;
        let _ = self.driver.await;
        let udp = self.udp;
        let _ = tokio::task::spawn_blocking(move || {
            for t in udp {
                let _ = t.join();
            }
        })
        .await;
    }
}

fn unix_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// SOA serials only grow: the time in seconds, or one more than the last when that is not later.
fn next_serial(prev: u32) -> u32 {
    unix_secs().max(prev.wrapping_add(1))
}

fn build(
    rebuilder: &mut Rebuilder,
    view: &Arc<MeshView>,
    verdicts: &Arc<Verdicts>,
    serial: u32,
    metrics: &DnsMetrics,
) -> Snapshot {
    let started = Instant::now();
    let serial = serial.max(unix_secs());
    let rebuilt = rebuilder.update(view, verdicts, serial);
    let snap = rebuilt.snapshot;
    let took = started.elapsed();
    metrics.snapshot(
        snap.nodes.len(),
        view.version,
        snap.serial,
        rebuilt.replanned,
        took,
    );
    tracing::debug!(
        names = snap.nodes.len(),
        routes_replanned = rebuilt.replanned,
        view_version = view.version,
        serial = snap.serial,
        took_ms = took.as_millis() as u64,
        "DNS zone rebuilt"
    );
    snap
}

/// Turns a response into the minimal truncated form a rate-limited client gets (header with
/// TC=1 and the question only).
fn slip(out: &mut Vec<u8>) {
    let qd = out
        .get(4..6)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let mut end = 12;
    if qd == 1 {
        while let Some(&len) = out.get(end) {
            end += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        end += 4;
    }
    out.truncate(end.min(out.len()));
    if out.len() >= 12 {
        out[2] |= 0x02;
        out[6..12].fill(0);
    }
}

fn udp_worker(socket: &std::net::UdpSocket, shared: &Shared, rrl: Option<&RateLimiter>) {
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(65_536);
    let mut cache = Cache::new(&shared.snapshot);
    let mut errors = 0u64;
    loop {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) {
                    errors += 1;
                    if errors.is_power_of_two() {
                        tracing::warn!(error = %e, errors, "DNS UDP receive failed");
                    }
                }
                continue;
            }
        };
        let started = Instant::now();
        let snap = cache.load();
        let outcome = answer::respond(snap, &buf[..n], src.ip(), Transport::Udp, &mut out);
        if out.is_empty() {
            shared.metrics.record(&outcome, started.elapsed());
            continue;
        }
        if let Some(rl) = rrl {
            match rl.check_at(src.ip(), started) {
                Verdict::Send => {}
                Verdict::Slip => {
                    slip(&mut out);
                    shared.metrics.rate_limited(true);
                }
                Verdict::Drop => {
                    shared.metrics.rate_limited(false);
                    continue;
                }
            }
        }
        if let Err(e) = socket.send_to(&out, src) {
            tracing::debug!(error = %e, client = %src, "DNS UDP send failed");
        }
        shared.metrics.record(&outcome, started.elapsed());
    }
}
