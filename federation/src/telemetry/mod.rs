//! OpenTelemetry traces: the `tracing:` config section, W3C trace context, sampling, spans, and
//! OTLP/gRPC export through a bounded buffer whose overflow is dropped and counted. Both the
//! federation (control-plane work) and the gateway (every sampled exchange) trace through a
//! [`Tracing`] handle.
//!
//! A span here is what OTLP sends and nothing more: its IDs, start, kind and name, and its
//! attributes encoded as protobuf as they are set; ending it appends its encoding to the export
//! buffer. A gateway tracing every request ends two spans per request, so no span object is
//! built for a pipeline to move, clone and take apart again (the OpenTelemetry SDK's spans cost
//! a traced request about a fifth more CPU; BENCHMARKS.md, "Tracing"). Attribute keys and
//! values are the `opentelemetry` API's types.
//!
//! Must not: block or allocate on a request path that is not sampled (the decision is made on
//! the raw `traceparent` bytes before any span exists), wait for the collector, or need it at
//! start.

mod config;
mod context;
mod export;
mod otlp;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::TraceState;
use prometheus_client::metrics::counter::Counter;

pub use config::{Ratio, SamplerKind, TracingConfig};
pub use context::{Sampling, TRACEPARENT, TRACESTATE, TraceParent, format_traceparent};
pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::SpanKind;

/// Attributes a span keeps at most; more are counted as dropped (the SDK's default limit).
const MAX_ATTRIBUTES: u32 = 128;
/// Bytes a span's attributes are given at first (a gateway's exchange takes about 300).
const ATTRIBUTE_BYTES: usize = 320;

/// Why tracing could not start (a config the validation let through, or no runtime).
#[derive(Debug, thiserror::Error)]
#[error("tracing: cannot set up export to {endpoint}: {reason} (check `tracing.endpoint`)")]
pub struct TracingError {
    endpoint: String,
    reason: String,
}

/// The process's tracer; cheap to clone. Off (no `tracing.endpoint`): every call is one branch.
#[derive(Clone, Default)]
pub struct Tracing {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    buffer: Arc<export::Buffer>,
    sampling: Sampling,
}

impl Inner {
    /// The trace ID of a sampled span: the caller's, or a new trace's (made once, and only when
    /// the sampler needs it or the answer is yes). `None`: not sampled.
    fn decide(&self, caller: Option<&TraceParent>) -> Option<[u8; 16]> {
        let mut made = None;
        let new_trace = || *made.insert(context::new_trace_id());
        if !self.sampling.decide(caller, new_trace) {
            return None;
        }
        Some(match caller {
            Some(p) => p.trace_id,
            None => made.unwrap_or_else(context::new_trace_id),
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.buffer.close();
    }
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("on", &self.inner.is_some())
            .finish()
    }
}

impl Tracing {
    /// Tracing off.
    pub fn off() -> Self {
        Self::default()
    }

    /// Starts export to `config.endpoint` (off without one). The connection to the collector is
    /// made lazily, by the export task: a collector that is down at start costs dropped spans,
    /// never a failed start. Must run inside the tokio runtime. `service` names the process
    /// (`service.name`) and its spans' instrumentation scope; `identity` goes on every span
    /// (the process's resource: cluster, instance); `dropped` counts spans lost to a full queue
    /// or a failed export.
    pub fn start(
        config: &TracingConfig,
        service: &'static str,
        identity: Vec<KeyValue>,
        dropped: Counter,
    ) -> Result<Self, TracingError> {
        let Some(endpoint) = &config.endpoint else {
            return Ok(Self::off());
        };
        let mut resource = vec![KeyValue::new("service.name", service)];
        resource.extend(identity);
        let exporter = otlp::OtlpExporter::new(endpoint, config.export_timeout, &resource, service)
            .map_err(|reason| TracingError {
                endpoint: endpoint.clone(),
                reason,
            })?;
        Ok(Self::with_exporter(exporter, config, endpoint, dropped))
    }

    /// Tracing by `config`'s sampling into `exporter` (named `endpoint` in warnings).
    fn with_exporter<E: export::Exporter>(
        exporter: E,
        config: &TracingConfig,
        endpoint: &str,
        dropped: Counter,
    ) -> Self {
        let buffer = export::start(
            exporter,
            export::Batching {
                queue_size: config.queue_size,
                batch_size: config.batch_size,
                timeout: config.export_timeout,
                endpoint: endpoint.to_string(),
            },
            dropped,
        );
        Self {
            inner: Some(Arc::new(Inner {
                buffer,
                sampling: Sampling::new(config),
            })),
        }
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether a request with these headers is traced: `None` (off, or not sampled) costs a
    /// header lookup and a few comparisons. `Some` holds the parent its first span continues
    /// (the caller's `traceparent` and `tracestate`, or a new trace).
    pub fn sample(&self, headers: &HeaderMap) -> Option<Parent> {
        let inner = self.inner.as_ref()?;
        let caller = headers
            .get(TRACEPARENT)
            .and_then(|v| TraceParent::parse(v.as_bytes()));
        let trace_id = inner.decide(caller.as_ref())?;
        Some(match caller {
            Some(p) => Parent {
                inner: inner.clone(),
                trace_id,
                span_id: p.span_id,
                remote: true,
                trace_state: trace_state(headers),
            },
            None => Parent::root(inner, trace_id),
        })
    }

    /// A new trace for work that starts here (control-plane rounds), when sampled.
    pub fn sample_root(&self) -> Option<Parent> {
        let inner = self.inner.as_ref()?;
        let trace_id = inner.decide(None)?;
        Some(Parent::root(inner, trace_id))
    }

    /// A span for control-plane work: a new trace, when sampled.
    pub fn root_span(&self, name: &'static str, attributes: Vec<KeyValue>) -> Option<TraceSpan> {
        Some(
            self.sample_root()?
                .start(name, SpanKind::Internal, attributes),
        )
    }
}

/// The caller's `tracestate`, as the W3C header's text (empty when absent or malformed).
fn trace_state(headers: &HeaderMap) -> String {
    headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceState>().ok())
        .map(|s| s.header())
        .unwrap_or_default()
}

/// Where a sampled span goes in its trace.
pub struct Parent {
    inner: Arc<Inner>,
    trace_id: [u8; 16],
    /// All zero for a new trace.
    span_id: [u8; 8],
    remote: bool,
    trace_state: String,
}

impl Parent {
    fn root(inner: &Arc<Inner>, trace_id: [u8; 16]) -> Self {
        Self {
            inner: inner.clone(),
            trace_id,
            span_id: [0; 8],
            remote: false,
            trace_state: String::new(),
        }
    }

    pub fn start(self, name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>) -> TraceSpan {
        self.start_at(name, kind, attributes, None)
    }

    /// [`Parent::start`] with the span's start set to `at` (now, when `None`): for work traced
    /// after the fact.
    fn start_at(
        self,
        name: &'static str,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        at: Option<SystemTime>,
    ) -> TraceSpan {
        let mut span = TraceSpan {
            inner: self.inner,
            trace_id: self.trace_id,
            span_id: context::new_span_id(),
            parent_span_id: self.span_id,
            parent_is_remote: self.remote,
            trace_state: self.trace_state,
            name,
            kind,
            start: nanos(at.unwrap_or_else(SystemTime::now)),
            attributes: Vec::with_capacity(ATTRIBUTE_BYTES),
            count: 0,
            dropped: 0,
            error: None,
            ended: false,
        };
        for kv in &attributes {
            span.set_ref(kv);
        }
        span
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One sampled span; it ends when [`TraceSpan::end`] is called or when it is dropped.
pub struct TraceSpan {
    inner: Arc<Inner>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: [u8; 8],
    parent_is_remote: bool,
    trace_state: String,
    name: &'static str,
    kind: SpanKind,
    /// Unix nanoseconds.
    start: u64,
    /// `Span.attributes` fields, encoded as they were set.
    attributes: Vec<u8>,
    count: u32,
    dropped: u32,
    error: Option<Cow<'static, str>>,
    ended: bool,
}

impl std::fmt::Debug for TraceSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TraceSpan({:032x}/{:016x})",
            u128::from_be_bytes(self.trace_id),
            u64::from_be_bytes(self.span_id)
        )
    }
}

impl TraceSpan {
    /// A span of the same trace under this one.
    pub fn child(
        &self,
        name: &'static str,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> TraceSpan {
        self.child_since(name, kind, attributes, None)
    }

    /// [`TraceSpan::child`] started at `at` rather than now (`None`): a part of this span's
    /// work that is given a span of its own only once it is over (a failed first try).
    pub fn child_since(
        &self,
        name: &'static str,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        at: Option<SystemTime>,
    ) -> TraceSpan {
        Parent {
            inner: self.inner.clone(),
            trace_id: self.trace_id,
            span_id: self.span_id,
            remote: false,
            trace_state: self.trace_state.clone(),
        }
        .start_at(name, kind, attributes, at)
    }

    /// The `traceparent` naming this span as the parent of the next hop's.
    pub fn traceparent(&self) -> HeaderValue {
        let text = format_traceparent(self.trace_id, self.span_id);
        // 55 bytes of ASCII hex and dashes: always a valid header value.
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }

    /// Adds an attribute (a key set twice is sent twice, as the OpenTelemetry SDK does).
    pub fn set(&mut self, attribute: KeyValue) {
        self.set_ref(&attribute);
    }

    /// [`TraceSpan::set`] for a string value, without building (or copying into) a `KeyValue`.
    pub fn set_str(&mut self, key: &'static str, value: &str) {
        if self.room() {
            otlp::put_str_attribute(&mut self.attributes, key, value);
        }
    }

    fn set_ref(&mut self, attribute: &KeyValue) {
        if self.room() {
            otlp::put_attribute(&mut self.attributes, attribute);
        }
    }

    /// Whether another attribute may be kept (else it is counted as dropped).
    fn room(&mut self) -> bool {
        if self.count < MAX_ATTRIBUTES {
            self.count += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Marks the span failed, with why.
    pub fn fail(&mut self, description: impl Into<Cow<'static, str>>) {
        self.error = Some(description.into());
    }

    /// Ends the span now (dropping it does too).
    pub fn end(mut self) {
        self.finish();
    }

    /// Drops the span without sending it: the work it stood for never happened (a request
    /// handed back unsent).
    pub fn discard(mut self) {
        self.ended = true;
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let finished = otlp::Finished {
            trace_id: &self.trace_id,
            span_id: &self.span_id,
            parent_span_id: &self.parent_span_id,
            parent_is_remote: self.parent_is_remote,
            trace_state: &self.trace_state,
            name: self.name,
            kind: &self.kind,
            start: self.start,
            end: nanos(SystemTime::now()).max(self.start),
            attributes: &self.attributes,
            dropped_attributes: self.dropped,
            error: self.error.as_deref(),
        };
        self.inner.buffer.push(|buf| finished.encode(buf));
    }
}

impl Drop for TraceSpan {
    fn drop(&mut self) {
        self.finish();
    }
}
