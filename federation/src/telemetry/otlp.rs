//! OTLP/gRPC export written straight from the SDK's finished spans: a batch is encoded as one
//! `ExportTraceServiceRequest` (opentelemetry-proto's `collector/trace/v1`) in one pass into one
//! buffer, the resource encoded once at start, and sent with tonic as bytes to
//! `TraceService/Export`. A gateway that traces every request ends three spans per request; the
//! generic exporter cloned each batch and built a message tree per span (a copy of every
//! attribute) before encoding it (BENCHMARKS.md, "Tracing", has what this saves).
//!
//! Must not: emit a message that differs from what opentelemetry-proto would encode for the same
//! spans (the tests decode both and compare), or panic on a value kind it does not know (a newer
//! SDK's; it is sent as its text).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf as _, BufMut as _, Bytes};
use http::uri::PathAndQuery;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends batches to one collector. The connection is made on the first export and again after
/// a failure (tonic's lazy channel).
#[derive(Debug, Clone)]
pub(super) struct OtlpExporter {
    client: tonic::client::Grpc<Channel>,
    /// The `Resource` message's fields, encoded once.
    resource: Vec<u8>,
}

impl OtlpExporter {
    pub fn new(endpoint: &str, timeout: Duration, resource: &Resource) -> Result<Self, String> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        let mut encoded = Vec::new();
        for (key, value) in resource.iter() {
            let kv = KeyValue::new(key.clone(), value.clone());
            message(&mut encoded, 1, key_value_len(&kv), |b| key_value(b, &kv));
        }
        Ok(Self {
            client: tonic::client::Grpc::new(channel),
            resource: encoded,
        })
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let request = encode_request(&self.resource, &batch);
        drop(batch);
        let mut client = self.client.clone();
        let failed = |e: String| OTelSdkError::InternalFailure(e);
        client
            .ready()
            .await
            .map_err(|e| failed(format!("collector unreachable: {e}")))?;
        client
            .unary(
                tonic::Request::new(Bytes::from(request)),
                PathAndQuery::from_static(EXPORT),
                RawCodec,
            )
            .await
            .map(drop)
            .map_err(|s| failed(format!("collector refused the batch: {s}")))
    }
}

/// Encoded protobuf bytes out; the response's content (only a partial-success notice) unread.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

// --- protobuf wire format (only what OTLP traces use) ---------------------------------------

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (70 - (v | 1).leading_zeros() as usize) / 7
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn tag(field: u32, wire: u32) -> u64 {
    u64::from(field << 3 | wire)
}

/// Bytes a length-delimited field of `len` content bytes takes.
fn delimited_len(field: u32, len: usize) -> usize {
    varint_len(tag(field, LEN)) + varint_len(len as u64) + len
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(buf, tag(field, LEN));
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A nested message of `len` bytes, written by `write` (which must write exactly `len`).
fn message(buf: &mut Vec<u8>, field: u32, len: usize, write: impl FnOnce(&mut Vec<u8>)) {
    put_varint(buf, tag(field, LEN));
    put_varint(buf, len as u64);
    let start = buf.len();
    write(buf);
    debug_assert_eq!(buf.len() - start, len, "field {field}");
}

/// A proto3 string or bytes field: absent when empty.
fn opt_bytes_len(field: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        delimited_len(field, len)
    }
}

fn put_opt_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_bytes(buf, field, bytes);
    }
}

/// A proto3 varint field: absent when zero.
fn opt_varint_len(field: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        varint_len(tag(field, VARINT)) + varint_len(v)
    }
}

fn put_opt_varint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_varint(buf, tag(field, VARINT));
        put_varint(buf, v);
    }
}

/// A proto3 fixed-width field, given as its little-endian bytes (4: `fixed32`, 8: `fixed64`):
/// absent when zero.
fn fixed_len<const N: usize>(field: u32, le: [u8; N]) -> usize {
    if le == [0; N] {
        0
    } else {
        varint_len(tag(field, fixed_wire(N))) + N
    }
}

fn put_fixed<const N: usize>(buf: &mut Vec<u8>, field: u32, le: [u8; N]) {
    if le != [0; N] {
        put_varint(buf, tag(field, fixed_wire(N)));
        buf.extend_from_slice(&le);
    }
}

fn fixed_wire(width: usize) -> u32 {
    if width == 8 { FIXED64 } else { FIXED32 }
}

// --- OTLP messages ----------------------------------------------------------------------------

/// `AnyValue`'s length; `value` is written by [`any_value`].
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Bool(b) => varint_len(tag(2, VARINT)) + varint_len(u64::from(*b)),
        Value::I64(i) => varint_len(tag(3, VARINT)) + varint_len(*i as u64),
        Value::F64(_) => varint_len(tag(4, FIXED64)) + 8,
        Value::String(s) => delimited_len(1, s.as_str().len()),
        Value::Array(a) => delimited_len(5, array_len(a)),
        other => delimited_len(1, other.as_str().len()),
    }
}

fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            put_varint(buf, tag(2, VARINT));
            put_varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            put_varint(buf, tag(3, VARINT));
            put_varint(buf, *i as u64);
        }
        Value::F64(f) => {
            put_varint(buf, tag(4, FIXED64));
            buf.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => put_bytes(buf, 1, s.as_str().as_bytes()),
        Value::Array(a) => message(buf, 5, array_len(a), |b| array(b, a)),
        other => put_bytes(buf, 1, other.as_str().as_bytes()),
    }
}

/// The `ArrayValue` of an array: each element an `AnyValue` (field 1).
fn array_values(a: &Array) -> Vec<Value> {
    match a {
        Array::Bool(v) => v.iter().map(|x| Value::Bool(*x)).collect(),
        Array::I64(v) => v.iter().map(|x| Value::I64(*x)).collect(),
        Array::F64(v) => v.iter().map(|x| Value::F64(*x)).collect(),
        Array::String(v) => v.iter().map(|x| Value::String(x.clone())).collect(),
        other => vec![Value::String(other.to_string().into())],
    }
}

fn array_len(a: &Array) -> usize {
    array_values(a)
        .iter()
        .map(|v| delimited_len(1, any_value_len(v)))
        .sum()
}

fn array(buf: &mut Vec<u8>, a: &Array) {
    for v in array_values(a) {
        message(buf, 1, any_value_len(&v), |b| any_value(b, &v));
    }
}

fn key_value_len(kv: &KeyValue) -> usize {
    delimited_len(1, kv.key.as_str().len()) + delimited_len(2, any_value_len(&kv.value))
}

fn key_value(buf: &mut Vec<u8>, kv: &KeyValue) {
    put_bytes(buf, 1, kv.key.as_str().as_bytes());
    message(buf, 2, any_value_len(&kv.value), |b| {
        any_value(b, &kv.value)
    });
}

fn attributes_len(field: u32, attributes: &[KeyValue]) -> usize {
    attributes
        .iter()
        .map(|kv| delimited_len(field, key_value_len(kv)))
        .sum()
}

fn put_attributes(buf: &mut Vec<u8>, field: u32, attributes: &[KeyValue]) {
    for kv in attributes {
        message(buf, field, key_value_len(kv), |b| key_value(b, kv));
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// `flags`: the W3C trace flags, and whether the parent (or the link) is remote.
fn flags(context: &SpanContext, remote: bool) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(context.trace_flags().to_u8()) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

/// `Status`: the code, and the description of an error.
fn status_fields(status: &Status) -> (u64, &str) {
    match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    }
}

fn status_len(status: &Status) -> usize {
    let (code, message) = status_fields(status);
    opt_bytes_len(2, message.len()) + opt_varint_len(3, code)
}

/// What a span needs beyond its own fields, worked out once: its trace state as text.
struct Prepared<'a> {
    span: &'a SpanData,
    trace_state: String,
    len: usize,
}

fn prepare(span: &SpanData) -> Prepared<'_> {
    let trace_state = span.span_context.trace_state().header();
    let mut len = delimited_len(1, 16)
        + delimited_len(2, 8)
        + opt_bytes_len(3, trace_state.len())
        + if span.parent_span_id == SpanId::INVALID {
            0
        } else {
            delimited_len(4, 8)
        }
        + opt_bytes_len(5, span.name.len())
        + opt_varint_len(6, kind(&span.span_kind))
        + fixed_len(7, nanos(span.start_time).to_le_bytes())
        + fixed_len(8, nanos(span.end_time).to_le_bytes())
        + attributes_len(9, &span.attributes)
        + opt_varint_len(10, u64::from(span.dropped_attributes_count))
        + opt_varint_len(12, u64::from(span.events.dropped_count))
        + opt_varint_len(14, u64::from(span.links.dropped_count))
        + delimited_len(15, status_len(&span.status))
        + fixed_len(
            16,
            flags(&span.span_context, span.parent_span_is_remote).to_le_bytes(),
        );
    for event in span.events.iter() {
        len += delimited_len(11, event_len(event));
    }
    for link in span.links.iter() {
        len += delimited_len(13, link_len(link));
    }
    Prepared {
        span,
        trace_state,
        len,
    }
}

fn event_len(e: &opentelemetry::trace::Event) -> usize {
    fixed_len(1, nanos(e.timestamp).to_le_bytes())
        + opt_bytes_len(2, e.name.len())
        + attributes_len(3, &e.attributes)
        + opt_varint_len(4, u64::from(e.dropped_attributes_count))
}

fn link_len(l: &opentelemetry::trace::Link) -> usize {
    delimited_len(1, 16)
        + delimited_len(2, 8)
        + opt_bytes_len(3, l.span_context.trace_state().header().len())
        + attributes_len(4, &l.attributes)
        + opt_varint_len(5, u64::from(l.dropped_attributes_count))
        + fixed_len(
            6,
            flags(&l.span_context, l.span_context.is_remote()).to_le_bytes(),
        )
}

fn put_span(buf: &mut Vec<u8>, p: &Prepared<'_>) {
    let s = p.span;
    put_bytes(buf, 1, &s.span_context.trace_id().to_bytes());
    put_bytes(buf, 2, &s.span_context.span_id().to_bytes());
    put_opt_bytes(buf, 3, p.trace_state.as_bytes());
    if s.parent_span_id != SpanId::INVALID {
        put_bytes(buf, 4, &s.parent_span_id.to_bytes());
    }
    put_opt_bytes(buf, 5, s.name.as_bytes());
    put_opt_varint(buf, 6, kind(&s.span_kind));
    put_fixed(buf, 7, nanos(s.start_time).to_le_bytes());
    put_fixed(buf, 8, nanos(s.end_time).to_le_bytes());
    put_attributes(buf, 9, &s.attributes);
    put_opt_varint(buf, 10, u64::from(s.dropped_attributes_count));
    for e in s.events.iter() {
        message(buf, 11, event_len(e), |b| {
            put_fixed(b, 1, nanos(e.timestamp).to_le_bytes());
            put_opt_bytes(b, 2, e.name.as_bytes());
            put_attributes(b, 3, &e.attributes);
            put_opt_varint(b, 4, u64::from(e.dropped_attributes_count));
        });
    }
    put_opt_varint(buf, 12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        message(buf, 13, link_len(l), |b| {
            put_bytes(b, 1, &l.span_context.trace_id().to_bytes());
            put_bytes(b, 2, &l.span_context.span_id().to_bytes());
            put_opt_bytes(b, 3, l.span_context.trace_state().header().as_bytes());
            put_attributes(b, 4, &l.attributes);
            put_opt_varint(b, 5, u64::from(l.dropped_attributes_count));
            put_fixed(
                b,
                6,
                flags(&l.span_context, l.span_context.is_remote()).to_le_bytes(),
            );
        });
    }
    put_opt_varint(buf, 14, u64::from(s.links.dropped_count));
    message(buf, 15, status_len(&s.status), |b| {
        let (code, text) = status_fields(&s.status);
        put_opt_bytes(b, 2, text.as_bytes());
        put_opt_varint(b, 3, code);
    });
    put_fixed(
        buf,
        16,
        flags(&s.span_context, s.parent_span_is_remote).to_le_bytes(),
    );
}

fn scope_len(scope: &InstrumentationScope) -> usize {
    opt_bytes_len(1, scope.name().len())
        + opt_bytes_len(2, scope.version().map_or(0, str::len))
        + scope
            .attributes()
            .map(|kv| delimited_len(3, key_value_len(kv)))
            .sum::<usize>()
}

fn put_scope(buf: &mut Vec<u8>, scope: &InstrumentationScope) {
    put_opt_bytes(buf, 1, scope.name().as_bytes());
    put_opt_bytes(buf, 2, scope.version().unwrap_or_default().as_bytes());
    for kv in scope.attributes() {
        message(buf, 3, key_value_len(kv), |b| key_value(b, kv));
    }
}

/// One `ExportTraceServiceRequest`: one `ResourceSpans` (this process), one `ScopeSpans` per
/// instrumentation scope in the batch, in order of first appearance.
pub(super) fn encode_request(resource: &[u8], batch: &[SpanData]) -> Vec<u8> {
    // Spans grouped by scope (a process has one tracer, so usually one group).
    let mut groups: Vec<(&InstrumentationScope, Vec<Prepared<'_>>)> = Vec::new();
    for span in batch {
        let scope = &span.instrumentation_scope;
        let at = match groups.iter().position(|(s, _)| *s == scope) {
            Some(at) => at,
            None => {
                groups.push((scope, Vec::with_capacity(batch.len())));
                groups.len() - 1
            }
        };
        groups[at].1.push(prepare(span));
    }
    let scope_spans_len = |(scope, spans): &(&InstrumentationScope, Vec<Prepared<'_>>)| {
        delimited_len(1, scope_len(scope))
            + spans.iter().map(|p| delimited_len(2, p.len)).sum::<usize>()
            + opt_bytes_len(3, scope.schema_url().map_or(0, str::len))
    };
    let resource_spans_len = delimited_len(1, resource.len())
        + groups
            .iter()
            .map(|g| delimited_len(2, scope_spans_len(g)))
            .sum::<usize>();
    let mut buf = Vec::with_capacity(delimited_len(1, resource_spans_len));
    message(&mut buf, 1, resource_spans_len, |b| {
        put_bytes(b, 1, resource);
        for group in &groups {
            message(b, 2, scope_spans_len(group), |b| {
                let (scope, spans) = group;
                message(b, 1, scope_len(scope), |b| put_scope(b, scope));
                for p in spans {
                    message(b, 2, p.len, |b| put_span(b, p));
                }
                put_opt_bytes(b, 3, scope.schema_url().unwrap_or_default().as_bytes());
            });
        }
    });
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use opentelemetry::trace::{
        Link, SpanContext, TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use prost::Message as _;

    /// Spans of every shape the SDK can hand over: kinds, remote and local parents, trace
    /// state, every value kind, arrays, events, links, error status, two scopes.
    fn spans() -> Vec<SpanData> {
        let finished = Arc::new(Collect::default());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Keep(finished.clone()))
            .build();
        let tracer = provider.tracer("isthmus-gateway");
        let remote = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "00f067aa0ba902b7")]).expect("state"),
        );
        let parent = opentelemetry::Context::new().with_remote_span_context(remote.clone());
        use opentelemetry::trace::{Span as _, TraceContextExt as _};
        let mut s = tracer
            .span_builder("GET")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.path", "/a/ü".to_string()),
                KeyValue::new("isthmus.try", 3),
                KeyValue::new("negative", -7),
                KeyValue::new("isthmus.retry", true),
                KeyValue::new("isthmus.shadow", false),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("empty", ""),
                KeyValue::new(
                    "clusters",
                    Value::Array(Array::String(vec!["west".into(), "south".into()])),
                ),
                KeyValue::new("ports", Value::Array(Array::I64(vec![80, 443]))),
                KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("weights", Value::Array(Array::F64(vec![0.5]))),
            ])
            .with_links(vec![Link::with_context(remote.clone())])
            .start_with_context(&tracer, &parent);
        s.add_event("retry", vec![KeyValue::new("why", "503")]);
        s.set_status(Status::error("upstream reset"));
        let child_cx = opentelemetry::Context::current_with_span(s);
        let mut child = tracer.start_with_context("try", &child_cx);
        child.set_status(Status::Ok);
        child.end();
        drop(child_cx);
        let mut server = tracer
            .span_builder("POST")
            .with_kind(SpanKind::Server)
            .start(&tracer);
        server.add_event_with_timestamp("e", SystemTime::UNIX_EPOCH, vec![]);
        server.end();
        let other = provider.tracer_with_scope(
            InstrumentationScope::builder("control")
                .with_version("1.2")
                .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
                .with_attributes([KeyValue::new("k", "v")])
                .build(),
        );
        for kind in [SpanKind::Internal, SpanKind::Producer, SpanKind::Consumer] {
            drop(other.span_builder("round").with_kind(kind).start(&other));
        }
        std::mem::take(&mut *finished.0.lock().expect("lock"))
    }

    /// Keeps every finished span.
    #[derive(Debug, Default)]
    struct Collect(std::sync::Mutex<Vec<SpanData>>);

    #[derive(Debug)]
    struct Keep(Arc<Collect>);

    impl opentelemetry_sdk::trace::SpanProcessor for Keep {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.0.lock().expect("lock").push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("isthmus-gateway")
            .with_attributes([
                KeyValue::new("isthmus.cluster", "east"),
                KeyValue::new("isthmus.instance", 7),
            ])
            .build()
    }

    /// What opentelemetry-proto builds for the same spans, grouped as [`encode_request`] does.
    fn reference(batch: Vec<SpanData>, resource: &Resource) -> ExportTraceServiceRequest {
        let attributes = ResourceAttributesWithSchema::from(resource);
        let mut groups: Vec<ScopeSpans> = Vec::new();
        for span in batch {
            let scope = span.instrumentation_scope.clone();
            let at = groups
                .iter()
                .position(|g| g.scope == Some((&scope, None).into()))
                .unwrap_or_else(|| {
                    groups.push(ScopeSpans {
                        scope: Some((&scope, None).into()),
                        spans: Vec::new(),
                        schema_url: scope.schema_url().unwrap_or_default().to_string(),
                    });
                    groups.len() - 1
                });
            groups[at].spans.push(span.into());
        }
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(ProtoResource {
                    attributes: attributes.attributes.0,
                    dropped_attributes_count: 0,
                    entity_refs: vec![],
                }),
                scope_spans: groups,
                schema_url: String::new(),
            }],
        }
    }

    #[tokio::test]
    async fn a_batch_decodes_to_what_opentelemetry_proto_builds() {
        let batch = spans();
        assert!(batch.len() >= 6, "{} spans", batch.len());
        let resource = resource();
        let exporter = OtlpExporter::new("http://127.0.0.1:1", Duration::from_secs(1), &resource)
            .expect("exporter");
        let bytes = encode_request(&exporter.resource, &batch);
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).expect("valid protobuf");
        let expected = reference(batch, &resource);
        assert_eq!(decoded, expected);
        // And byte for byte: prost writes fields in tag order, as this encoder does.
        assert_eq!(bytes, expected.encode_to_vec());
    }

    #[test]
    fn varints_take_their_minimal_length() {
        for (v, n) in [
            (0u64, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::from(u32::MAX), 5),
            (u64::MAX, 10),
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!((buf.len(), varint_len(v)), (n, n), "{v}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_collector_is_an_error_not_a_hang() {
        let exporter = OtlpExporter::new(
            "http://127.0.0.1:9",
            Duration::from_millis(500),
            &resource(),
        )
        .expect("exporter");
        let result = tokio::time::timeout(Duration::from_secs(10), exporter.export(spans()))
            .await
            .expect("the export gives up within its timeout");
        assert!(result.is_err(), "{result:?}");
    }
}
