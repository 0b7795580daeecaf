//! Spans of the request path (OpenTelemetry, through [`isthmus_federation::telemetry`]): the
//! outbound side makes a client span per exchange, which stands for its first try too (the
//! first try's request carries a `traceparent` naming it); a failed first try, a later try, a
//! hedge and a shadow copy get a client span of their own under it. The inbound side makes a
//! server span, child of the span its request named, and the request reaching the service
//! carries a `traceparent` naming it. So a request answered at once is one span on each side.
//! Attributes follow the OpenTelemetry HTTP semantic conventions, plus `isthmus.*` ones.
//!
//! Must not: cost an unsampled request more than [`Tracing::sample`]'s header check (every span
//! here exists only after a positive decision), or trust a `traceparent` for anything but
//! linking spans (it is no identity: the caller's value is replaced on every hop it is traced).

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Method, Request, Version, header};
use isthmus_federation::telemetry::{KeyValue, SpanKind, TRACEPARENT, TraceSpan, Tracing};

use crate::accesslog::{Entry, Side};

/// A method's name for span names and attributes; other methods are `_OTHER` (semconv).
fn method(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_3 => "3",
        _ => "2",
    }
}

/// The first span of an exchange on `side`, when the request is sampled: a client span for
/// the outbound side, continuing the local caller's trace; a server span for the inbound side,
/// continuing the calling gateway's try.
pub fn exchange<B>(tracing: &Tracing, side: Side, req: &Request<B>) -> Option<Box<TraceSpan>> {
    let parent = tracing.sample(req.headers())?;
    let m = method(req.method());
    let kind = match side {
        Side::Outbound => SpanKind::Client,
        Side::Inbound => SpanKind::Server,
    };
    let mut span = parent.start(m, kind, Vec::new());
    span.set(KeyValue::new("http.request.method", m));
    span.set(KeyValue::new(
        "network.protocol.version",
        version(req.version()),
    ));
    span.set_str("url.path", req.uri().path());
    let host = req.uri().authority().map(|a| a.host()).or_else(|| {
        let h = req.headers().get(header::HOST)?.to_str().ok()?;
        Some(host_of(h))
    });
    if let Some(host) = host {
        span.set_str("server.address", host);
    }
    Some(Box::new(span))
}

/// The host of an authority (`host[:port]`, `[v6]:port`).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// What a try is, for its span.
pub struct Try<'a> {
    /// 1 for the first try sent.
    pub number: u32,
    /// A cluster was left before this try.
    pub failover: bool,
    pub shadow: bool,
    pub hedge: bool,
    pub cluster: &'a Arc<str>,
    /// The peer gateway's address, when it is known yet.
    pub gateway: Option<&'a Arc<str>>,
}

impl Try<'_> {
    /// A client span for this try under `exchange`, started at `at` (now when `None`).
    fn span(&self, exchange: &TraceSpan, at: Option<SystemTime>) -> TraceSpan {
        let mut span = exchange.child_since("try", SpanKind::Client, Vec::new(), at);
        span.set(KeyValue::new("isthmus.try", i64::from(self.number)));
        span.set(KeyValue::new("isthmus.retry", self.number > 1));
        span.set(KeyValue::new("isthmus.failover", self.failover));
        span.set(KeyValue::new("isthmus.shadow", self.shadow));
        span.set(KeyValue::new("isthmus.hedge", self.hedge));
        span.set_str("isthmus.destination.cluster", self.cluster);
        if self.number > 1 {
            // Only on a resent request (HTTP semantic conventions: conditionally required).
            let resent = i64::from(self.number - 1);
            span.set(KeyValue::new("http.request.resend_count", resent));
        }
        if let Some(gateway) = self.gateway {
            set_peer(&mut span, gateway);
        }
        span
    }
}

/// A client span of its own for one try under the exchange's span (a hedge, a shadow copy);
/// [`inject`] it into the try's request.
pub fn start_try(exchange: &TraceSpan, t: Try<'_>) -> TraceSpan {
    t.span(exchange, None)
}

/// How a try of the exchange's own request is traced.
pub enum TrySpan {
    /// The first try: the exchange's span stands for it and is the parent of the peer's inbound
    /// span, so a request answered at once costs one span on this side. Only if it fails does
    /// it get a span of its own, made then, from what is kept here.
    First {
        started: SystemTime,
        failover: bool,
        cluster: Arc<str>,
        gateway: Option<Arc<str>>,
    },
    /// A later try: a span of its own under the exchange's, from the start.
    Own { span: TraceSpan, number: u32 },
}

impl TrySpan {
    /// Starts tracing try `t` of `exchange`, and names its span in the try's request headers as
    /// the parent of the peer's.
    pub fn begin(exchange: &TraceSpan, t: Try<'_>, headers: &mut HeaderMap) -> TrySpan {
        if t.number == 1 && !t.hedge && !t.shadow {
            inject(exchange, headers);
            return TrySpan::First {
                started: SystemTime::now(),
                failover: t.failover,
                cluster: Arc::clone(t.cluster),
                gateway: t.gateway.cloned(),
            };
        }
        let number = t.number;
        let span = start_try(exchange, t);
        inject(&span, headers);
        TrySpan::Own { span, number }
    }

    /// The try's request was handed back unsent (its connection was closing) and goes again
    /// under the same number: it leaves no span.
    pub fn unsent(self) {
        if let TrySpan::Own { span, .. } = self {
            span.discard();
        }
    }

    /// Ends the try: answered with `status`, or failed when `error` says why. The exchange's
    /// span records which try answered (and, for the first, the peer gateway it went through).
    pub fn end(
        self,
        mut exchange: Option<&mut TraceSpan>,
        status: Option<u16>,
        error: Option<&str>,
    ) {
        let number = match self {
            TrySpan::Own { span, number } => {
                end_try(Some(span), status, error);
                number
            }
            TrySpan::First { gateway, .. } if error.is_none() => {
                if let (Some(exchange), Some(gateway)) = (exchange.as_deref_mut(), gateway) {
                    set_peer(exchange, &gateway);
                }
                1
            }
            TrySpan::First {
                started,
                failover,
                cluster,
                gateway,
            } => {
                let Some(exchange) = exchange else { return };
                let t = Try {
                    number: 1,
                    failover,
                    shadow: false,
                    hedge: false,
                    cluster: &cluster,
                    gateway: gateway.as_ref(),
                };
                end_try(Some(t.span(exchange, Some(started))), status, error);
                return;
            }
        };
        if let (Some(exchange), None) = (exchange, error) {
            exchange.set(KeyValue::new("isthmus.try", i64::from(number)));
        }
    }
}

/// The try number of a hedge: it is sent while the first try still waits.
pub const HEDGE_TRY: u32 = 2;

/// Records on the exchange's span that a hedge ([`HEDGE_TRY`]) answered it.
pub fn hedge_won(exchange: &mut TraceSpan) {
    exchange.set(KeyValue::new("isthmus.try", i64::from(HEDGE_TRY)));
    exchange.set(KeyValue::new("isthmus.hedge", true));
}

/// `network.peer.address` and `network.peer.port`: a peer gateway's `host:port`.
pub fn set_peer(span: &mut TraceSpan, gateway: &str) {
    span.set_str("network.peer.address", host_of(gateway));
    let port = gateway
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<i64>().ok());
    if let Some(port) = port {
        span.set(KeyValue::new("network.peer.port", port));
    }
}

/// Names `span` as the parent of the next hop's. The value is new on every request, so HPACK
/// must never index it: it would only evict the headers that repeat from the peers' tables.
pub fn inject(span: &TraceSpan, headers: &mut HeaderMap) {
    let mut value = span.traceparent();
    value.set_sensitive(true);
    headers.insert(TRACEPARENT, value);
}

/// Ends a try's own span: answered with `status` (a failed try when `error` says why).
pub fn end_try(span: Option<TraceSpan>, status: Option<u16>, error: Option<&str>) {
    let Some(mut span) = span else { return };
    if let Some(s) = status {
        span.set(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    if let Some(why) = error {
        match status {
            Some(s) => span.set_str("error.type", &s.to_string()),
            None => span.set_str("error.type", "isthmus.try_failed"),
        }
        span.fail(why.to_string());
    }
    span.end();
}

/// Ends an exchange's span from its access-log entry: status, service, clusters, failure.
pub fn finish(mut span: TraceSpan, entry: &Entry) {
    if entry.status != 0 {
        span.set(KeyValue::new(
            "http.response.status_code",
            i64::from(entry.status),
        ));
    }
    if let Some(s) = &entry.service {
        span.set_str("isthmus.service", s);
    }
    if !entry.src_cluster.is_empty() {
        span.set_str("isthmus.source.cluster", &entry.src_cluster);
    }
    if let Some(c) = &entry.dst_cluster {
        span.set_str("isthmus.destination.cluster", c);
    }
    if entry.shadow {
        span.set(KeyValue::new("isthmus.shadow", true));
    }
    if !entry.failed_over_from.is_empty() {
        let from: Vec<String> = entry
            .failed_over_from
            .iter()
            .map(|c| c.to_string())
            .collect();
        span.set_str("isthmus.failed_over_from", &from.join(","));
    }
    // Client spans fail from 4xx, server spans from 5xx (HTTP semantic conventions).
    let threshold = match entry.side {
        Side::Outbound => 400,
        Side::Inbound => 500,
    };
    if entry.failed || entry.status == 0 || entry.status >= threshold {
        let why = entry
            .reason
            .clone()
            .unwrap_or_else(|| format!("status {}", entry.status));
        if entry.status == 0 {
            span.set_str("error.type", "isthmus.no_response");
        } else {
            span.set_str("error.type", &entry.status.to_string());
        }
        span.fail(why);
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_without_ports_or_brackets() {
        assert_eq!(
            host_of("echo.demo.svc.clusterset.local:8080"),
            "echo.demo.svc.clusterset.local"
        );
        assert_eq!(host_of("echo.demo"), "echo.demo");
        assert_eq!(host_of("[::1]:15008"), "::1");
        assert_eq!(host_of("127.0.0.1:15008"), "127.0.0.1");
    }

    #[test]
    fn tracing_off_or_unsampled_makes_no_span() {
        let req = Request::builder()
            .uri("/")
            .header(
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(())
            .expect("request");
        assert!(exchange(&Tracing::off(), Side::Outbound, &req).is_none());
    }
}
