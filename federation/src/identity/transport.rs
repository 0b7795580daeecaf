//! tonic over our rustls configs (tonic is built without its own TLS features): a server-side
//! accept stream that performs TLS handshakes concurrently and tags each connection with the
//! caller's verified SPIFFE ID ([`PeerInfo`]), and client-side [`connect`]/[`connect_lazy`]
//! that dial TCP and handshake with a given `ClientConfig`.
//!
//! Handlers read the caller with `request.extensions().get::<PeerInfo>()`. Authorization
//! (which ID may call what) belongs to the services, not here.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, Stream, StreamExt as _};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use super::spiffe::SpiffeId;
use super::verifier::peer_id;
use super::{IdentityError, Result};

/// Handshakes in flight at once per listener; beyond it, accepting pauses (back-pressure
/// against a flood of slow or idle connections).
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Handshakes in flight at once from one source (an IPv4 address, or an IPv6 /64, which one
/// host usually holds whole); beyond it, that source's new connections are closed at once, so
/// one host cannot take every handshake slot of a listener and lock everyone else out.
pub const MAX_PENDING_HANDSHAKES_PER_SOURCE: usize = 64;
/// Pause after an accept error such as EMFILE before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// HTTP/2 keepalive on client channels: a dead peer is noticed within interval + timeout.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of an accepted connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The TCP peer address.
    pub remote: SocketAddr,
    /// The verified SPIFFE ID of the client certificate; `None` when the port does not
    /// require one and none was sent.
    pub id: Option<SpiffeId>,
}

/// An accepted, handshaken server-side TLS connection.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl PeerStream {
    /// Who connected.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }

    /// The TLS stream (e.g. to read the negotiated ALPN).
    pub fn get_ref(&self) -> &tokio_rustls::server::TlsStream<TcpStream> {
        &self.inner
    }
}

impl std::fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStream")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

struct Incoming {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    caps: Caps,
    pending: FuturesUnordered<BoxFuture<'static, (IpAddr, Option<PeerStream>)>>,
    /// Handshakes in flight per source (see [`source_of`]); no entry at zero.
    per_source: HashMap<IpAddr, usize>,
}

/// How many handshakes may be in flight at once on a listener, and from one source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    pub total: usize,
    pub per_source: usize,
}

/// What the per-source cap counts by: an IPv4 address (IPv4-mapped IPv6 included), or the
/// /64 an IPv6 address is in. The gateway's plaintext local listeners count by it too.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

impl Incoming {
    /// Counts a handshake from `source` as started, unless that source is at its cap.
    fn admit(&mut self, source: IpAddr) -> bool {
        let n = self.per_source.entry(source).or_insert(0);
        if *n >= self.caps.per_source {
            return false;
        }
        *n += 1;
        true
    }

    fn finished(&mut self, source: IpAddr) {
        if let std::collections::hash_map::Entry::Occupied(mut n) = self.per_source.entry(source) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

/// Accepts TCP connections on `listener` and yields those whose TLS handshake (under
/// `config`) completes within `handshake_timeout`. Handshakes run concurrently, so a slow
/// client never delays others; failed or timed-out handshakes are logged at debug and
/// skipped. At most [`MAX_PENDING_HANDSHAKES`] are in flight (then accepting pauses) and
/// [`MAX_PENDING_HANDSHAKES_PER_SOURCE`] from one source (then its new connections are
/// closed). Accept errors (e.g. out of file descriptors) are logged and retried after a short
/// pause, never yielded. For `tonic::transport::Server::builder().serve_with_incoming(..)`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
) -> impl Stream<Item = Result<PeerStream, io::Error>> + Send + 'static {
    let caps = Caps {
        total: MAX_PENDING_HANDSHAKES,
        per_source: MAX_PENDING_HANDSHAKES_PER_SOURCE,
    };
    tls_incoming_capped(listener, config, handshake_timeout, caps)
}

/// [`tls_incoming`] with the handshake caps given.
pub(crate) fn tls_incoming_capped(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    caps: Caps,
) -> impl Stream<Item = Result<PeerStream, io::Error>> + Send + 'static {
    let state = Incoming {
        listener,
        acceptor: TlsAcceptor::from(config),
        handshake_timeout,
        caps,
        pending: FuturesUnordered::new(),
        per_source: HashMap::new(),
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            tokio::select! {
                Some((source, done)) = st.pending.next(), if !st.pending.is_empty() => {
                    st.finished(source);
                    if let Some(stream) = done {
                        return Some((Ok(stream), st));
                    }
                }
                accepted = st.listener.accept(), if st.pending.len() < st.caps.total => {
                    match accepted {
                        Ok((tcp, remote)) => {
                            let source = source_of(remote.ip());
                            if !st.admit(source) {
                                // Dropped: closed at once, before any TLS work.
                                tracing::debug!(%remote, limit = st.caps.per_source, "too many TLS handshakes in flight from this source; connection closed");
                                continue;
                            }
                            let fut = handshake(st.acceptor.clone(), tcp, remote, st.handshake_timeout);
                            st.pending.push(fut.map(move |done| (source, done)).boxed());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a connection failed; retrying");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                    }
                }
            }
        }
    })
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
) -> Option<PeerStream> {
    // Best effort: gRPC messages are small and latency-sensitive.
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            // The verifier has already checked the chain; this only reads the ID back out.
            let id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| peer_id(certs).ok());
            tracing::debug!(%remote, peer.id = ?id.as_ref().map(ToString::to_string), "TLS connection accepted");
            Some(PeerStream {
                inner: tls,
                info: PeerInfo { remote, id },
            })
        }
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%remote, timeout_ms = timeout.as_millis() as u64, "TLS handshake timed out");
            None
        }
    }
}

/// Dials `addr` (`host:port`) over TLS with `config` and returns a ready gRPC channel.
/// `connect_timeout` bounds TCP connect plus the TLS handshake. The channel reconnects by
/// itself (with the same config) when the connection drops.
pub async fn connect(
    addr: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel> {
    let (endpoint, connector) = prepare(addr, config, connect_timeout)?;
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| IdentityError::Connect {
            addr: addr.to_owned(),
            source,
        })
}

/// Like [`connect`], but connects on first use.
pub fn connect_lazy(
    addr: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel> {
    let (endpoint, connector) = prepare(addr, config, connect_timeout)?;
    Ok(endpoint.connect_with_connector_lazy(connector))
}

type Connector = tower::util::ServiceFn<
    Box<
        dyn FnMut(
                Uri,
            ) -> BoxFuture<
                'static,
                io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>,
            > + Send,
    >,
>;

fn prepare(
    addr: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<(Endpoint, Connector)> {
    let invalid = |reason: String| IdentityError::InvalidAddress {
        addr: addr.to_owned(),
        reason,
    };
    // Plain `http` scheme: tonic's own TLS is not compiled in; we supply the TLS below.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let uri = endpoint.uri();
    if uri.port_u16().is_none() || uri.path() != "/" {
        return Err(invalid("a port is required and nothing after it".into()));
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // Sent as SNI only; the SPIFFE verifier ignores it (see `verifier::SpiffeServerVerifier`).
    let server_name = ServerName::try_from(host.to_owned())
        .or_else(|_| ServerName::try_from("isthmus.invalid"))
        .map_err(|e| invalid(e.to_string()))?;
    let target = addr.to_owned();
    let tls = TlsConnector::from(config);
    let dial: Box<dyn FnMut(Uri) -> BoxFuture<'static, _> + Send> = Box::new(move |_uri: Uri| {
        let (target, tls, server_name) = (target.clone(), tls.clone(), server_name.clone());
        async move {
            let attempt = async {
                let tcp = TcpStream::connect(target.as_str()).await?;
                let _ = tcp.set_nodelay(true);
                tls.connect(server_name, tcp).await
            };
            match tokio::time::timeout(connect_timeout, attempt).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(e)) => {
                    tracing::debug!(addr = %target, error = %e, "TLS connect failed");
                    Err(e)
                }
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TCP connect + TLS handshake to {target} took longer than {connect_timeout:?}"),
                )),
            }
        }
        .boxed()
    });
    Ok((endpoint, tower::service_fn(dial)))
}
