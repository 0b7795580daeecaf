//! OpenTelemetry traces: the `tracing:` config section, W3C trace context, sampling, and OTLP/gRPC
//! export (encoded from the SDK's spans in one pass, sent on the workspace's tonic) through a
//! bounded buffer whose overflow is dropped and counted. Both the federation (control-plane work) and the gateway (every sampled exchange)
//! trace through a [`Tracing`] handle.
//!
//! Must not: block or allocate on a request path that is not sampled (the decision is made on
//! the raw `traceparent` bytes before any OpenTelemetry object exists), wait for the collector,
//! or need it at start.

mod config;
mod context;
mod export;
mod otlp;

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, Sampler, SdkTracer};
use prometheus_client::metrics::counter::Counter;

pub use config::{Ratio, SamplerKind, TracingConfig};
pub use context::{Sampling, TRACEPARENT, TRACESTATE, TraceParent, format_traceparent};
pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::SpanKind;

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
    tracer: SdkTracer,
    sampling: Sampling,
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
    /// never a failed start. Must run inside the tokio runtime. `identity` goes on every span
    /// (the process's resource: cluster, instance); `dropped` counts spans lost to a full queue or
    /// a failed export.
    pub fn start(
        config: &TracingConfig,
        service: &'static str,
        identity: Vec<KeyValue>,
        dropped: Counter,
    ) -> Result<Self, TracingError> {
        let Some(endpoint) = &config.endpoint else {
            return Ok(Self::off());
        };
        let failed = |reason: String| TracingError {
            endpoint: endpoint.clone(),
            reason,
        };
        let resource = Resource::builder_empty()
            .with_service_name(service)
            .with_attributes(identity)
            .build();
        let exporter =
            otlp::OtlpExporter::new(endpoint, config.export_timeout, &resource).map_err(failed)?;
        let processor = export::start(
            exporter,
            export::Batching {
                queue_size: config.queue_size,
                batch_size: config.batch_size,
                timeout: config.export_timeout,
                endpoint: endpoint.clone(),
            },
            dropped,
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(processor)
            // Sampling is decided before a span is built (see `Sampling`).
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(resource)
            .build();
        Ok(Self {
            inner: Some(Arc::new(Inner {
                tracer: provider.tracer(service),
                sampling: Sampling::new(config),
            })),
        })
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
        if !inner.sampling.decide(caller.as_ref(), draw) {
            return None;
        }
        let context = match caller {
            Some(p) => {
                let state = headers
                    .get(TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<TraceState>().ok())
                    .unwrap_or_default();
                opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from_bytes(p.trace_id),
                    SpanId::from_bytes(p.span_id),
                    TraceFlags::SAMPLED,
                    true,
                    state,
                ))
            }
            None => opentelemetry::Context::new(),
        };
        Some(Parent {
            inner: inner.clone(),
            context,
        })
    }

    /// A new trace for work that starts here (control-plane rounds), when sampled.
    pub fn sample_root(&self) -> Option<Parent> {
        let inner = self.inner.as_ref()?;
        inner.sampling.decide(None, draw).then(|| Parent {
            inner: inner.clone(),
            context: opentelemetry::Context::new(),
        })
    }

    /// A span for control-plane work: a new trace, when sampled.
    pub fn root_span(&self, name: &'static str, attributes: Vec<KeyValue>) -> Option<TraceSpan> {
        Some(
            self.sample_root()?
                .start(name, SpanKind::Internal, attributes),
        )
    }
}

/// A random draw for a new trace's sampling decision (the SDK's thread-local generator).
fn draw() -> u64 {
    u64::from_be_bytes(RandomIdGenerator::default().new_span_id().to_bytes())
}

/// Where a sampled span goes in its trace.
pub struct Parent {
    inner: Arc<Inner>,
    context: opentelemetry::Context,
}

impl Parent {
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
        let mut builder = self
            .inner
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes);
        builder.start_time = at;
        let span = builder.start_with_context(&self.inner.tracer, &self.context);
        TraceSpan {
            span,
            inner: self.inner,
        }
    }
}

/// One sampled span; it ends when [`TraceSpan::end`] is called or when it is dropped.
pub struct TraceSpan {
    span: opentelemetry_sdk::trace::Span,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TraceSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sc = self.span.span_context();
        write!(f, "TraceSpan({:032x}/{:016x})", sc.trace_id(), sc.span_id())
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
        let sc = self.span.span_context();
        let context = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            false,
            sc.trace_state().clone(),
        ));
        Parent {
            inner: self.inner.clone(),
            context,
        }
        .start_at(name, kind, attributes, at)
    }

    /// The `traceparent` naming this span as the parent of the next hop's.
    pub fn traceparent(&self) -> HeaderValue {
        let sc = self.span.span_context();
        let text = format_traceparent(sc.trace_id().to_bytes(), sc.span_id().to_bytes());
        // 55 bytes of ASCII hex and dashes: always a valid header value.
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }

    pub fn set(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    /// Marks the span failed, with why.
    pub fn fail(&mut self, description: impl Into<std::borrow::Cow<'static, str>>) {
        self.span
            .set_status(opentelemetry::trace::Status::error(description));
    }

    /// Ends the span now (dropping it does too).
    pub fn end(mut self) {
        self.span.end();
    }
}
