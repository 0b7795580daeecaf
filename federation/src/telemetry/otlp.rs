//! OTLP/gRPC export, written by hand: a span is encoded as an OTLP `Span` message when it ends
//! (its attributes as they are set), a batch is those encodings one after another, and an export
//! frames a batch as one `ExportTraceServiceRequest` (opentelemetry-proto's
//! `collector/trace/v1`: this process's resource and instrumentation scope, encoded once at
//! start) and sends it with tonic as bytes to `TraceService/Export`. No span object is built,
//! moved or copied on the way (BENCHMARKS.md, "Tracing", has what that saves against the SDK's
//! pipeline).
//!
//! Must not: emit a message that differs from what prost encodes for the same OTLP message (the
//! tests decode ours and compare byte for byte), or panic on a value kind it does not know (a
//! newer API's; it is sent as its text).

use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use http::uri::PathAndQuery;
use opentelemetry::trace::SpanKind;
use opentelemetry::{Array, KeyValue, Value};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use super::export::{Batch, Exporter};

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends batches to one collector. The connection is made on the first export and again after
/// a failure (tonic's lazy channel).
#[derive(Debug, Clone)]
pub(super) struct OtlpExporter {
    client: tonic::client::Grpc<Channel>,
    /// The `Resource` message's fields, encoded once.
    resource: Vec<u8>,
    /// The `InstrumentationScope` message's fields, encoded once.
    scope: Vec<u8>,
}

impl OtlpExporter {
    /// An exporter to `endpoint` for a process described by `resource`, whose spans come from the
    /// instrumentation scope `scope`.
    pub fn new(
        endpoint: &str,
        timeout: Duration,
        resource: &[KeyValue],
        scope: &str,
    ) -> Result<Self, String> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        Ok(Self {
            client: tonic::client::Grpc::new(channel),
            resource: encode_resource(resource),
            scope: encode_scope(scope),
        })
    }
}

impl Exporter for OtlpExporter {
    async fn export(&self, batch: Batch) -> Result<(), String> {
        let request = encode_request(&self.resource, &self.scope, &batch.spans);
        drop(batch);
        let mut client = self.client.clone();
        client
            .ready()
            .await
            .map_err(|e| format!("collector unreachable: {e}"))?;
        client
            .unary(
                tonic::Request::new(Bytes::from(request)),
                PathAndQuery::from_static(EXPORT),
                RawCodec,
            )
            .await
            .map(drop)
            .map_err(|s| format!("collector refused the batch: {s}"))
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

/// Field number of `Span.attributes`.
const SPAN_ATTRIBUTES: u32 = 9;

/// Appends one `KeyValue` message in field `field`: `key`, and an `AnyValue` of `value_len`
/// bytes that `value` writes.
fn put_key_value_with(
    buf: &mut Vec<u8>,
    field: u32,
    key: &str,
    value_len: usize,
    value: impl FnOnce(&mut Vec<u8>),
) {
    let len = opt_bytes_len(1, key.len()) + delimited_len(2, value_len);
    message(buf, field, len, |b| {
        put_opt_bytes(b, 1, key.as_bytes());
        message(b, 2, value_len, value);
    });
}

fn put_key_value(buf: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    let value_len = any_value_len(&kv.value);
    put_key_value_with(buf, field, kv.key.as_str(), value_len, |b| {
        any_value(b, &kv.value)
    });
}

/// Appends one `Span.attributes` field.
pub(super) fn put_attribute(buf: &mut Vec<u8>, kv: &KeyValue) {
    put_key_value(buf, SPAN_ATTRIBUTES, kv);
}

/// [`put_attribute`] for a string value, with no `KeyValue` (nor a copy of the value) built.
pub(super) fn put_str_attribute(buf: &mut Vec<u8>, key: &str, value: &str) {
    let value_len = delimited_len(1, value.len());
    put_key_value_with(buf, SPAN_ATTRIBUTES, key, value_len, |b| {
        put_bytes(b, 1, value.as_bytes())
    });
}

fn encode_resource(attributes: &[KeyValue]) -> Vec<u8> {
    let mut buf = Vec::new();
    for kv in attributes {
        put_key_value(&mut buf, 1, kv);
    }
    buf
}

fn encode_scope(name: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    put_opt_bytes(&mut buf, 1, name.as_bytes());
    buf
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

/// A span as it ends: its fields, its attributes already encoded.
pub(super) struct Finished<'a> {
    pub trace_id: &'a [u8; 16],
    pub span_id: &'a [u8; 8],
    /// All zero: none (a new trace).
    pub parent_span_id: &'a [u8; 8],
    pub parent_is_remote: bool,
    pub trace_state: &'a str,
    pub name: &'a str,
    pub kind: &'a SpanKind,
    /// Unix nanoseconds.
    pub start: u64,
    pub end: u64,
    /// `Span.attributes` fields, one after another.
    pub attributes: &'a [u8],
    pub dropped_attributes: u32,
    /// The status: unset when `None`, else an error and why.
    pub error: Option<&'a str>,
}

impl Finished<'_> {
    fn status_len(&self) -> usize {
        self.error
            .map_or(0, |why| opt_bytes_len(2, why.len()) + opt_varint_len(3, 2))
    }

    /// `flags`: the W3C trace flags (sampled: only sampled spans exist) and whether the parent is
    /// remote.
    fn flags(&self) -> u32 {
        const SAMPLED: u32 = 0x1;
        const HAS_IS_REMOTE: u32 = 0x100;
        const IS_REMOTE: u32 = 0x200;
        SAMPLED | HAS_IS_REMOTE | if self.parent_is_remote { IS_REMOTE } else { 0 }
    }

    /// The `Span` message's length.
    fn len(&self) -> usize {
        delimited_len(1, 16)
            + delimited_len(2, 8)
            + opt_bytes_len(3, self.trace_state.len())
            + if *self.parent_span_id == [0; 8] {
                0
            } else {
                delimited_len(4, 8)
            }
            + opt_bytes_len(5, self.name.len())
            + opt_varint_len(6, kind(self.kind))
            + fixed_len(7, self.start.to_le_bytes())
            + fixed_len(8, self.end.to_le_bytes())
            + self.attributes.len()
            + opt_varint_len(10, u64::from(self.dropped_attributes))
            + delimited_len(15, self.status_len())
            + fixed_len(16, self.flags().to_le_bytes())
    }

    /// Appends the span as one `ScopeSpans.spans` field: what a [`Batch`] holds.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        message(buf, 2, self.len(), |buf| {
            put_bytes(buf, 1, self.trace_id);
            put_bytes(buf, 2, self.span_id);
            put_opt_bytes(buf, 3, self.trace_state.as_bytes());
            if *self.parent_span_id != [0; 8] {
                put_bytes(buf, 4, self.parent_span_id);
            }
            put_opt_bytes(buf, 5, self.name.as_bytes());
            put_opt_varint(buf, 6, kind(self.kind));
            put_fixed(buf, 7, self.start.to_le_bytes());
            put_fixed(buf, 8, self.end.to_le_bytes());
            buf.extend_from_slice(self.attributes);
            put_opt_varint(buf, 10, u64::from(self.dropped_attributes));
            message(buf, 15, self.status_len(), |b| {
                if let Some(why) = self.error {
                    put_opt_bytes(b, 2, why.as_bytes());
                    put_opt_varint(b, 3, 2);
                }
            });
            put_fixed(buf, 16, self.flags().to_le_bytes());
        });
    }
}

/// One `ExportTraceServiceRequest`: one `ResourceSpans` (this process) holding one `ScopeSpans`
/// (its tracer) whose spans are `spans`, encoded by [`Finished::encode`].
pub(super) fn encode_request(resource: &[u8], scope: &[u8], spans: &[u8]) -> Vec<u8> {
    let scope_spans_len = delimited_len(1, scope.len()) + spans.len();
    let resource_spans_len = delimited_len(1, resource.len()) + delimited_len(2, scope_spans_len);
    let mut buf = Vec::with_capacity(delimited_len(1, resource_spans_len));
    message(&mut buf, 1, resource_spans_len, |b| {
        put_bytes(b, 1, resource);
        message(b, 2, scope_spans_len, |b| {
            put_bytes(b, 1, scope);
            b.extend_from_slice(spans);
        });
    });
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope as ProtoScope;
    use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as ProtoSpan};
    use opentelemetry_proto::transform::common::tonic::Attributes;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prometheus_client::metrics::counter::Counter;
    use prost::Message as _;
    use tokio::sync::mpsc;

    use super::super::{
        SamplerKind, SpanKind, TRACEPARENT, TRACESTATE, TraceParent, TraceSpan, Tracing,
        TracingConfig,
    };

    /// Hands each exported batch to the test.
    struct Recorder(mpsc::UnboundedSender<Batch>);

    impl Exporter for Recorder {
        async fn export(&self, batch: Batch) -> Result<(), String> {
            let _ = self.0.send(batch);
            Ok(())
        }
    }

    fn tracing() -> (Tracing, mpsc::UnboundedReceiver<Batch>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = TracingConfig {
            sampler: SamplerKind::AlwaysOn,
            ..TracingConfig::default()
        };
        let t = Tracing::with_exporter(Recorder(tx), &config, "test", Counter::default());
        (t, rx)
    }

    fn resource() -> Vec<KeyValue> {
        vec![
            KeyValue::new("service.name", "isthmus-gateway"),
            KeyValue::new("isthmus.cluster", "east"),
            KeyValue::new("isthmus.instance", 7),
        ]
    }

    /// What a test span was made with, to build the SDK's `SpanData` for the same span.
    struct Made {
        ids: TraceParent,
        parent: [u8; 8],
        parent_is_remote: bool,
        trace_state: TraceState,
        name: &'static str,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        dropped: u32,
        error: Option<&'static str>,
    }

    fn ids(span: &TraceSpan) -> TraceParent {
        TraceParent::parse(span.traceparent().as_bytes()).expect("a valid traceparent")
    }

    /// Every value kind, both string paths, arrays.
    fn all_kinds() -> Vec<KeyValue> {
        vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("url.path", "/a/ü".to_string()),
            KeyValue::new("isthmus.try", 3),
            KeyValue::new("negative", -7),
            KeyValue::new("isthmus.retry", true),
            KeyValue::new("isthmus.shadow", false),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("empty", ""),
            KeyValue::new("", "empty key"),
            KeyValue::new(
                "clusters",
                Value::Array(Array::String(vec!["west".into(), "south".into()])),
            ),
            KeyValue::new("ports", Value::Array(Array::I64(vec![80, 443]))),
            KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("weights", Value::Array(Array::F64(vec![0.5]))),
        ]
    }

    /// Spans of every shape the gateway and the federation make: a caller's trace (with trace
    /// state) continued by a server span, a child, a child started in the past, a new trace, one
    /// failed, one with more attributes than are kept.
    fn make(t: &Tracing) -> Vec<Made> {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, caller.parse().expect("header"));
        headers.insert(
            TRACESTATE,
            "vendor=00f067aa0ba902b7".parse().expect("header"),
        );
        let state = TraceState::from_key_value([("vendor", "00f067aa0ba902b7")]).expect("state");
        let caller = TraceParent::parse(caller.as_bytes()).expect("valid");
        let mut made = Vec::new();

        let mut server = t.sample(&headers).expect("sampled").start(
            "GET",
            SpanKind::Server,
            all_kinds()[..4].to_vec(),
        );
        for kv in &all_kinds()[4..] {
            server.set(kv.clone());
        }
        server.set_str("server.address", "echo.demo.svc.clusterset.local");
        server.fail("upstream reset");
        let mut attributes = all_kinds();
        attributes.push(KeyValue::new(
            "server.address",
            "echo.demo.svc.clusterset.local",
        ));
        let server_ids = ids(&server);
        made.push(Made {
            ids: server_ids,
            parent: caller.span_id,
            parent_is_remote: true,
            trace_state: state.clone(),
            name: "GET",
            kind: SpanKind::Server,
            attributes,
            dropped: 0,
            error: Some("upstream reset"),
        });

        let child = server.child(
            "try",
            SpanKind::Client,
            vec![KeyValue::new("isthmus.try", 1)],
        );
        made.push(Made {
            ids: ids(&child),
            parent: server_ids.span_id,
            parent_is_remote: false,
            trace_state: state.clone(),
            name: "try",
            kind: SpanKind::Client,
            attributes: vec![KeyValue::new("isthmus.try", 1)],
            dropped: 0,
            error: None,
        });
        child.end();

        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let late = server.child_since("try", SpanKind::Client, Vec::new(), Some(since));
        made.push(Made {
            ids: ids(&late),
            parent: server_ids.span_id,
            parent_is_remote: false,
            trace_state: state,
            name: "try",
            kind: SpanKind::Client,
            attributes: Vec::new(),
            dropped: 0,
            error: None,
        });
        drop(late);
        server.end();

        let mut round = t
            .root_span(
                "catalog.apply",
                vec![KeyValue::new("isthmus.catalog.version", 9)],
            )
            .expect("always on");
        let mut attributes = vec![KeyValue::new("isthmus.catalog.version", 9)];
        for i in 0..140 {
            let kv = KeyValue::new(format!("k{i}"), i64::from(i));
            if attributes.len() < 128 {
                attributes.push(kv.clone());
            }
            round.set(kv);
        }
        made.push(Made {
            ids: ids(&round),
            parent: [0; 8],
            parent_is_remote: false,
            trace_state: TraceState::default(),
            name: "catalog.apply",
            kind: SpanKind::Internal,
            attributes,
            dropped: 13,
            error: None,
        });
        drop(round);
        made
    }

    /// What opentelemetry-proto builds from the SDK's `SpanData` for a span made alike and timed
    /// as `ours` says.
    fn reference(m: &Made, ours: &ProtoSpan) -> ProtoSpan {
        let context = SpanContext::new(
            TraceId::from_bytes(m.ids.trace_id),
            SpanId::from_bytes(m.ids.span_id),
            TraceFlags::SAMPLED,
            false,
            m.trace_state.clone(),
        );
        let at = |n: u64| SystemTime::UNIX_EPOCH + Duration::from_nanos(n);
        let data = SpanData {
            span_context: context,
            parent_span_id: SpanId::from_bytes(m.parent),
            parent_span_is_remote: m.parent_is_remote,
            span_kind: m.kind.clone(),
            name: m.name.into(),
            start_time: at(ours.start_time_unix_nano),
            end_time: at(ours.end_time_unix_nano),
            attributes: m.attributes.clone(),
            dropped_attributes_count: m.dropped,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: m.error.map_or(Status::Unset, Status::error),
            instrumentation_scope: InstrumentationScope::builder("isthmus-gateway").build(),
        };
        data.into()
    }

    #[tokio::test(start_paused = true)]
    async fn spans_encode_as_opentelemetry_proto_builds_them() {
        let (t, mut batches) = tracing();
        let before = SystemTime::now();
        let made = make(&t);
        let after = SystemTime::now();
        let batch = batches
            .recv()
            .await
            .expect("a batch within the flush interval");
        assert_eq!(batch.count, made.len());
        let bytes = encode_request(
            &encode_resource(&resource()),
            &encode_scope("isthmus-gateway"),
            &batch.spans,
        );
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).expect("valid protobuf");
        let ours = &decoded.resource_spans[0].scope_spans[0].spans;
        // Ended in this order: the child, the late child, the server span, the round.
        let order = [1, 2, 0, 3];
        assert_eq!(ours.len(), order.len());
        let ns = |t: SystemTime| super::super::nanos(t);
        let mut spans = Vec::new();
        for (ours, &i) in ours.iter().zip(&order) {
            let (start, end) = (ours.start_time_unix_nano, ours.end_time_unix_nano);
            if i == 2 {
                assert_eq!(start, 1_700_000_000_000_000_000, "started when it was told");
            } else {
                assert!(ns(before) <= start, "{ours:?}");
            }
            assert!(start <= end && end <= ns(after), "{ours:?}");
            spans.push(reference(&made[i], ours));
        }
        let expected = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(ProtoResource {
                    attributes: Attributes::from(resource()).0,
                    dropped_attributes_count: 0,
                    entity_refs: vec![],
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(ProtoScope {
                        name: "isthmus-gateway".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
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
            "isthmus-gateway",
        )
        .expect("exporter");
        let (t, mut batches) = tracing();
        drop(make(&t));
        let batch = batches.recv().await.expect("a batch");
        let result = tokio::time::timeout(Duration::from_secs(10), exporter.export(batch))
            .await
            .expect("the export gives up within its timeout");
        assert!(result.is_err(), "{result:?}");
    }
}
