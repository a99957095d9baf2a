//! `POST /v1/messages`: Anthropic's Messages API, for clients written against it.
//! The request becomes a chat request (the system prompt first, text content
//! blocks as text) and goes through the chat pipeline like any chat (keys and
//! limits, personal data, cache, retrieval, failover, audit); the answer, whole or
//! streamed, is told back as a message with Anthropic's events and error shape.
//! The key may come in `x-api-key` as well as a bearer header.
//!
//! Tool use is translated both ways: `tools` become function tools, `tool_use`
//! blocks the assistant's tool calls, `tool_result` blocks tool messages; images
//! (base64 or by URL) become image parts. Anthropic's own tools (web search, code
//! execution, the computer and text-editor tools, …) are refused with a 400
//! naming the field.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::body::{invalid, only_known, parse_json};
use super::chat::{Called, respond_with, serve, sse_stream};
use super::frame::{Chunk, Frame};
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
    "tools",
    "tool_choice",
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

/// The Messages request as a chat request.
fn as_chat(asked: Map<String, Value>) -> Result<ChatRequest, GatewayError> {
    only_known(&asked, FIELDS, "a messages request")?;
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
            let text = match system {
                Value::String(text) => text.clone(),
                Value::Array(blocks) => texts("system", blocks)?,
                _ => return Err(invalid("system", "`system` is text or text blocks")),
            };
            messages.push(json!({"role": "system", "content": text}))
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
        turn(
            &mut messages,
            &format!("messages[{i}].content"),
            role,
            &message["content"],
        )?;
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
    if let Some(tools) = asked.get("tools").filter(|v| !v.is_null()) {
        chat["tools"] = Value::Array(function_tools(tools)?);
    }
    if let Some(choice) = asked.get("tool_choice").filter(|v| !v.is_null()) {
        let (choice, parallel) = tool_choice(choice)?;
        chat["tool_choice"] = choice;
        if let Some(parallel) = parallel {
            chat["parallel_tool_calls"] = json!(parallel);
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

/// One turn's content as chat messages: a user turn's tool results become tool
/// messages (first, as Anthropic places them), an assistant turn's tool uses its
/// tool calls; text and images stay the turn's content.
fn turn(
    messages: &mut Vec<Value>,
    param: &str,
    role: &str,
    content: &Value,
) -> Result<(), GatewayError> {
    let blocks = match content {
        Value::String(text) => {
            messages.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(invalid(
                param,
                "content is text or a list of content blocks",
            ));
        }
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let at = format!("{param}[{i}]");
        match (role, block["type"].as_str()) {
            (_, Some("text")) => parts
                .push(json!({"type": "text", "text": block["text"].as_str().unwrap_or_default()})),
            ("user", Some("image")) => parts.push(image(&at, &block["source"])?),
            ("user", Some("tool_result")) => {
                let Some(id) = block["tool_use_id"].as_str() else {
                    return Err(invalid(
                        &format!("{at}.tool_use_id"),
                        "a tool result names its `tool_use_id`",
                    ));
                };
                let mut output = match &block["content"] {
                    Value::Null => String::new(),
                    Value::String(text) => text.clone(),
                    Value::Array(inner) => texts(&format!("{at}.content"), inner)?,
                    _ => {
                        return Err(invalid(
                            &format!("{at}.content"),
                            "a tool result is text or text blocks",
                        ));
                    }
                };
                if block["is_error"] == true {
                    output.insert_str(0, "Error: ");
                }
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": output}));
            }
            ("assistant", Some("tool_use")) => {
                let (Some(id), Some(name)) = (block["id"].as_str(), block["name"].as_str()) else {
                    return Err(invalid(&at, "a tool use needs its `id` and `name`"));
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
            // Reasoning from an earlier answer: opaque to another model, left out.
            ("assistant", Some("thinking" | "redacted_thinking")) => {}
            (_, Some(kind)) => {
                return Err(invalid(
                    &format!("{at}.type"),
                    format!("`{kind}` blocks are not translated by this gateway in a {role} turn"),
                ));
            }
            (_, None) => return Err(invalid(&format!("{at}.type"), "a block needs a type")),
        }
    }
    // A user turn of tool results alone adds no user message.
    if parts.is_empty() && calls.is_empty() && messages.last().is_some_and(|m| m["role"] == "tool")
    {
        return Ok(());
    }
    let only_text = parts.iter().all(|p| p["type"] == "text");
    let content = if only_text {
        let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        (!text.is_empty() || calls.is_empty()).then(|| json!(text))
    } else {
        Some(Value::Array(parts))
    };
    let mut message = json!({"role": role, "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    messages.push(message);
    Ok(())
}

/// Text blocks, joined.
fn texts(param: &str, blocks: &[Value]) -> Result<String, GatewayError> {
    let mut text = String::new();
    for (i, block) in blocks.iter().enumerate() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            _ => {
                return Err(invalid(
                    &format!("{param}[{i}].type"),
                    "only text blocks are translated here",
                ));
            }
        }
    }
    Ok(text)
}

/// An image block's source as a chat image part.
fn image(param: &str, source: &Value) -> Result<Value, GatewayError> {
    let url = match source["type"].as_str() {
        Some("base64") => format!(
            "data:{};base64,{}",
            source["media_type"].as_str().unwrap_or("image/png"),
            source["data"].as_str().unwrap_or_default()
        ),
        Some("url") => source["url"].as_str().unwrap_or_default().to_owned(),
        _ => {
            return Err(invalid(
                &format!("{param}.source.type"),
                "an image is given as `base64` data or by `url`",
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Client tools in chat's shape; Anthropic's own tools refused by name.
fn function_tools(tools: &Value) -> Result<Vec<Value>, GatewayError> {
    let Value::Array(tools) = tools else {
        return Err(invalid("tools", "`tools` is a list"));
    };
    let mut chat = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        if let Some(kind) = tool["type"].as_str().filter(|k| *k != "custom") {
            return Err(invalid(
                &format!("tools[{i}].type"),
                format!(
                    "`{kind}` is one of Anthropic's own tools; this gateway passes on client tools only"
                ),
            ));
        }
        let Some(name) = tool["name"].as_str() else {
            return Err(invalid(&format!("tools[{i}].name"), "a tool needs a name"));
        };
        let mut function = json!({"name": name,
            "parameters": tool.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
        if let Some(description) = tool.get("description").filter(|v| v.is_string()) {
            function["description"] = description.clone();
        }
        chat.push(json!({"type": "function", "function": function}));
    }
    Ok(chat)
}

/// `tool_choice` in chat's words, and whether calls may run in parallel.
fn tool_choice(choice: &Value) -> Result<(Value, Option<bool>), GatewayError> {
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|off| !off);
    let chat = match choice["type"].as_str() {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice["name"].as_str() {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => return Err(invalid("tool_choice.name", "name the tool to use")),
        },
        _ => {
            return Err(invalid(
                "tool_choice.type",
                "`tool_choice` is `auto`, `any`, `tool` or `none`",
            ));
        }
    };
    Ok((chat, parallel))
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
    let finish = choice.as_ref().and_then(|c| c.finish_reason.clone());
    let mut content = Vec::new();
    if let Some(message) = choice.map(|c| c.message) {
        let text = message.content.unwrap_or_default();
        let calls = message.tool_calls.unwrap_or_default();
        let calls = calls.as_array().map(Vec::as_slice).unwrap_or_default();
        if !text.is_empty() || calls.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in calls {
            content.push(json!({"type": "tool_use", "id": call["id"],
                "name": call["function"]["name"],
                "input": input_of(call["function"]["arguments"].as_str().unwrap_or_default())}));
        }
    }
    let usage = completion.usage.unwrap_or_default();
    let mut body = json!({
        "id": completion.id.replacen("chatcmpl-", "msg_", 1),
        "type": "message",
        "role": "assistant",
        "model": completion.model,
        "content": content,
        "stop_reason": stop_reason(finish.as_deref()),
        "stop_sequence": null,
        "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
    });
    if let Some(ragway) = completion.extra.get("ragway") {
        body["ragway"] = ragway.clone();
    }
    body
}

/// A tool call's arguments as a tool use's `input`: the object they spell, or
/// (when a model wrote something else) the text kept under `arguments`.
fn input_of(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(input @ Value::Object(_)) => input,
        _ if arguments.trim().is_empty() => json!({}),
        _ => json!({"arguments": arguments}),
    }
}

/// The content block a stream is writing.
#[derive(Clone, Copy, PartialEq)]
enum Block {
    Text,
    /// A tool use, by the chat tool call's index.
    Tool(u64),
}

/// A chat stream told as Anthropic's events.
#[derive(Default)]
struct Events {
    started: bool,
    /// The block being written, and its index.
    open: Option<(Block, usize)>,
    blocks: usize,
    stop_reason: Option<&'static str>,
    input_tokens: u64,
    output_tokens: u64,
    ragway: Option<Value>,
}

impl Events {
    fn of(&mut self, frame: &Bytes) -> Bytes {
        let mut out = String::new();
        match Frame::read(frame) {
            Frame::Done => self.finish(&mut out),
            Frame::Chunk(chunk) => self.chunk(&mut out, &chunk),
            Frame::Other => {}
        }
        Bytes::from(out)
    }

    fn finish(&mut self, out: &mut String) {
        if self.blocks == 0 {
            self.open(out, Block::Text, json!({"type": "text", "text": ""}));
        }
        self.close(out);
        let mut delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
        });
        if let Some(ragway) = self.ragway.take() {
            delta["ragway"] = ragway;
        }
        event(out, "message_delta", delta);
        event(out, "message_stop", json!({"type": "message_stop"}));
    }

    fn chunk(&mut self, out: &mut String, chunk: &Chunk<'_>) {
        if let Some(error) = &chunk.error {
            let message = error
                .message
                .as_deref()
                .unwrap_or("the answer was cut off upstream");
            let body = json!({"type": "error", "error": {"type": "api_error", "message": message}});
            event(out, "error", body);
            return;
        }
        if !self.started {
            self.started = true;
            let id = chunk
                .id
                .as_deref()
                .unwrap_or_default()
                .replacen("chatcmpl-", "msg_", 1);
            let start = json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": chunk.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}});
            event(out, "message_start", start);
        }
        if let Some(usage) = chunk.usage {
            self.input_tokens = usage.prompt_tokens;
            self.output_tokens = usage.completion_tokens;
        }
        if let Some(ragway) = chunk.ragway {
            self.ragway = serde_json::from_str(ragway.get()).ok();
        }
        let Some(choice) = chunk.choice() else {
            return;
        };
        if let Some(finish) = &choice.finish_reason {
            self.stop_reason = stop_reason(Some(finish));
        }
        let Some(delta) = &choice.delta else {
            return;
        };
        if let Some(text) = delta.text() {
            if self.open.map(|(b, _)| b) != Some(Block::Text) {
                self.open(out, Block::Text, json!({"type": "text", "text": ""}));
            }
            self.text_delta(out, text);
        }
        for call in delta.tool_calls.iter().flatten() {
            let block = Block::Tool(call.index.unwrap_or_default());
            if self.open.map(|(b, _)| b) != Some(block) {
                let start = json!({"type": "tool_use", "id": call.id,
                    "name": call.name(), "input": {}});
                self.open(out, block, start);
            }
            if let Some(part) = call.arguments() {
                self.delta(
                    out,
                    json!({"type": "input_json_delta", "partial_json": part}),
                );
            }
        }
    }

    /// The commonest event, written without building a tree.
    fn text_delta(&mut self, out: &mut String, text: &str) {
        let Some((_, index)) = self.open else { return };
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n",
            Value::String(text.to_owned())
        );
    }

    /// Closes the open block and starts the next.
    fn open(&mut self, out: &mut String, block: Block, content_block: Value) {
        self.close(out);
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some((block, index));
        let start =
            json!({"type": "content_block_start", "index": index, "content_block": content_block});
        event(out, "content_block_start", start);
    }

    fn delta(&mut self, out: &mut String, delta: Value) {
        let Some((_, index)) = self.open else { return };
        let body = json!({"type": "content_block_delta", "index": index, "delta": delta});
        event(out, "content_block_delta", body);
    }

    fn close(&mut self, out: &mut String) {
        if let Some((_, index)) = self.open.take() {
            let stop = json!({"type": "content_block_stop", "index": index});
            event(out, "content_block_stop", stop);
        }
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
