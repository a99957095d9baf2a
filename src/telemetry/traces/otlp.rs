//! Traces as OTLP protobuf (`ExportTraceServiceRequest` of
//! opentelemetry/proto/collector/trace/v1), each trace written straight into
//! its batch's buffer as it ends: no message tree is built per span, and
//! nothing is moved once written. Field numbers are the proto's; fields are
//! written in whatever order is cheapest, as protobuf allows.

use bytes::Bytes;

use super::span::{Child, Finished, What};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

// Span.SpanKind
const INTERNAL: u8 = 1;
const SERVER: u8 = 2;
const CLIENT: u8 = 3;
// Status.StatusCode
const ERROR: u8 = 2;
// Span.flags: the W3C flags in the low byte (all spans kept are sampled), and
// whether the parent is known to be remote.
const SAMPLED: u32 = 0x01;
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// `Span.attributes` (field 9), as its tag byte.
const ATTRIBUTE: u8 = 9 << 3 | LEN;
/// `Span.status` holding `code: ERROR` (field 15, then field 3 of Status).
const STATUS_ERROR: [u8; 4] = [15 << 3 | LEN, 2, 3 << 3 | VARINT, ERROR];
/// A gRPC message's prefix: not compressed, then its length (big-endian).
const GRPC_PREFIX: usize = 5;
/// Targets whose attempt spans a batch keeps encoded: past this, it starts
/// again (targets come from the configuration, so it is never reached).
const TARGETS_KEPT: usize = 64;

/// What every export request carries ahead of its spans: the resource naming
/// the service, and the instrumentation scope. Written once.
pub struct Head {
    /// `ResourceSpans.resource` and `ScopeSpans.scope`, with their tags.
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Head {
    /// The head for the service named `service_name`.
    pub fn new(service_name: &str) -> Head {
        let mut attributes = Vec::new();
        for (key, text) in [
            ("service.name", service_name),
            ("service.version", env!("CARGO_PKG_VERSION")),
        ] {
            // `Resource.attributes` is field 1, where a span's are field 9:
            // the key-value is written as a span's, then its tag changed.
            let at = attributes.len();
            text_value(&mut attributes, key, text.as_bytes());
            attributes[at] = 1 << 3 | LEN;
        }
        let mut resource = Vec::new();
        bytes(&mut resource, 1, &attributes);
        let mut scope_fields = Vec::new();
        bytes(&mut scope_fields, 1, b"ragway");
        bytes(&mut scope_fields, 2, env!("CARGO_PKG_VERSION").as_bytes());
        let mut scope = Vec::new();
        bytes(&mut scope, 1, &scope_fields);
        Head { resource, scope }
    }

    /// The bytes kept ahead of a batch's spans for the gRPC message's prefix
    /// and the enclosing messages.
    fn room(&self) -> usize {
        GRPC_PREFIX + 2 * (1 + MAX_VARINT) + self.resource.len() + self.scope.len()
    }
}

/// An attribute's value, as it is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Text(&'a str),
    Int(i64),
    Bool(bool),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(text: &'a str) -> Value<'a> {
        Value::Text(text)
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// A request span's own fields (its name, kind and attributes), encoded as
/// they are set: an attribute's text is copied once, into its encoding, and a
/// span's end appends them in one write. The text mostly comes from `Arc`s
/// every request shares (an alias, a target, a tenant): holding counts of them
/// until the trace ends would pass their cache lines between the cores with
/// every request, where a copy stays on this one.
#[derive(Debug, Default)]
pub struct Fields {
    buf: Vec<u8>,
    /// Whether `error.type` was set: the span's status is then an error.
    failed: bool,
}

impl Fields {
    /// The fields of a server span for `method` at `route`: its name
    /// (`METHOD route`), kind and HTTP attributes, with room for `more` bytes
    /// of attributes.
    pub fn server(method: &str, route: &str, more: usize) -> Fields {
        // The name, and the two attributes' keys (29 bytes) and framing.
        let own = 2 * (method.len() + route.len()) + 50;
        let mut buf = Vec::with_capacity(own + more);
        name_and_kind(&mut buf, method, route, SERVER);
        text_value(&mut buf, "http.request.method", method.as_bytes());
        text_value(&mut buf, "http.route", route.as_bytes());
        Fields { buf, failed: false }
    }

    /// Sets attribute `key`; `error.type` makes the span's status an error.
    pub fn set(&mut self, key: &str, value: Value) {
        match value {
            Value::Text(text) => text_value(&mut self.buf, key, text.as_bytes()),
            Value::Bool(b) => scalar_value(&mut self.buf, key, 2, u64::from(b)),
            // int64: two's complement, as a varint.
            Value::Int(n) => scalar_value(&mut self.buf, key, 3, n as u64),
        }
        self.failed |= key == "error.type";
    }
}

/// The spans of the traces gathered for one export request, encoded as each
/// trace is added. What the spans repeat is written once per batch's life: per
/// target, the name and GenAI attributes of its attempt spans (the same few
/// targets serve every request).
pub struct Batch {
    buf: Vec<u8>,
    /// Where the spans start: room for the head is kept before them.
    room: usize,
    /// Bytes first reserved for the spans.
    reserve: usize,
    traces: usize,
    attempts: Vec<Attempted>,
}

/// An attempt span's name, kind and attributes for one operation at a target.
struct Attempted {
    operation: &'static str,
    target: Box<str>,
    encoded: Box<[u8]>,
}

impl Batch {
    /// An empty batch for requests carrying `head`, with room for about
    /// `traces` traces of a chat call before it grows.
    pub fn new(head: &Head, traces: usize) -> Batch {
        let mut batch = Batch {
            buf: Vec::new(),
            room: head.room(),
            reserve: traces * 1280,
            traces: 0,
            attempts: Vec::new(),
        };
        batch.restart(Vec::new());
        batch
    }

    /// Starts again in `buf`, emptied (grown when it has less room than a
    /// batch first takes).
    fn restart(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        buf.reserve(self.room + self.reserve);
        buf.resize(self.room, 0);
        self.buf = buf;
        self.traces = 0;
    }

    /// The traces in the batch.
    pub fn traces(&self) -> usize {
        self.traces
    }

    /// The bytes of the batch's spans.
    pub fn len(&self) -> usize {
        self.buf.len() - self.room
    }

    /// Adds every span of `trace`.
    pub fn add(&mut self, trace: &Finished) {
        request_span(&mut self.buf, trace);
        for child in trace.children() {
            match &child.what {
                What::Stage(name) => stage_span(&mut self.buf, trace, child, name),
                What::Attempt {
                    operation,
                    target,
                    error,
                } => {
                    let target = target.read(&trace.text);
                    let at = self.attempted(operation, target);
                    let named = &self.attempts[at].encoded;
                    attempt_span(&mut self.buf, trace, child, named, *error);
                }
            }
        }
        self.traces += 1;
    }

    /// The export request holding the batch's spans, under `head` (the one the
    /// batch was made for), as a gRPC message (its prefix first): it is sent as
    /// it is. The batch is then empty, and goes on in `next`: the buffer of an
    /// export already sent, so that spans are written into memory the caches
    /// hold rather than into a new allocation (an empty `Vec` when none is
    /// back yet).
    pub fn close(&mut self, head: &Head, next: Vec<u8>) -> Bytes {
        // ExportTraceServiceRequest { resource_spans: ResourceSpans {
        //   resource, scope_spans: ScopeSpans { scope, spans } } }
        let scope_spans = head.scope.len() + self.len();
        let resource_spans = head.resource.len() + 1 + varint_len(scope_spans) + scope_spans;
        let request = 1 + varint_len(resource_spans) + resource_spans;
        let mut enclosing = Vec::with_capacity(self.room);
        // A batch closes at about 2 MiB: its length always fits.
        let len = u32::try_from(request).unwrap_or(u32::MAX);
        enclosing.push(0);
        enclosing.extend_from_slice(&len.to_be_bytes());
        tag(&mut enclosing, 1, LEN);
        varint(&mut enclosing, resource_spans as u64);
        enclosing.extend_from_slice(&head.resource);
        tag(&mut enclosing, 2, LEN);
        varint(&mut enclosing, scope_spans as u64);
        enclosing.extend_from_slice(&head.scope);
        let from = self.room - enclosing.len();
        self.buf[from..self.room].copy_from_slice(&enclosing);
        let request = Bytes::from(std::mem::take(&mut self.buf)).slice(from..);
        self.restart(next);
        request
    }

    /// Where in `attempts` the encoding of an attempt span for `operation` at
    /// `target` (`provider:model`; a local model is named by its provider
    /// alone) is.
    fn attempted(&mut self, operation: &'static str, target: &str) -> usize {
        let kept = |a: &Attempted| a.operation == operation && *a.target == *target;
        if let Some(at) = self.attempts.iter().position(kept) {
            return at;
        }
        if self.attempts.len() >= TARGETS_KEPT {
            self.attempts.clear();
        }
        let (system, model) = target.split_once(':').unwrap_or((target, target));
        let mut named = Vec::with_capacity(160);
        name_and_kind(&mut named, operation, model, CLIENT);
        text_value(&mut named, "gen_ai.operation.name", operation.as_bytes());
        text_value(&mut named, "gen_ai.system", system.as_bytes());
        text_value(&mut named, "gen_ai.request.model", model.as_bytes());
        text_value(&mut named, "ragway.target", target.as_bytes());
        self.attempts.push(Attempted {
            operation,
            target: target.into(),
            encoded: named.into_boxed_slice(),
        });
        self.attempts.len() - 1
    }
}

/// A span's name, `first second` (field 5), and its kind (field 6).
fn name_and_kind(buf: &mut Vec<u8>, first: &str, second: &str, kind: u8) {
    tag(buf, 5, LEN);
    varint(buf, (first.len() + 1 + second.len()) as u64);
    buf.extend_from_slice(first.as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(second.as_bytes());
    buf.extend_from_slice(&[6 << 3 | VARINT, kind]);
}

/// The request's span: a server span, its fields as they were set. Its length
/// is known before it is written.
fn request_span(buf: &mut Vec<u8>, trace: &Finished) {
    let fields = &trace.fields;
    let status = match fields.failed {
        true => &STATUS_ERROR[..],
        false => &[],
    };
    let len = ids_len(trace, trace.parent.is_some()) + fields.buf.len() + status.len() + TIMES;
    tag(buf, 2, LEN);
    varint(buf, len as u64);
    let at = buf.len();
    ids(buf, trace, &trace.span, trace.parent.as_ref());
    buf.extend_from_slice(&fields.buf);
    buf.extend_from_slice(status);
    let remote = match trace.parent {
        Some(_) => IS_REMOTE,
        None => 0,
    };
    times(
        buf,
        trace.start,
        trace.end,
        SAMPLED | HAS_IS_REMOTE | remote,
    );
    debug_assert_eq!(buf.len() - at, len);
}

/// A stage's span: an internal span named by the stage. Its length is known
/// before it is written.
fn stage_span(buf: &mut Vec<u8>, trace: &Finished, child: &Child, name: &str) {
    let len = ids_len(trace, true) + field_len(name.len()) + 2 + TIMES;
    tag(buf, 2, LEN);
    varint(buf, len as u64);
    let at = buf.len();
    ids(buf, trace, &child.id, Some(&child.parent));
    bytes(buf, 5, name.as_bytes());
    buf.extend_from_slice(&[6 << 3 | VARINT, INTERNAL]);
    times(buf, child.start, child.end, SAMPLED | HAS_IS_REMOTE);
    debug_assert_eq!(buf.len() - at, len);
}

/// An upstream attempt's span: a GenAI client span, `named` as the encoder
/// keeps it for its target; failed with `error` (`error.type`). Its length is
/// known before it is written.
fn attempt_span(
    buf: &mut Vec<u8>,
    trace: &Finished,
    child: &Child,
    named: &[u8],
    error: Option<&str>,
) {
    let failed = error.map_or(0, |error| {
        text_value_len("error.type", error.len()) + STATUS_ERROR.len()
    });
    let len = ids_len(trace, true) + named.len() + failed + TIMES;
    tag(buf, 2, LEN);
    varint(buf, len as u64);
    let at = buf.len();
    ids(buf, trace, &child.id, Some(&child.parent));
    buf.extend_from_slice(named);
    if let Some(error) = error {
        text_value(buf, "error.type", error.as_bytes());
        buf.extend_from_slice(&STATUS_ERROR);
    }
    times(buf, child.start, child.end, SAMPLED | HAS_IS_REMOTE);
    debug_assert_eq!(buf.len() - at, len);
}

/// The bytes `ids` writes with a parent (the trace state aside).
const IDS: usize = 18 + 10 + 10;

/// The bytes `ids` writes for a span of `trace`, with a parent or not.
fn ids_len(trace: &Finished, parent: bool) -> usize {
    let state = trace.tracestate.as_ref().map_or(0, |s| field_len(s.len()));
    match parent {
        true => IDS + state,
        false => IDS - 10 + state,
    }
}

/// The trace id, span id, parent span id and trace state of a span of `trace`,
/// as one write.
fn ids(buf: &mut Vec<u8>, trace: &Finished, span: &[u8; 8], parent: Option<&[u8; 8]>) {
    let mut ids = [0; IDS];
    ids[..2].copy_from_slice(&[1 << 3 | LEN, 16]);
    ids[2..18].copy_from_slice(&trace.trace);
    ids[18..20].copy_from_slice(&[2 << 3 | LEN, 8]);
    ids[20..28].copy_from_slice(span);
    let len = match parent {
        Some(parent) => {
            ids[28..30].copy_from_slice(&[4 << 3 | LEN, 8]);
            ids[30..].copy_from_slice(parent);
            IDS
        }
        None => 28,
    };
    buf.extend_from_slice(&ids[..len]);
    if let Some(state) = &trace.tracestate {
        bytes(buf, 3, state.as_bytes());
    }
}

/// The bytes `times` writes.
const TIMES: usize = 9 + 9 + 6;
/// The tag of `Span.flags`: field 16, fixed32, takes two bytes as a varint.
const FLAGS_TAG: [u8; 2] = [(16 << 3 | FIXED32) | 0x80, 1];

/// Start and end times (fields 7 and 8) and the flags (field 16), as one write.
fn times(buf: &mut Vec<u8>, start: u64, end: u64, flags: u32) {
    let mut times = [0; TIMES];
    times[0] = 7 << 3 | FIXED64;
    times[1..9].copy_from_slice(&start.to_le_bytes());
    times[9] = 8 << 3 | FIXED64;
    times[10..18].copy_from_slice(&end.to_le_bytes());
    // Field 16 takes two bytes of tag.
    times[18..20].copy_from_slice(&FLAGS_TAG);
    times[20..].copy_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(&times);
}

/// `KeyValue { key, value: AnyValue { string_value: text } }` as field 9.
fn text_value(buf: &mut Vec<u8>, key: &str, text: &[u8]) {
    if key.len() + text.len() < 0x80 - 6 {
        // Every length is one byte: the common case, in four writes.
        let any = 2 + text.len();
        let kv = 2 + key.len() + 2 + any;
        buf.extend_from_slice(&[ATTRIBUTE, kv as u8, 1 << 3 | LEN, key.len() as u8]);
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&[2 << 3 | LEN, any as u8, 1 << 3 | LEN, text.len() as u8]);
        buf.extend_from_slice(text);
        return;
    }
    let any = field_len(text.len());
    let kv = field_len(key.len()) + field_len(any);
    buf.push(ATTRIBUTE);
    varint(buf, kv as u64);
    bytes(buf, 1, key.as_bytes());
    tag(buf, 2, LEN);
    varint(buf, any as u64);
    bytes(buf, 1, text);
}

/// The bytes `text_value` writes for `key` and a text of `len` bytes.
fn text_value_len(key: &str, len: usize) -> usize {
    field_len(field_len(key.len()) + field_len(field_len(len)))
}

/// `KeyValue { key, value: AnyValue { <variant>: n } }` for a varint variant.
fn scalar_value(buf: &mut Vec<u8>, key: &str, variant: u8, n: u64) {
    let any = 1 + varint_len(n as usize);
    let kv = field_len(key.len()) + 2 + any;
    if kv < 0x80 && n < 0x80 {
        // Every length and the number are one byte: the common case.
        buf.extend_from_slice(&[ATTRIBUTE, kv as u8, 1 << 3 | LEN, key.len() as u8]);
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&[2 << 3 | LEN, any as u8, variant << 3 | VARINT, n as u8]);
        return;
    }
    buf.push(ATTRIBUTE);
    varint(buf, kv as u64);
    bytes(buf, 1, key.as_bytes());
    tag(buf, 2, LEN);
    varint(buf, any as u64);
    tag(buf, u32::from(variant), VARINT);
    varint(buf, n);
}

/// The bytes a length-delimited field of `len` bytes takes, its tag (of one
/// byte) and length included.
#[inline]
fn field_len(len: usize) -> usize {
    1 + varint_len(len) + len
}

/// The most bytes a varint of a 64-bit number takes.
const MAX_VARINT: usize = 10;

#[inline]
fn tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, u64::from(field) << 3 | u64::from(wire));
}

#[inline]
fn varint(buf: &mut Vec<u8>, mut n: u64) {
    if n < 0x80 {
        buf.push(n as u8);
        return;
    }
    while n >= 0x80 {
        buf.push(n as u8 | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// The bytes `n` takes as a varint.
#[inline]
fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - (n | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

#[inline]
fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
    use prost::Message as _;

    use super::super::span::Copied;
    use super::*;

    /// The export request a closed batch holds, its gRPC prefix checked.
    fn read_back(closed: Bytes) -> ExportTraceServiceRequest {
        assert_eq!(closed[0], 0, "not compressed");
        let len = u32::from_be_bytes(closed[1..GRPC_PREFIX].try_into().unwrap());
        assert_eq!(len as usize, closed.len() - GRPC_PREFIX);
        ExportTraceServiceRequest::decode(closed.slice(GRPC_PREFIX..)).unwrap()
    }

    /// Stage `name`, a child of span `[1; 8]`.
    fn stage_child(name: &'static str) -> Child {
        Child {
            id: [2; 8],
            parent: [1; 8],
            start: 5,
            end: 6,
            what: What::Stage(name),
        }
    }

    fn trace(in_slots: &[Child]) -> Finished<'_> {
        Finished {
            trace: [7; 16],
            span: [1; 8],
            parent: Some([9; 8]),
            tracestate: Some(HeaderValue::from_static("vendor=value")),
            start: 1_700_000_000_000_000_000,
            end: 1_700_000_000_250_000_000,
            fields: {
                let mut fields = Fields::server("POST", "/v1/chat/completions", 0);
                fields.set("gen_ai.request.model", Value::Text("chat"));
                fields.set("gen_ai.usage.input_tokens", Value::Int(-3));
                fields.set("ragway.stream", Value::Bool(true));
                fields.set("ragway.tenant", Value::Text(&"é".repeat(200)));
                fields
            },
            in_slots,
            later: &[],
            text: "deepseek:deepseek-chat".to_owned(),
        }
    }

    fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
        let kv = span.attributes.iter().find(|kv| kv.key == key)?;
        kv.value.as_ref()?.value.as_ref()
    }

    #[test]
    fn what_is_written_is_read_back_by_the_otlp_protobuf_types() {
        let children = [
            Child {
                id: [2; 8],
                parent: [1; 8],
                start: 1_700_000_000_000_000_100,
                end: 1_700_000_000_000_000_900,
                what: What::Stage("sanitize"),
            },
            Child {
                id: [3; 8],
                parent: [2; 8],
                start: 1_700_000_000_000_001_000,
                end: 1_700_000_000_200_000_000,
                what: What::Attempt {
                    operation: "chat",
                    target: Copied::new(0, 22),
                    error: Some("http_5xx"),
                },
            },
        ];
        // Many spans, so that the enclosing lengths need several bytes. The
        // attempt is kept past the slots: it is written after them.
        let traces: Vec<Finished> = (0..50)
            .map(|_| Finished {
                later: &children[1..],
                ..trace(&children[..1])
            })
            .collect();
        let head = Head::new("ragway-test");
        let mut batch = Batch::new(&head, 50);
        let mut written = Vec::new();
        for _ in 0..2 {
            // The second batch writes its attempts from what the first kept.
            traces.iter().for_each(|trace| batch.add(trace));
            assert_eq!(batch.traces(), 50);
            written.push(batch.close(&head, Vec::new()));
            assert_eq!((batch.traces(), batch.len()), (0, 0));
        }
        assert_eq!(written[0], written[1]);
        let written = written.remove(0);
        let read = read_back(written);
        let resource_spans = &read.resource_spans[0];
        let service = &resource_spans.resource.as_ref().unwrap().attributes;
        assert_eq!(service[0].key, "service.name");
        assert_eq!(
            service[0].value.as_ref().unwrap().value,
            Some(Any::StringValue("ragway-test".to_owned()))
        );
        assert_eq!(service[1].key, "service.version");
        let scope = &resource_spans.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "ragway");
        assert_eq!(scope.spans.len(), 150);

        let request = &scope.spans[0];
        assert_eq!(request.name, "POST /v1/chat/completions");
        assert_eq!(request.trace_id, vec![7; 16]);
        assert_eq!(request.span_id, vec![1; 8]);
        assert_eq!(request.parent_span_id, vec![9; 8]);
        assert_eq!(request.trace_state, "vendor=value");
        assert_eq!(request.kind, SpanKind::Server as i32);
        assert_eq!(request.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(request.end_time_unix_nano, 1_700_000_000_250_000_000);
        assert_eq!(request.flags, 0x301);
        assert_eq!(request.status, None);
        assert_eq!(
            attribute(request, "gen_ai.request.model"),
            Some(&Any::StringValue("chat".to_owned()))
        );
        assert_eq!(
            attribute(request, "gen_ai.usage.input_tokens"),
            Some(&Any::IntValue(-3))
        );
        assert_eq!(
            attribute(request, "ragway.stream"),
            Some(&Any::BoolValue(true))
        );
        assert_eq!(
            attribute(request, "ragway.tenant"),
            Some(&Any::StringValue("é".repeat(200)))
        );
        assert_eq!(
            attribute(request, "http.route"),
            Some(&Any::StringValue("/v1/chat/completions".to_owned()))
        );

        let stage = &scope.spans[1];
        assert_eq!(
            (stage.name.as_str(), stage.kind),
            ("sanitize", SpanKind::Internal as i32)
        );
        assert_eq!(stage.parent_span_id, vec![1; 8]);
        assert_eq!(stage.flags, 0x101);

        let attempt = &scope.spans[2];
        assert_eq!(attempt.name, "chat deepseek-chat");
        assert_eq!(attempt.kind, SpanKind::Client as i32);
        assert_eq!(attempt.parent_span_id, vec![2; 8]);
        assert_eq!(
            attribute(attempt, "gen_ai.system"),
            Some(&Any::StringValue("deepseek".to_owned()))
        );
        assert_eq!(
            attribute(attempt, "error.type"),
            Some(&Any::StringValue("http_5xx".to_owned()))
        );
        assert_eq!(
            attempt.status.as_ref().unwrap().code,
            StatusCode::Error as i32
        );
    }

    #[test]
    fn varints_take_the_bytes_they_need() {
        for n in [
            0usize,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            1 << 40,
            usize::MAX,
        ] {
            let mut buf = Vec::new();
            varint(&mut buf, n as u64);
            assert_eq!(buf.len(), varint_len(n), "{n}");
        }
    }

    #[test]
    fn spans_whose_lengths_take_one_two_and_three_bytes_are_read_back() {
        // A request span of about 110 bytes, 400 and 20,000: its length takes
        // one byte, two and three; the stage after it is read from where the
        // length says the request's ends.
        for extra in [0, 300, 20_000] {
            let children = [stage_child("cache")];
            let mut trace = trace(&children);
            (trace.parent, trace.tracestate) = (None, None);
            trace.fields = Fields::server("GET", "/", 0);
            let tenant = "t".repeat(extra);
            if extra > 0 {
                trace.fields.set("ragway.tenant", Value::Text(&tenant));
            }
            let head = Head::new("ragway-test");
            let mut batch = Batch::new(&head, 1);
            batch.add(&trace);
            let read = read_back(batch.close(&head, Vec::new()));
            let spans = &read.resource_spans[0].scope_spans[0].spans;
            assert_eq!(spans.len(), 2);
            assert_eq!(spans[0].name, "GET /");
            assert_eq!(spans[0].end_time_unix_nano, trace.end);
            let read_tenant = attribute(&spans[0], "ragway.tenant").cloned();
            assert_eq!(read_tenant, (extra > 0).then_some(Any::StringValue(tenant)));
            assert_eq!(
                (spans[1].name.as_str(), spans[1].end_time_unix_nano),
                ("cache", 6)
            );
        }
    }

    #[test]
    fn attributes_either_side_of_one_byte_lengths_are_read_back() {
        let mut trace = trace(&[]);
        trace.fields = Fields::server("POST", "/v1/chat/completions", 0);
        for n in 100..140 {
            trace
                .fields
                .set("gen_ai.system", Value::Text(&"x".repeat(n)));
        }
        for n in [200, 127, 128, 16_384] {
            trace.fields.set("gen_ai.usage.input_tokens", Value::Int(n));
        }
        let head = Head::new("ragway-test");
        let mut batch = Batch::new(&head, 1);
        batch.add(&trace);
        let read = read_back(batch.close(&head, Vec::new()));
        let span = &read.resource_spans[0].scope_spans[0].spans[0];
        let texts: Vec<usize> = span
            .attributes
            .iter()
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Any::StringValue(text) if kv.key == "gen_ai.system" => Some(text.len()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, (100..140).collect::<Vec<_>>());
        let ints: Vec<i64> = span
            .attributes
            .iter()
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Any::IntValue(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(ints, [200, 127, 128, 16_384]);
    }

    #[test]
    fn a_trace_without_parent_or_state_and_long_values_is_read_back() {
        let children = [stage_child("retrieve")];
        let mut trace = trace(&children);
        trace.parent = None;
        trace.tracestate = None;
        let chain = "a:b > ".repeat(3000);
        trace
            .fields
            .set("ragway.failover.chain", Value::Text(&chain));
        trace.fields.set("error.type", Value::Text("timeout"));
        let head = Head::new("ragway-test");
        let mut batch = Batch::new(&head, 1);
        batch.add(&trace);
        let written = batch.close(&head, Vec::new());
        let read = read_back(written);
        let spans = &read.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].parent_span_id, Vec::<u8>::new());
        assert_eq!(spans[0].trace_state, "");
        assert_eq!(spans[0].flags, 0x101);
        assert_eq!(
            spans[0].status.as_ref().unwrap().code,
            StatusCode::Error as i32
        );
        assert_eq!(
            attribute(&spans[0], "ragway.failover.chain"),
            Some(&Any::StringValue("a:b > ".repeat(3000)))
        );
        assert_eq!(spans[1].name, "retrieve");
        assert_eq!(
            (spans[1].start_time_unix_nano, spans[1].end_time_unix_nano),
            (5, 6)
        );
    }
}
