//! Retries that cannot multiply load: which requests may be tried again (idempotent methods,
//! gRPC calls with a retryable status), a bounded replay buffer (a request body is kept only
//! when it ended within 64 KiB by the time it is sent — larger or still-streaming bodies are
//! streamed and never retried), a retry budget (Linkerd-style token bucket: each request earns a
//! fraction of a retry, plus a small floor per second), and circuit breakers that bound the
//! requests in flight to one cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::body::{Body as HttpBody, Frame};
use tokio::time::Instant;

use crate::body::{self, Body};

/// The largest request body kept for a replay.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Whether a response says the attempt failed in a way another cluster may not: a gateway
/// or upstream failure (502, 503, 504), or a trailers-only gRPC error with a retryable status.
pub fn failed_attempt(status: StatusCode, headers: &HeaderMap, grpc_statuses: &[u32]) -> bool {
    if matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    ) {
        return true;
    }
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    // RESOURCE_EXHAUSTED with a `retry-after` is a rate limit telling this caller to slow down
    // (the gRPC form of a 429): never an attempt to take elsewhere, never a health signal.
    if code == Some(8) && headers.contains_key(http::header::RETRY_AFTER) {
        return false;
    }
    code.is_some_and(|code| grpc_statuses.contains(&code))
}

/// A request kept for replay: everything needed to send it again.
pub struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// A fresh copy to send.
    pub fn request(&self) -> Request<Body> {
        let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = self
            .chunks
            .iter()
            .cloned()
            .map(|c| Ok(Frame::data(c)))
            .collect();
        if let Some(t) = &self.trailers {
            frames.push(Ok(Frame::trailers(t.clone())));
        }
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let mut req = Request::new(body::boxed(stream.map_err(|never| match never {})));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Takes what the body has ready now (never waits): a replay when it ended within
/// [`REPLAY_LIMIT`]; otherwise the request to stream as it is (what was read goes first).
pub fn prepare<B>(req: Request<B>) -> Result<Replay, Box<Request<Body>>>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<body::BoxError>,
{
    let (parts, mut incoming) = req.into_parts();
    let mut chunks = Vec::new();
    let mut size = 0;
    let mut trailers = None;
    let mut ended = incoming.is_end_stream();
    while !ended && size <= REPLAY_LIMIT {
        match incoming.frame().now_or_never() {
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    size += data.len();
                    chunks.push(data);
                }
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                }
            },
            Some(None) => ended = true,
            // A read error: let the send report it (the prefix is replayed first).
            Some(Some(Err(_))) | None => break,
        }
        if incoming.is_end_stream() {
            ended = true;
        }
    }
    if ended && size <= REPLAY_LIMIT {
        return Ok(Replay {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            chunks,
            trailers,
        });
    }
    let prefix = futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c))));
    let rest = http_body_util::BodyStream::new(incoming.map_err(Into::into));
    let stream = http_body_util::StreamBody::new(prefix.chain(rest));
    Err(Box::new(Request::from_parts(parts, body::boxed(stream))))
}

/// The retry budget: a token bucket shared by all requests of a gateway, counted in
/// thousandths of a retry (no rounding drift). It holds at most one second of the floor, so
/// over any period retries stay within `percent` of the requests plus the floor per second.
#[derive(Debug)]
pub struct Budget {
    /// (milli-tokens, last refill).
    state: Mutex<(u64, Instant)>,
    /// Retries allowed per second whatever the traffic.
    floor_per_sec: u64,
    cap: u64,
}

impl Budget {
    pub fn new(floor_per_sec: u64) -> Self {
        Self {
            state: Mutex::new((floor_per_sec * 1000, Instant::now())),
            floor_per_sec,
            // Little is saved up: a long quiet spell must not buy a retry storm later. What is
            // earned keeps flowing in with the traffic (20 % of it) and the floor.
            cap: floor_per_sec.max(1) * 1000,
        }
    }

    fn refill(&self, s: &mut (u64, Instant), now: Instant) {
        let elapsed_ms =
            u64::try_from(now.saturating_duration_since(s.1).as_millis()).unwrap_or(u64::MAX);
        if elapsed_ms == 0 {
            return;
        }
        s.0 =
            s.0.saturating_add(elapsed_ms.saturating_mul(self.floor_per_sec))
                .min(self.cap);
        s.1 = now;
    }

    /// A request was sent: it earns `percent`/100 of a retry.
    pub fn deposit(&self, percent: u32) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s, Instant::now());
        s.0 = (s.0 + u64::from(percent) * 10).min(self.cap);
    }

    /// Whether the budget has a retry now (without taking it).
    pub fn has_one(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s, Instant::now());
        s.0 >= 1000
    }

    /// Takes one retry, if the budget has one.
    pub fn withdraw(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s, Instant::now());
        if s.0 >= 1000 {
            s.0 -= 1000;
            true
        } else {
            false
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(10)
    }
}

/// Calls in flight per service and cluster, bounded by the service's `max_requests`. A call
/// counts from its send until its response body ends (a tunnel: until it is open), so long
/// streams count for as long as they hold the peer's capacity.
#[derive(Debug, Default)]
pub struct Breakers {
    /// Service → cluster → calls in flight.
    counts: Mutex<HashMap<Arc<str>, PerCluster>>,
}

type PerCluster = HashMap<Arc<str>, Arc<AtomicU32>>;

/// Counts one request in flight until dropped.
pub struct BreakerGuard(Arc<AtomicU32>);

impl Drop for BreakerGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Breakers {
    /// A slot for one more call to `service` on `cluster`, or `None` when `max` are in flight.
    pub fn enter(&self, service: &Arc<str>, cluster: &Arc<str>, max: u32) -> Option<BreakerGuard> {
        let count = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let clusters = match counts.get_mut(&**service) {
                Some(c) => c,
                None => counts.entry(service.clone()).or_default(),
            };
            match clusters.get(&**cluster) {
                Some(c) => c.clone(),
                None => clusters.entry(cluster.clone()).or_default().clone(),
            }
        };
        let prev = count.fetch_add(1, Ordering::Relaxed);
        if prev >= max {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(BreakerGuard(count))
    }

    /// Calls to `service` in flight on `cluster` now (for explain).
    pub fn in_flight(&self, service: &str, cluster: &str) -> u32 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .and_then(|c| c.get(cluster))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The default time to wait for a response when a request cannot be retried anyway.
pub fn try_timeout(replayable: bool, per_try: Duration, overall: Duration) -> Duration {
    if replayable {
        per_try.min(overall)
    } else {
        overall
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[test]
    fn which_attempts_failed() {
        let grpc = |code: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", code.parse().expect("value"));
            h
        };
        let cases = [
            (StatusCode::OK, HeaderMap::new(), false),
            (StatusCode::NOT_FOUND, HeaderMap::new(), false),
            (StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new(), false),
            (StatusCode::BAD_GATEWAY, HeaderMap::new(), true),
            (StatusCode::SERVICE_UNAVAILABLE, HeaderMap::new(), true),
            (StatusCode::GATEWAY_TIMEOUT, HeaderMap::new(), true),
            (StatusCode::OK, grpc("14"), true),
            (StatusCode::OK, grpc("13"), false),
            (StatusCode::OK, grpc("0"), false),
            (StatusCode::OK, grpc("8"), true),
            (
                StatusCode::OK,
                {
                    let mut h = grpc("8");
                    h.insert(http::header::RETRY_AFTER, "1".parse().expect("value"));
                    h
                },
                false,
            ),
        ];
        for (status, headers, want) in cases {
            assert_eq!(
                failed_attempt(status, &headers, &[14, 8]),
                want,
                "{status} {headers:?}"
            );
        }
        assert!(idempotent(&Method::GET) && idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }

    #[tokio::test]
    async fn small_finished_bodies_are_kept_and_replayed_whole() {
        let req = Request::post("http://a/b")
            .header("x", "1")
            .body(Full::new(Bytes::from_static(b"hello")))
            .expect("req");
        let replay = prepare(req).map_err(|_| ()).expect("replayable");
        for _ in 0..2 {
            let r = replay.request();
            assert_eq!(r.headers()["x"], "1");
            let body = r.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], b"hello");
        }
    }

    #[tokio::test]
    async fn large_or_unfinished_bodies_stream_and_are_not_kept() {
        let big = Request::post("http://a/b")
            .body(Full::new(Bytes::from(vec![7u8; REPLAY_LIMIT + 1])))
            .expect("req");
        let streamed = prepare(big).err().expect("too large to keep");
        let body = streamed
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body.len(), REPLAY_LIMIT + 1, "nothing lost while deciding");

        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .expect("send");
        let stream = StreamBody::new(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
        )));
        let req = Request::post("http://a/b").body(stream).expect("req");
        let streaming = prepare(req).err().expect("still streaming: not kept");
        tx.send(Ok(Frame::data(Bytes::from_static(b" second"))))
            .await
            .expect("send");
        drop(tx);
        let body = streaming
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"first second");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_share_of_traffic_plus_a_floor() {
        let b = Budget::new(10);
        // The floor: 10 at start, then no more without traffic or time.
        let mut granted = (0..50).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 10);
        // Requests at 20 % earn a retry every five, as they come: 1,000 requests interleaved
        // with the failures that spend them allow 200 retries.
        granted = 0;
        for i in 0..1000 {
            b.deposit(20);
            if i % 5 == 4 && b.withdraw() {
                granted += 1;
            }
        }
        assert_eq!(granted, 200);
        // Earned but unspent: at most the floor is kept.
        for _ in 0..1000 {
            b.deposit(20);
        }
        granted = (0..1000).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 10);
        tokio::time::advance(Duration::from_secs(2)).await;
        granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(
            granted, 10,
            "the floor refills at 10/s, one second's worth kept"
        );
    }

    #[test]
    fn breakers_bound_calls_in_flight_per_service_and_cluster() {
        let b = Breakers::default();
        let (echo, other, west, east): (Arc<str>, Arc<str>, Arc<str>, Arc<str>) = (
            "echo.demo".into(),
            "other.demo".into(),
            "west".into(),
            "east".into(),
        );
        let held: Vec<_> = (0..3)
            .map(|_| b.enter(&echo, &west, 3).expect("slot"))
            .collect();
        assert!(b.enter(&echo, &west, 3).is_none());
        assert_eq!(
            b.in_flight("echo.demo", "west"),
            3,
            "a refused entry is not counted"
        );
        assert!(
            b.enter(&other, &west, 3).is_some(),
            "another service's calls to the same cluster are not held back"
        );
        assert!(
            b.enter(&echo, &east, 3).is_some(),
            "nor calls to another cluster"
        );
        drop(held);
        assert_eq!(b.in_flight("echo.demo", "west"), 0);
        assert!(b.enter(&echo, &west, 3).is_some());
    }
}
