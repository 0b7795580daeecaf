//! Body types shared by both sides: every body is streamed frame by frame (never collected), and
//! counted so the access log can report bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::accesslog::Tally;
use crate::live::Ending;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type the gateway sends.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any streamed body (hyper's `Incoming`, a counted one, ...).
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The header that carries why the gateway itself answered (no upstream response).
pub const ERROR_HEADER: &str = "x-isthmus-error";

/// A response the gateway makes itself: the status, the reason in a header and as the body.
pub fn error(status: StatusCode, reason: &str) -> Response<Body> {
    let mut response = Response::new(full(format!("{reason}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(reason) {
        headers.insert(ERROR_HEADER, v);
    }
    response
}

/// The gRPC status a gateway refusal maps to (the HTTP status it would have had otherwise).
pub fn grpc_status(status: StatusCode) -> u32 {
    match status.as_u16() {
        403 => 7,  // PERMISSION_DENIED
        404 => 12, // UNIMPLEMENTED
        429 => 8,  // RESOURCE_EXHAUSTED
        500 => 13, // INTERNAL
        503 => 14, // UNAVAILABLE
        504 => 4,  // DEADLINE_EXCEEDED
        _ => 2,    // UNKNOWN
    }
}

/// `grpc-message` text: percent-encoded as the gRPC spec asks (every byte outside visible
/// ASCII and space, and `%` itself).
pub fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A refusal the gateway answers itself for a policy (authorization, fault, limit). Plain
/// HTTP callers get [`error`] with `status`; gRPC callers get a trailers-only response (HTTP
/// 200, `grpc-status` mapped from `status`, `grpc-message`), which gRPC clients surface as the
/// call's status. Both carry the reason in `x-isthmus-error` and `retry-after` when given.
pub fn refusal(
    status: StatusCode,
    reason: &str,
    grpc: bool,
    retry_after: Option<u64>,
) -> Response<Body> {
    let mut response = if grpc {
        let mut response = Response::new(empty());
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(grpc_status(status)));
        if let Ok(v) = HeaderValue::from_str(&grpc_message(reason)) {
            headers.insert("grpc-message", v);
        }
        if let Ok(v) = HeaderValue::from_str(reason) {
            headers.insert(ERROR_HEADER, v);
        }
        response
    } else {
        error(status, reason)
    };
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Passes a body through until a new config no longer allows its exchange ([`crate::live`]):
/// then a gRPC response ends with `grpc-status` 7 (PERMISSION_DENIED) and the reason as its
/// trailers, and any other body fails (the stream is reset). A request body ([`Self::upload`])
/// fails too, which aborts the backend call reading it. Without an [`Ending`] it only passes
/// frames on. It notices the close only when polled: a stream nobody polls (its caller stopped
/// reading, its service stopped answering) is ended by [`crate::cancel`].
pub struct Revocable<B> {
    inner: B,
    ending: Option<std::sync::Arc<Ending>>,
    grpc: bool,
    /// A request body: read by the backend call's task, not the exchange's own.
    upload: bool,
    ended: bool,
}

impl<B> Revocable<B> {
    /// A response body.
    pub fn new(inner: B, ending: Option<std::sync::Arc<Ending>>, grpc: bool) -> Self {
        Self {
            inner,
            ending,
            grpc,
            upload: false,
            ended: false,
        }
    }

    /// A request body: fails once the exchange is closed.
    pub fn upload(inner: B, ending: Option<std::sync::Arc<Ending>>) -> Self {
        Self {
            upload: true,
            ..Self::new(inner, ending, false)
        }
    }
}

impl<B> HttpBody for Revocable<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let closing = match &self.ending {
            Some(ending) if self.upload => ending.poll_closed_upload(cx),
            Some(ending) => ending.poll_closed(cx),
            None => Poll::Pending,
        };
        if let Poll::Ready(closed) = closing {
            let reason = closed.to_string();
            let grpc = self.grpc;
            self.ended = true;
            if !grpc {
                return Poll::Ready(Some(Err(reason.into())));
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert(
                "grpc-status",
                HeaderValue::from(grpc_status(StatusCode::FORBIDDEN)),
            );
            if let Ok(v) = HeaderValue::from_str(&grpc_message(&reason)) {
                trailers.insert("grpc-message", v);
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a counted body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    /// Read to its end.
    Complete,
    /// It failed while being read (an upstream that died mid-response): the reason.
    Failed(String),
    /// Dropped before its end (the reader went away).
    Dropped,
}

/// Passes a body through, adding the size of every data frame to `counter`; `on_end` runs once
/// when the body ends, fails or is dropped, told which (the access log is written from there).
pub struct Counted<B> {
    inner: B,
    counter: Tally,
    on_end: Option<Box<dyn FnOnce(BodyEnd) + Send>>,
    /// Applied to the trailers, when the body ends with some.
    trailers: Option<fn(&mut http::HeaderMap)>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: Tally) -> Self {
        Self {
            inner,
            counter,
            on_end: None,
            trailers: None,
        }
    }

    /// Passes the body's trailers through `filter` (a request's trailers get the same
    /// stripping as its headers).
    pub fn filter_trailers(mut self, filter: fn(&mut http::HeaderMap)) -> Self {
        self.trailers = Some(filter);
        self
    }

    pub fn on_end(mut self, f: impl FnOnce(BodyEnd) + Send + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    fn finish(&mut self, end: BodyEnd) {
        if let Some(f) = self.on_end.take() {
            f(end);
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.finish(BodyEnd::Dropped);
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.counter.add(data.len() as u64);
                } else if let (Some(trailers), Some(filter)) = (frame.trailers_mut(), self.trailers)
                {
                    filter(trailers);
                }
            }
            Poll::Ready(None) => self.finish(BodyEnd::Complete),
            Poll::Ready(Some(Err(e))) => {
                let reason = e.to_string();
                self.finish(BodyEnd::Failed(reason));
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_grpc_refusal_is_trailers_only() {
        let r = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit of echo.demo exceeded: 100% used",
            true,
            Some(3),
        );
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "gRPC statuses travel in headers"
        );
        let h = r.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(
            h["grpc-message"],
            "rate limit of echo.demo exceeded: 100%25 used"
        );
        assert_eq!(
            h[ERROR_HEADER],
            "rate limit of echo.demo exceeded: 100% used"
        );
        assert_eq!(h["retry-after"], "3");
        assert!(
            r.body().is_end_stream(),
            "no message: the headers end the stream"
        );
    }

    #[tokio::test]
    async fn filtered_trailers_lose_what_the_filter_strips_and_data_is_counted() {
        use http_body_util::{BodyExt as _, StreamBody};

        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            "x-forwarded-client-cert",
            HeaderValue::from_static("URI=forged"),
        );
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers(trailers)),
        ];
        let entry = crate::accesslog::Entry::new(
            true,
            crate::accesslog::Side::Inbound,
            "http",
            "east".into(),
        );
        let body = Counted::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            entry.tally(crate::accesslog::Direction::In),
        )
        .filter_trailers(crate::headers::strip_identity);
        let collected = body.collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert!(!trailers.contains_key("x-forwarded-client-cert"));
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "hello");
        assert_eq!(
            entry
                .counters
                .bytes_in
                .load(std::sync::atomic::Ordering::Relaxed),
            5
        );
    }

    /// A body that fails mid-way reports why, one that ends reports it, one dropped unread says
    /// so: each exactly once.
    #[tokio::test]
    async fn a_counted_body_reports_how_it_ended() {
        let ends = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let entry = || {
            crate::accesslog::Entry::new(
                false,
                crate::accesslog::Side::Outbound,
                "http",
                "e".into(),
            )
        };
        let counted = |frames: Vec<Result<Frame<Bytes>, std::io::Error>>| {
            let ends = ends.clone();
            Counted::new(
                http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
                entry().tally(crate::accesslog::Direction::Out),
            )
            .on_end(move |end| ends.lock().expect("ends").push(end))
        };
        let cut = counted(vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err(std::io::Error::other("peer reset the stream")),
        ]);
        assert!(
            cut.collect().await.is_err(),
            "the failure reaches the reader"
        );
        let whole = counted(vec![Ok(Frame::data(Bytes::from_static(b"all")))]);
        assert!(whole.collect().await.is_ok());
        drop(counted(vec![Ok(Frame::data(Bytes::from_static(
            b"unread",
        )))]));
        assert_eq!(
            *ends.lock().expect("ends"),
            [
                BodyEnd::Failed("peer reset the stream".into()),
                BodyEnd::Complete,
                BodyEnd::Dropped
            ]
        );
    }

    /// A body that sends one frame and then waits for ever (a quiet stream).
    fn quiet_stream() -> impl HttpBody<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        use futures_util::StreamExt as _;
        let first = futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"msg")))]);
        http_body_util::StreamBody::new(first.chain(futures_util::stream::pending()))
    }

    fn closed() -> crate::live::Closed {
        crate::live::Closed {
            cause: "authorization",
            reason: "denied by policy deny-east: east matches deny rule 1".into(),
        }
    }

    #[tokio::test]
    async fn a_closed_grpc_stream_ends_with_permission_denied_trailers() {
        use http_body_util::BodyExt as _;

        let ending = std::sync::Arc::new(Ending::default());
        let mut body = Revocable::new(quiet_stream(), Some(ending.clone()), true);
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "msg");
        let closer = tokio::spawn({
            let ending = ending.clone();
            async move { ending.close(closed()) }
        });
        // The stream is quiet: only the ending wakes it.
        let last = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("woken by the ending")
            .expect("a frame")
            .expect("trailers");
        assert!(closer.await.expect("closer"));
        let trailers = last.into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "7");
        assert!(
            trailers["grpc-message"]
                .to_str()
                .expect("text")
                .contains("closed by a config change (authorization): denied by policy deny-east"),
            "{trailers:?}"
        );
        assert!(body.frame().await.is_none(), "the stream ends there");
    }

    #[tokio::test]
    async fn a_closed_http_stream_fails_so_the_stream_is_reset() {
        use http_body_util::BodyExt as _;

        let ending = std::sync::Arc::new(Ending::default());
        let mut body = Revocable::new(quiet_stream(), Some(ending.clone()), false);
        assert!(body.frame().await.is_some());
        ending.close(closed());
        let err = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("ended by the ending")
            .expect("a frame")
            .expect_err("an error");
        assert!(err.to_string().contains("(authorization)"), "{err}");
        let mut untracked = Revocable::new(quiet_stream(), None, false);
        assert!(
            untracked.frame().await.is_some(),
            "without an ending: a pass-through"
        );
    }

    #[tokio::test]
    async fn a_closed_upload_fails_and_wakes_the_task_reading_it() {
        use http_body_util::BodyExt as _;

        let ending = std::sync::Arc::new(Ending::default());
        let mut upload = Revocable::upload(quiet_stream(), Some(ending.clone()));
        assert!(upload.frame().await.is_some());
        // The backend call's task reads the upload; the exchange's own task waits too.
        let reader = tokio::spawn(async move { upload.frame().await });
        let owner = tokio::spawn({
            let ending = ending.clone();
            async move { ending.wait().await.cause }
        });
        tokio::task::yield_now().await;
        ending.close(closed());
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the reader is woken")
            .expect("task");
        let err = read.expect("a frame").expect_err("an error");
        assert!(err.to_string().contains("(authorization)"), "{err}");
        let cause = tokio::time::timeout(std::time::Duration::from_secs(5), owner)
            .await
            .expect("the owner is woken too")
            .expect("task");
        assert_eq!(cause, "authorization");
    }

    #[test]
    fn an_http_refusal_keeps_its_status() {
        let r = refusal(StatusCode::FORBIDDEN, "denied by policy p: no", false, None);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[ERROR_HEADER], "denied by policy p: no");
        assert!(!r.headers().contains_key("grpc-status"));
        assert!(!r.headers().contains_key("retry-after"));
    }

    #[test]
    fn http_statuses_map_to_grpc_statuses() {
        for (http, grpc) in [
            (503, 14),
            (504, 4),
            (429, 8),
            (403, 7),
            (404, 12),
            (500, 13),
            (418, 2),
        ] {
            let status = StatusCode::from_u16(http).expect("status");
            assert_eq!(grpc_status(status), grpc, "{http}");
        }
        assert_eq!(grpc_message("caf\u{e9}\n"), "caf%C3%A9%0A");
    }
}
