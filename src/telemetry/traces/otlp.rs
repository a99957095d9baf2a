//! Traces as OTLP protobuf (`ExportTraceServiceRequest` of
//! opentelemetry/proto/collector/trace/v1), written straight into one buffer:
//! no message tree is built per span. Field numbers are the proto's.

use super::span::{Child, Finished, Value, What};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

// Span.SpanKind
const INTERNAL: u64 = 1;
const SERVER: u64 = 2;
const CLIENT: u64 = 3;
// Status.StatusCode
const ERROR: u64 = 2;
// Span.flags: the W3C flags in the low byte (all spans kept are sampled), and
// whether the parent is known to be remote.
const SAMPLED: u32 = 0x01;
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// A `Resource` naming the service, written once: every batch carries it.
pub fn resource(service_name: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    text_value(&mut buf, 1, "service.name", service_name.as_bytes());
    text_value(
        &mut buf,
        1,
        "service.version",
        env!("CARGO_PKG_VERSION").as_bytes(),
    );
    buf
}

/// One export request holding every span of `traces`.
pub fn request(resource: &[u8], traces: &[Finished]) -> Vec<u8> {
    let spans: usize = traces.iter().map(|t| 1 + t.children.len()).sum();
    let mut buf = Vec::with_capacity(64 + resource.len() + spans * 320);
    // A span is written here first: its length goes before it.
    let mut span = Vec::with_capacity(1024);
    message(&mut buf, 1, |buf| {
        // ResourceSpans
        bytes(buf, 1, resource);
        message(buf, 2, |buf| {
            // ScopeSpans
            message(buf, 1, |buf| {
                bytes(buf, 1, b"ragway");
                bytes(buf, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for trace in traces {
                span.clear();
                request_span(&mut span, trace);
                bytes(buf, 2, &span);
                for child in &trace.children {
                    span.clear();
                    child_span(&mut span, trace, child);
                    bytes(buf, 2, &span);
                }
            }
        });
    });
    buf
}

fn request_span(buf: &mut Vec<u8>, trace: &Finished) {
    ids(buf, trace, &trace.span);
    if let Some(parent) = &trace.parent {
        bytes(buf, 4, parent);
    }
    let method = trace.method.as_str().as_bytes();
    let route = trace.route.as_bytes();
    tag(buf, 5, LEN);
    varint(buf, (method.len() + 1 + route.len()) as u64);
    buf.extend_from_slice(method);
    buf.push(b' ');
    buf.extend_from_slice(route);
    varint_field(buf, 6, SERVER);
    fixed64(buf, 7, trace.start);
    fixed64(buf, 8, trace.end);
    text_value(buf, 9, "http.request.method", method);
    text_value(buf, 9, "http.route", route);
    let mut failed = false;
    for (key, value) in &trace.attributes {
        key_value(buf, key, value);
        failed |= *key == "error.type";
    }
    if failed {
        status_error(buf);
    }
    let remote = match trace.parent {
        Some(_) => IS_REMOTE,
        None => 0,
    };
    fixed32(buf, 16, SAMPLED | HAS_IS_REMOTE | remote);
}

fn child_span(buf: &mut Vec<u8>, trace: &Finished, child: &Child) {
    ids(buf, trace, &child.id);
    bytes(buf, 4, &child.parent);
    match &child.what {
        What::Stage(name) => {
            bytes(buf, 5, name.as_bytes());
            varint_field(buf, 6, INTERNAL);
            fixed64(buf, 7, child.start);
            fixed64(buf, 8, child.end);
        }
        What::Attempt {
            operation,
            target,
            error,
        } => {
            // `provider:model`; a local model is named by its provider alone.
            let (system, model) = target.split_once(':').unwrap_or((target, target));
            tag(buf, 5, LEN);
            varint(buf, (operation.len() + 1 + model.len()) as u64);
            buf.extend_from_slice(operation.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(model.as_bytes());
            varint_field(buf, 6, CLIENT);
            fixed64(buf, 7, child.start);
            fixed64(buf, 8, child.end);
            text_value(buf, 9, "gen_ai.operation.name", operation.as_bytes());
            text_value(buf, 9, "gen_ai.system", system.as_bytes());
            text_value(buf, 9, "gen_ai.request.model", model.as_bytes());
            text_value(buf, 9, "ragway.target", target.as_bytes());
            if let Some(error) = error {
                text_value(buf, 9, "error.type", error.as_bytes());
                status_error(buf);
            }
        }
    }
    fixed32(buf, 16, SAMPLED | HAS_IS_REMOTE);
}

/// The trace id, span id and trace state every span of `trace` carries.
fn ids(buf: &mut Vec<u8>, trace: &Finished, span: &[u8; 8]) {
    bytes(buf, 1, &trace.trace);
    bytes(buf, 2, span);
    if let Some(state) = &trace.tracestate {
        bytes(buf, 3, state.as_bytes());
    }
}

fn status_error(buf: &mut Vec<u8>) {
    // Status { code: ERROR }: two bytes.
    tag(buf, 15, LEN);
    buf.extend_from_slice(&[2, 3 << 3 | VARINT, ERROR as u8]);
}

/// A span's attribute (field 9).
fn key_value(buf: &mut Vec<u8>, key: &str, value: &Value) {
    match value {
        Value::Text(text) => text_value(buf, 9, key, text.as_bytes()),
        Value::Shared(text) => text_value(buf, 9, key, text.as_bytes()),
        Value::Static(text) => text_value(buf, 9, key, text.as_bytes()),
        Value::Bool(b) => scalar_value(buf, key, 2, u64::from(*b)),
        // int64: two's complement, as a varint.
        Value::Int(n) => scalar_value(buf, key, 3, *n as u64),
    }
}

/// `KeyValue { key, value: AnyValue { string_value: text } }` as field `field`.
fn text_value(buf: &mut Vec<u8>, field: u32, key: &str, text: &[u8]) {
    let any = 1 + varint_len(text.len()) + text.len();
    let kv = 1 + varint_len(key.len()) + key.len() + 1 + varint_len(any) + any;
    tag(buf, field, LEN);
    varint(buf, kv as u64);
    bytes(buf, 1, key.as_bytes());
    tag(buf, 2, LEN);
    varint(buf, any as u64);
    bytes(buf, 1, text);
}

/// `KeyValue { key, value: AnyValue { <variant>: n } }` for a varint variant.
fn scalar_value(buf: &mut Vec<u8>, key: &str, variant: u32, n: u64) {
    let any = 1 + varint_len(n as usize);
    let kv = 1 + varint_len(key.len()) + key.len() + 1 + 1 + any;
    tag(buf, 9, LEN);
    varint(buf, kv as u64);
    bytes(buf, 1, key.as_bytes());
    tag(buf, 2, LEN);
    varint(buf, any as u64);
    varint_field(buf, variant, n);
}

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

fn varint_field(buf: &mut Vec<u8>, field: u32, n: u64) {
    tag(buf, field, VARINT);
    varint(buf, n);
}

fn fixed64(buf: &mut Vec<u8>, field: u32, n: u64) {
    tag(buf, field, FIXED64);
    buf.extend_from_slice(&n.to_le_bytes());
}

fn fixed32(buf: &mut Vec<u8>, field: u32, n: u32) {
    tag(buf, field, FIXED32);
    buf.extend_from_slice(&n.to_le_bytes());
}

#[inline]
fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// A length-delimited field whose contents `write` appends (the few that
/// enclose a whole batch). Its length is known only afterwards: one byte is
/// kept for it, and the contents are moved along when it needs more.
fn message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    tag(buf, field, LEN);
    let at = buf.len();
    buf.push(0);
    write(buf);
    let len = (buf.len() - at - 1) as u64;
    if len < 0x80 {
        buf[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(10);
        varint(&mut prefix, len);
        buf.splice(at..=at, prefix);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hyper::header::HeaderValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
    use prost::Message as _;

    use super::*;

    fn trace(children: Vec<Child>) -> Finished {
        Finished {
            trace: [7; 16],
            span: [1; 8],
            parent: Some([9; 8]),
            tracestate: Some(HeaderValue::from_static("vendor=value")),
            method: hyper::Method::POST,
            route: "/v1/chat/completions".to_owned(),
            start: 1_700_000_000_000_000_000,
            end: 1_700_000_000_250_000_000,
            attributes: vec![
                ("gen_ai.request.model", Value::Shared(Arc::from("chat"))),
                ("gen_ai.usage.input_tokens", Value::Int(-3)),
                ("ragway.stream", Value::Bool(true)),
                ("ragway.tenant", Value::Text("é".repeat(200))),
            ],
            children,
        }
    }

    fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
        let kv = span.attributes.iter().find(|kv| kv.key == key)?;
        kv.value.as_ref()?.value.as_ref()
    }

    #[test]
    fn what_is_written_is_read_back_by_the_otlp_protobuf_types() {
        let children = vec![
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
                    target: Arc::from("deepseek:deepseek-chat"),
                    error: Some("http_5xx"),
                },
            },
        ];
        // Many spans, so that the enclosing lengths need several bytes.
        let traces: Vec<Finished> = (0..50).map(|_| trace(children.clone())).collect();
        let written = request(&resource("ragway-test"), &traces);
        let read = ExportTraceServiceRequest::decode(written.as_slice()).unwrap();
        let resource_spans = &read.resource_spans[0];
        let service = &resource_spans.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
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
    fn a_length_past_one_byte_is_a_longer_varint() {
        let mut buf = Vec::new();
        message(&mut buf, 1, |buf| buf.extend_from_slice(&[0xab; 300]));
        // tag 0x0a, then 300 = 0b10_0101100 as 0xac 0x02
        assert_eq!(&buf[..3], &[0x0a, 0xac, 0x02]);
        assert_eq!(buf.len(), 303);
        assert!(buf[3..].iter().all(|&b| b == 0xab));
    }
}
