//! `POST /v1/messages`: Anthropic's Messages API, for clients written against it.
//! The request becomes a chat request (the system prompt first, text content
//! blocks as text) and goes through the chat pipeline like any chat (keys and
//! limits, personal data, cache, retrieval, failover, audit); the answer, whole or
//! streamed, is told back as a message with Anthropic's events and error shape.
//! The key may come in `x-api-key` as well as a bearer header.
//!
//! Not translated yet, and refused with a 400 naming the field: tool use
//! (`tools`, `tool_use` and `tool_result` blocks) and images.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::body::parse_json;
use super::chat::{Called, respond_with, serve, sse_stream};
use crate::error::GatewayError;
use crate::pipeline::{Reply, ReplyBody};
use crate::state::AppState;
use crate::wire::{ChatCompletion, ChatRequest};

/// The request fields this endpoint reads.
const FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "system",
    "messages",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "metadata",
];

pub async fn messages(
    State(state): State<AppState>,
    called: Called,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = parse_json(&headers, body, state.config.server.max_body_bytes)
        .and_then(as_chat)
        .and_then(|r: ChatRequest| r.validate().map(|()| r));
    serve(&state, called, &headers, request, message_reply).await
}

fn invalid(param: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(message, Some(param.to_owned()))
}

/// The Messages request as a chat request.
fn as_chat(asked: Map<String, Value>) -> Result<ChatRequest, GatewayError> {
    if let Some(unknown) = asked.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let why = match unknown.as_str() {
            "tools" | "tool_choice" => "tool use is not translated by this gateway yet",
            _ => "not a field of a messages request",
        };
        return Err(invalid(unknown, format!("`{unknown}`: {why}")));
    }
    let max_tokens = asked
        .get("max_tokens")
        .and_then(Value::as_u64)
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            invalid(
                "max_tokens",
                "`max_tokens` is required: a whole number of at least 1",
            )
        })?;
    let mut messages = Vec::new();
    match asked.get("system") {
        None | Some(Value::Null) => {}
        Some(system) => {
            messages.push(json!({"role": "system", "content": text_of("system", system)?}))
        }
    }
    let given = asked
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("messages", "`messages` must hold at least one message"))?;
    for (i, message) in given.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        if !matches!(role, "user" | "assistant") {
            return Err(invalid(
                &format!("messages[{i}].role"),
                "a message's role is `user` or `assistant`",
            ));
        }
        let content = text_of(&format!("messages[{i}].content"), &message["content"])?;
        messages.push(json!({"role": role, "content": content}));
    }
    let mut chat = json!({
        "model": asked.get("model").cloned().unwrap_or(Value::Null),
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": asked.get("stream").and_then(Value::as_bool).unwrap_or(false),
        // The usage goes on the final event.
        "stream_options": {"include_usage": true},
    });
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stop_sequences", "stop"),
    ] {
        if let Some(value) = asked.get(from).filter(|v| !v.is_null()) {
            chat[to] = value.clone();
        }
    }
    if let Some(user) = asked.get("metadata").and_then(|m| m.get("user_id")) {
        chat["user"] = user.clone();
    }
    if !chat["stream"].as_bool().unwrap_or(false) {
        chat.as_object_mut().map(|c| c.remove("stream_options"));
    }
    serde_json::from_value(chat).map_err(|e| GatewayError::invalid(e.to_string(), None))
}

/// The text of a content: a string, or text blocks (joined).
fn text_of(param: &str, content: &Value) -> Result<String, GatewayError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (i, block) in blocks.iter().enumerate() {
                match block["type"].as_str() {
                    Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
                    Some(kind) => {
                        return Err(invalid(
                            &format!("{param}[{i}].type"),
                            format!("`{kind}` blocks are not translated by this gateway yet"),
                        ));
                    }
                    None => {
                        return Err(invalid(
                            &format!("{param}[{i}].type"),
                            "a block needs a type",
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(invalid(param, "content is text or a list of text blocks")),
    }
}

/// Anthropic's reason for the end of a message.
fn stop_reason(finish: Option<&str>) -> Option<&'static str> {
    finish.map(|f| match f {
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    })
}

fn message_reply(reply: Reply) -> Response {
    respond_with(reply, |body| match body {
        ReplyBody::Whole(completion) => Json(message(*completion)).into_response(),
        ReplyBody::Stream(frames) => {
            let events = futures_util::stream::unfold(
                (frames, Events::default()),
                |(mut frames, mut events)| async move {
                    let frame = frames.recv().await?;
                    let out = events.of(&frame);
                    Some((out, (frames, events)))
                },
            );
            sse_stream(events)
        }
    })
}

fn message(completion: ChatCompletion) -> Value {
    let choice = completion.choices.into_iter().next();
    let text = choice
        .as_ref()
        .and_then(|c| c.message.content.clone())
        .unwrap_or_default();
    let finish = choice.as_ref().and_then(|c| c.finish_reason.as_deref());
    let usage = completion.usage.unwrap_or_default();
    let mut body = json!({
        "id": completion.id.replacen("chatcmpl-", "msg_", 1),
        "type": "message",
        "role": "assistant",
        "model": completion.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
    });
    if let Some(ragway) = completion.extra.get("ragway") {
        body["ragway"] = ragway.clone();
    }
    body
}

/// A chat stream told as Anthropic's events.
#[derive(Default)]
struct Events {
    started: bool,
    stop_reason: Option<&'static str>,
    output_tokens: u64,
    ragway: Option<Value>,
}

impl Events {
    fn of(&mut self, frame: &Bytes) -> Bytes {
        let mut out = String::new();
        let data = frame
            .strip_prefix(b"data: ")
            .and_then(|d| d.strip_suffix(b"\n\n"))
            .unwrap_or_default();
        if data == b"[DONE]" {
            event(
                &mut out,
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            );
            let mut delta = json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": self.output_tokens},
            });
            if let Some(ragway) = self.ragway.take() {
                delta["ragway"] = ragway;
            }
            event(&mut out, "message_delta", delta);
            event(&mut out, "message_stop", json!({"type": "message_stop"}));
            return Bytes::from(out);
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            return Bytes::new();
        };
        if let Some(error) = chunk.get("error") {
            let message = error["message"]
                .as_str()
                .unwrap_or("the answer was cut off upstream");
            let body = json!({"type": "error", "error": {"type": "api_error", "message": message}});
            event(&mut out, "error", body);
            return Bytes::from(out);
        }
        if !self.started {
            self.started = true;
            let id = chunk["id"]
                .as_str()
                .unwrap_or_default()
                .replacen("chatcmpl-", "msg_", 1);
            let start = json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": chunk["model"],
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}});
            event(&mut out, "message_start", start);
            let block = json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}});
            event(&mut out, "content_block_start", block);
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.output_tokens = usage["completion_tokens"].as_u64().unwrap_or_default();
        }
        if let Some(ragway) = chunk.get("ragway") {
            self.ragway = Some(ragway.clone());
        }
        let choice = &chunk["choices"][0];
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.stop_reason = stop_reason(Some(finish));
        }
        if let Some(text) = choice["delta"]["content"]
            .as_str()
            .filter(|t| !t.is_empty())
        {
            let delta = json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": text}});
            event(&mut out, "content_block_delta", delta);
        }
        Bytes::from(out)
    }
}

fn event(out: &mut String, name: &str, data: Value) {
    out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
}

/// Tells any error answer of `/v1/messages` in Anthropic's shape:
/// `{"type": "error", "error": {"type", "message"}}`.
pub async fn anthropic_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if status.is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let kind = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => "invalid_request_error",
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}}).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}
