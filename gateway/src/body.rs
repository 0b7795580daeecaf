//! Body types shared by both sides: every body is streamed frame by frame (never collected), and
//! counted so the access log can report bytes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

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

/// Passes a body through, adding the size of every data frame to `counter`; `on_end` runs once
/// when the body ends, fails or is dropped (the access log is written from there).
pub struct Counted<B> {
    inner: B,
    counter: Arc<AtomicU64>,
    on_end: Option<Box<dyn FnOnce() + Send>>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            counter,
            on_end: None,
        }
    }

    pub fn on_end(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    fn finish(&mut self) {
        if let Some(f) = self.on_end.take() {
            f();
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
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
