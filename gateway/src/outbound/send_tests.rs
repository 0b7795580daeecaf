//! The send loop with real parts: TLS HTTP/2 peer gateways on loopback (one silent, one that
//! answers), the real pool, health and retry state. What is proven: a try waiting on a cluster
//! that the probes judge down moves on at once (a replayable request) or fails fast with the
//! reason (one that is not), long before its per-try timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_federation::identity::{
    Accept, Ca, CertStore, Kek, SpiffeClientVerifier, SpiffeId, TrustStore, tls,
};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::{Outbound, Resolved};
use crate::accesslog::{Entry, Side};
use crate::body;
use crate::metrics::ResultLabels;
use crate::table::{Backend, Import, PeerGateway, Snapshot, Target};

fn credential(ca: &Ca, name: &str) -> CertStore {
    let id = SpiffeId::gateway(ca.trust_domain(), name).expect("id");
    let (cert, key) = ca
        .issue_local(&id, Duration::from_secs(3600))
        .expect("leaf");
    let store = CertStore::new();
    store.set_from_pem(&cert.chain_pem, &key).expect("pem");
    store
}

/// A peer gateway `gw-1` of `ca`'s cluster: answers every request with `answer`'s text after
/// its delay, or never answers at all (`None`: a silent cluster whose connection stays up).
/// Requests abandoned before their answer (their stream reset) are counted in `abandoned`.
pub(super) async fn peer(
    ca: &Ca,
    trust: TrustStore,
    answer: Option<(&'static str, Duration)>,
    abandoned: Arc<AtomicUsize>,
) -> Arc<str> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let verifier = SpiffeClientVerifier::new(trust, Accept::Any).into_arc();
    let config =
        tls::server_config(&credential(ca, "gw-1"), verifier, &[tls::ALPN_H2]).expect("config");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = TlsAcceptor::from(config.clone());
            let abandoned = abandoned.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |_req| {
                    let abandoned = abandoned.clone();
                    async move {
                        let guard = Abandoned(Some(abandoned));
                        let Some((text, delay)) = answer else {
                            return std::future::pending().await;
                        };
                        tokio::time::sleep(delay).await;
                        guard.answered();
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body::full(text)))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    address.into()
}

/// Counts a request dropped before it was answered.
struct Abandoned(Option<Arc<AtomicUsize>>);

impl Abandoned {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(n) = &self.0 {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(super) fn backend(cluster: &str, region: &str, address: &Arc<str>) -> Backend {
    Backend {
        cluster: cluster.into(),
        trust_domain: format!("{cluster}.mesh").into(),
        region: region.into(),
        zone: "".into(),
        gateways: vec![PeerGateway {
            name: "gw-1".into(),
            address: address.clone(),
            zone: "".into(),
        }],
        healthy: 1,
        weight: 1,
        stale: false,
        confirmed_at: Instant::now(),
    }
}

/// East's outbound side, with `demo/echo` served by west (same region: tried first, silent)
/// and south (another region: answers); and west's gateway address.
async fn east() -> (Arc<Outbound>, Arc<Snapshot>, Resolved, Arc<str>) {
    let (outbound, snap, resolved, west, _) = east_with(
        None,
        Some(("south", Duration::ZERO)),
        crate::retry::Budget::default(),
    )
    .await;
    (outbound, snap, resolved, west)
}

/// East as above, with west's and south's answers and the retry budget given; and the
/// requests west saw abandoned.
pub(super) async fn east_with(
    west_answer: Option<(&'static str, Duration)>,
    south_answer: Option<(&'static str, Duration)>,
    budget: crate::retry::Budget,
) -> (
    Arc<Outbound>,
    Arc<Snapshot>,
    Resolved,
    Arc<str>,
    Arc<AtomicUsize>,
) {
    let kek = Kek::generate().expect("kek");
    let day = Duration::from_secs(86_400);
    let ca = |td: &str| Ca::generate(td.parse().expect("td"), &kek, day).expect("ca");
    let (east, west, south) = (ca("east.mesh"), ca("west.mesh"), ca("south.mesh"));
    let trust = TrustStore::new();
    for c in [&east, &west, &south] {
        trust.set(c.bundle());
    }
    let west_abandoned = Arc::new(AtomicUsize::new(0));
    let west_gw = peer(&west, trust.clone(), west_answer, west_abandoned.clone()).await;
    let south_gw = peer(&south, trust.clone(), south_answer, Arc::default()).await;
    let import = Import::new(
        "echo.demo".into(),
        Vec::new(),
        vec![
            backend("west", "eu", &west_gw),
            backend("south", "us", &south_gw),
        ],
    );
    let snap = Arc::new(Snapshot {
        cluster: "east".into(),
        region: "eu".into(),
        ..Default::default()
    });
    let (_tx, table) = tokio::sync::watch::channel(snap.clone());
    let outbound = Outbound::for_tests(table, credential(&east, "gw-1"), trust, budget);
    let resolved = Resolved {
        target: Target {
            import: Arc::new(import),
            pinned: None,
        },
        port: 8080,
        authority: "echo.demo:8080".into(),
    };
    (outbound, snap, resolved, west_gw, west_abandoned)
}

pub(super) fn request(method: Method) -> Request<body::Body> {
    let mut req = Request::new(body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = "http://echo.demo:8080/".parse().expect("uri");
    *req.version_mut() = Version::HTTP_2;
    req
}

/// Probes judge west's gateway down `after` from now (two misses).
async fn judge_down_after(outbound: &Outbound, gateway: &Arc<str>, after: Duration) {
    tokio::time::sleep(after).await;
    outbound.health.probed(gateway, false);
    outbound.health.probed(gateway, false);
}

/// Well under the per-try timeout (15 s by default): the request did not wait it out.
const PROMPT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayable_request_waiting_on_a_cluster_judged_down_moves_on_at_once() {
    let (outbound, snap, resolved, west) = east().await;
    let (order, policy) = outbound.plan(&snap, &resolved);
    assert_eq!(order[0].cluster.as_ref(), "west", "west is tried first");
    let Ok(replay) = crate::retry::prepare(request(Method::GET)) else {
        panic!("a bodiless GET is kept for replay");
    };
    let mut entry = Entry::new(false, Side::Outbound, "http", "east".into());
    let started = Instant::now();
    let send = outbound.send(
        &snap,
        &resolved,
        &order,
        &policy,
        replay.request(),
        Some(&replay),
        &mut entry,
    );
    let (sent, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(
            send,
            judge_down_after(&outbound, &west, Duration::from_millis(300))
        )
    })
    .await
    .expect("the request waited out its per-try timeout on the silent cluster");
    let took = started.elapsed();
    let text = ok_body(sent).await;
    assert_eq!(&text[..], b"south");
    assert!(took < PROMPT, "it moved on only after {took:?}");
    assert_eq!(entry.failed_over_from, [Arc::<str>::from("west")]);
    let reason = entry.reason.unwrap_or_default();
    assert!(reason.contains("judged down"), "{reason}");
    let moved = outbound
        .metrics
        .tries_judged_down
        .get_or_create(&ResultLabels { result: "moved" })
        .get();
    assert_eq!(moved, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_be_replayed_fails_fast_with_the_reason() {
    let (outbound, snap, resolved, west) = east().await;
    let (order, policy) = outbound.plan(&snap, &resolved);
    let mut entry = Entry::new(false, Side::Outbound, "http", "east".into());
    let started = Instant::now();
    let send = outbound.send(
        &snap,
        &resolved,
        &order,
        &policy,
        request(Method::POST),
        None,
        &mut entry,
    );
    let (sent, ()) = tokio::time::timeout(Duration::from_secs(40), async {
        tokio::join!(
            send,
            judge_down_after(&outbound, &west, Duration::from_millis(300))
        )
    })
    .await
    .expect("the request waited out its timeout on the silent cluster");
    let took = started.elapsed();
    let refused = sent.err().expect("not sent elsewhere");
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    let said = refused.headers()[body::ERROR_HEADER]
        .to_str()
        .expect("text")
        .to_string();
    assert!(
        said.contains("west was judged down") && said.contains("not idempotent"),
        "{said}"
    );
    assert!(took < PROMPT, "it failed only after {took:?}");
    assert_eq!(entry.status, 502);
    assert_eq!(entry.reason.as_deref(), Some(said.as_str()));
}

/// The body of a 200 answer to `Outbound::send`; fails the test on anything else.
pub(super) async fn ok_body(
    sent: Result<
        (
            http::Response<hyper::body::Incoming>,
            crate::retry::BreakerGuard,
        ),
        http::Response<crate::body::Body>,
    >,
) -> bytes::Bytes {
    let (response, _in_flight) = sent.map_err(|r| r.status()).expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}
