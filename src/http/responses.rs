//! `POST /v1/responses`: OpenAI's Responses API, for clients written against it
//! (coding agents, the newer SDK helpers). The request becomes a chat request
//! (instructions first, then the input items: messages, function calls and their
//! outputs) and goes through the chat pipeline like any chat (keys and limits,
//! personal data, cache, retrieval, failover, audit); the answer, whole or
//! streamed, is told back as a response object with its typed events.
//!
//! Nothing is stored: every request carries its whole conversation, as with
//! `store: false`. `store: true`, `previous_response_id`, `conversation`,
//! `background` and item references need stored responses and are refused with a
//! 400 naming the field, as are the tools OpenAI runs on its own servers (web
//! search, file search, code interpreter, …): function tools are passed on.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::body::{invalid, only_known, parse_json};
use super::chat::{Called, respond_with, serve, sse_stream};
use super::frame::{Chunk, Frame, ToolCall};
use crate::error::GatewayError;
use crate::pipeline::{Reply, ReplyBody};
use crate::state::AppState;
use crate::wire::{ChatCompletion, ChatRequest, Usage};

/// The request fields this endpoint reads; any other is refused by name.
const FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_output_tokens",
    "text",
    "reasoning",
    "metadata",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    "include",
    "truncation",
    "store",
    "previous_response_id",
    "conversation",
    "background",
    "prompt",
    "top_logprobs",
    "max_tool_calls",
    "ragway",
];

pub async fn responses(
    State(state): State<AppState>,
    called: Called,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let asked =
        parse_json::<Map<String, Value>>(&headers, body, state.config.server.max_body_bytes);
    let echo = asked.as_ref().map(echo_of).unwrap_or_default();
    let request = asked
        .and_then(as_chat)
        .and_then(|r: ChatRequest| r.validate().map(|()| r));
    serve(&state, called, &headers, request, move |reply| {
        response_reply(reply, echo)
    })
    .await
}

/// The Responses request as a chat request.
fn as_chat(asked: Map<String, Value>) -> Result<ChatRequest, GatewayError> {
    only_known(&asked, FIELDS, "a responses request")?;
    refuse_what_needs_storage(&asked)?;
    let mut messages = Vec::new();
    if let Some(instructions) = asked.get("instructions").filter(|v| !v.is_null()) {
        let text = instructions
            .as_str()
            .ok_or_else(|| invalid("instructions", "`instructions` is text"))?;
        messages.push(json!({"role": "system", "content": text}));
    }
    match asked.get("input") {
        Some(Value::String(text)) if !text.is_empty() => {
            messages.push(json!({"role": "user", "content": text}))
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                input_item(&mut messages, &format!("input[{i}]"), item)?;
            }
        }
        _ => {
            return Err(invalid(
                "input",
                "`input` is required: text, or a list of at least one item",
            ));
        }
    }
    let stream = asked
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut chat = json!({
        "model": asked.get("model").cloned().unwrap_or(Value::Null),
        "messages": messages,
        "stream": stream,
    });
    if stream {
        // The usage goes on the final event.
        chat["stream_options"] = json!({"include_usage": true});
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("max_output_tokens", "max_tokens"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("user", "user"),
        ("ragway", "ragway"),
    ] {
        if let Some(value) = asked.get(from).filter(|v| !v.is_null()) {
            chat[to] = value.clone();
        }
    }
    if chat.get("user").is_none()
        && let Some(id) = asked.get("safety_identifier").filter(|v| v.is_string())
    {
        chat["user"] = id.clone();
    }
    if let Some(effort) = asked
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|e| !e.is_null())
    {
        chat["reasoning_effort"] = effort.clone();
    }
    if let Some(format) = asked.get("text").and_then(|t| t.get("format"))
        && let Some(format) = response_format(format)?
    {
        chat["response_format"] = format;
    }
    if let Some(tools) = asked.get("tools").filter(|v| !v.is_null()) {
        let tools = function_tools(tools)?;
        if !tools.is_empty() {
            chat["tools"] = Value::Array(tools);
        }
    }
    if let Some(choice) = asked.get("tool_choice").filter(|v| !v.is_null()) {
        chat["tool_choice"] = tool_choice(choice)?;
    }
    serde_json::from_value(chat).map_err(|e| GatewayError::invalid(e.to_string(), None))
}

/// What only a server that keeps responses can do, refused by name.
fn refuse_what_needs_storage(asked: &Map<String, Value>) -> Result<(), GatewayError> {
    let set = |field: &str| asked.get(field).is_some_and(|v| !v.is_null() && v != false);
    for field in ["previous_response_id", "conversation", "prompt"] {
        if set(field) {
            return Err(invalid(
                field,
                format!(
                    "`{field}`: this gateway stores no responses; send the whole conversation as `input`"
                ),
            ));
        }
    }
    if set("store") {
        return Err(invalid(
            "store",
            "`store`: this gateway stores no responses; send `store: false` (or leave it out) and the whole conversation as `input`",
        ));
    }
    if set("background") {
        return Err(invalid(
            "background",
            "`background`: responses are answered while the client waits",
        ));
    }
    if asked
        .get("truncation")
        .is_some_and(|v| v != "disabled" && !v.is_null())
    {
        return Err(invalid(
            "truncation",
            "`truncation`: only `disabled` (a conversation too long for the model is refused)",
        ));
    }
    if asked
        .get("top_logprobs")
        .is_some_and(|v| v != 0 && !v.is_null())
    {
        return Err(invalid(
            "top_logprobs",
            "`top_logprobs`: log probabilities are not passed on",
        ));
    }
    if set("max_tool_calls") {
        return Err(invalid(
            "max_tool_calls",
            "`max_tool_calls`: built-in tools are not run by this gateway",
        ));
    }
    Ok(())
}

/// One input item, added to the chat messages.
fn input_item(messages: &mut Vec<Value>, at: &str, item: &Value) -> Result<(), GatewayError> {
    let kind = item["type"].as_str();
    if item.get("role").is_some() && matches!(kind, None | Some("message")) {
        let role = match item["role"].as_str().unwrap_or_default() {
            "user" => "user",
            "assistant" => "assistant",
            // Many providers know no `developer` role; it means the same.
            "system" | "developer" => "system",
            _ => {
                return Err(invalid(
                    &format!("{at}.role"),
                    "a message's role is `user`, `assistant`, `system` or `developer`",
                ));
            }
        };
        let content = content_of(&format!("{at}.content"), &item["content"])?;
        messages.push(json!({"role": role, "content": content}));
        return Ok(());
    }
    match kind {
        Some("function_call") => {
            let (Some(call_id), Some(name)) = (item["call_id"].as_str(), item["name"].as_str())
            else {
                return Err(invalid(
                    at,
                    "a function call needs its `call_id` and `name`",
                ));
            };
            let call = json!({"id": call_id, "type": "function", "function": {
                "name": name,
                "arguments": item["arguments"].as_str().unwrap_or("{}"),
            }});
            // Calls made in one turn belong to one assistant message.
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    match last["tool_calls"].as_array_mut() {
                        Some(calls) => calls.push(call),
                        None => last["tool_calls"] = json!([call]),
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
            Ok(())
        }
        Some("function_call_output") => {
            let Some(call_id) = item["call_id"].as_str() else {
                return Err(invalid(
                    &format!("{at}.call_id"),
                    "a function call's output needs its `call_id`",
                ));
            };
            let output = match &item["output"] {
                Value::String(text) => text.clone(),
                parts @ Value::Array(_) => text_of(&format!("{at}.output"), parts)?,
                _ => {
                    return Err(invalid(
                        &format!("{at}.output"),
                        "a function call's output is text",
                    ));
                }
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            Ok(())
        }
        // An earlier answer's reasoning: opaque to every other model, and left out.
        Some("reasoning") => Ok(()),
        Some("item_reference") => Err(invalid(
            &format!("{at}.type"),
            "item references need stored responses; this gateway stores none: send the item itself",
        )),
        Some(other) => Err(invalid(
            &format!("{at}.type"),
            format!("`{other}` items are not translated by this gateway"),
        )),
        None => Err(invalid(at, "an input item needs a `type` or a `role`")),
    }
}

/// A message's content as chat content: text, or parts when it holds images.
fn content_of(param: &str, content: &Value) -> Result<Value, GatewayError> {
    let Value::Array(parts) = content else {
        return match content {
            Value::String(text) => Ok(Value::String(text.clone())),
            _ => Err(invalid(param, "content is text or a list of content parts")),
        };
    };
    if !parts.iter().any(|p| p["type"] == "input_image") {
        return text_of(param, content).map(Value::String);
    }
    let mut chat_parts = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        chat_parts.push(match part["type"].as_str() {
            Some("input_image") => {
                let Some(url) = part["image_url"].as_str() else {
                    return Err(invalid(
                        &format!("{param}[{i}].image_url"),
                        "an image is passed on by its `image_url` (file ids need stored files)",
                    ));
                };
                let detail = part["detail"].as_str().unwrap_or("auto");
                json!({"type": "image_url", "image_url": {"url": url, "detail": detail}})
            }
            _ => json!({"type": "text", "text": part_text(&format!("{param}[{i}]"), part)?}),
        });
    }
    Ok(Value::Array(chat_parts))
}

/// The text of a list of text parts, joined.
fn text_of(param: &str, content: &Value) -> Result<String, GatewayError> {
    let mut text = String::new();
    for (i, part) in content.as_array().into_iter().flatten().enumerate() {
        text.push_str(part_text(&format!("{param}[{i}]"), part)?);
    }
    Ok(text)
}

fn part_text<'a>(param: &str, part: &'a Value) -> Result<&'a str, GatewayError> {
    match part["type"].as_str() {
        Some("input_text" | "output_text" | "text") => {
            Ok(part["text"].as_str().unwrap_or_default())
        }
        Some("refusal") => Ok(part["refusal"].as_str().unwrap_or_default()),
        Some(kind) => Err(invalid(
            &format!("{param}.type"),
            format!("`{kind}` parts are not translated by this gateway"),
        )),
        None => Err(invalid(
            &format!("{param}.type"),
            "a content part needs a type",
        )),
    }
}

/// `text.format` as chat's `response_format` (none for plain text).
fn response_format(format: &Value) -> Result<Option<Value>, GatewayError> {
    match format["type"].as_str() {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(value) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.to_owned(), value.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        Some(other) => Err(invalid(
            "text.format.type",
            format!("`{other}` is not a text format"),
        )),
    }
}

/// Function tools in chat's shape; OpenAI's own tools refused by name.
fn function_tools(tools: &Value) -> Result<Vec<Value>, GatewayError> {
    let Value::Array(tools) = tools else {
        return Err(invalid("tools", "`tools` is a list"));
    };
    let mut chat = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        match tool["type"].as_str() {
            Some("function") => {
                let Some(name) = tool["name"].as_str() else {
                    return Err(invalid(
                        &format!("tools[{i}].name"),
                        "a function tool needs a name",
                    ));
                };
                let mut function = json!({"name": name});
                for key in ["description", "parameters", "strict"] {
                    if let Some(value) = tool.get(key).filter(|v| !v.is_null()) {
                        function[key] = value.clone();
                    }
                }
                chat.push(json!({"type": "function", "function": function}));
            }
            Some(other) => {
                return Err(invalid(
                    &format!("tools[{i}].type"),
                    format!(
                        "`{other}` tools run on OpenAI's own servers; this gateway passes on function tools only"
                    ),
                ));
            }
            None => return Err(invalid(&format!("tools[{i}].type"), "a tool needs a type")),
        }
    }
    Ok(chat)
}

fn tool_choice(choice: &Value) -> Result<Value, GatewayError> {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(named) if named.get("type").is_some_and(|t| t == "function") => {
            match named.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(invalid("tool_choice.name", "name the function to call")),
            }
        }
        _ => Err(invalid(
            "tool_choice",
            "`tool_choice` is `auto`, `none`, `required` or a function named",
        )),
    }
}

/// The request's settings a response object repeats back.
fn echo_of(asked: &Map<String, Value>) -> Value {
    let given = |key: &str, default: Value| {
        asked
            .get(key)
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(default)
    };
    json!({
        "instructions": given("instructions", Value::Null),
        "max_output_tokens": given("max_output_tokens", Value::Null),
        "metadata": given("metadata", json!({})),
        "parallel_tool_calls": given("parallel_tool_calls", json!(true)),
        "previous_response_id": null,
        "reasoning": given("reasoning", Value::Null),
        "store": false,
        "temperature": given("temperature", Value::Null),
        "text": given("text", json!({"format": {"type": "text"}})),
        "tool_choice": given("tool_choice", json!("auto")),
        "tools": given("tools", json!([])),
        "top_p": given("top_p", Value::Null),
        "truncation": "disabled",
        "user": given("user", Value::Null),
    })
}

/// A response object: the echoed settings plus what this one holds.
fn response_object(head: &Head, status: &str, output: Vec<Value>, echo: &Value) -> Value {
    let mut response = json!({
        "id": head.id,
        "object": "response",
        "created_at": head.created_at,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "model": head.model,
        "output": output,
        "usage": null,
    });
    if let (Value::Object(response), Value::Object(echo)) = (&mut response, echo) {
        response.extend(echo.clone());
    }
    response
}

/// What names a response: its id (the chat id's, as `resp_…`), time and model.
#[derive(Default)]
struct Head {
    id: String,
    created_at: u64,
    model: Value,
}

impl Head {
    fn of(chat_id: &str, created_at: u64, model: Value) -> Head {
        Head {
            id: format!("resp_{}", chat_id.trim_start_matches("chatcmpl-")),
            created_at,
            model,
        }
    }

    fn message_id(&self) -> String {
        self.id.replacen("resp_", "msg_", 1)
    }

    fn call_id(&self, index: u64) -> String {
        format!("{}_{index}", self.id.replacen("resp_", "fc_", 1))
    }
}

/// How a chat finish ends a response: its status and why it is incomplete.
fn ending(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn usage_of(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens()},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [text_part(text)]})
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status})
}

fn response_reply(reply: Reply, echo: Value) -> Response {
    respond_with(reply, |body| match body {
        ReplyBody::Whole(completion) => Json(whole(*completion, &echo)).into_response(),
        ReplyBody::Stream(frames) => {
            let events = futures_util::stream::unfold(
                (frames, Events::new(echo)),
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

/// A whole chat answer as a response object.
fn whole(completion: ChatCompletion, echo: &Value) -> Value {
    let head = Head::of(
        &completion.id,
        completion.created,
        Value::String(completion.model),
    );
    let choice = completion.choices.into_iter().next();
    let finish = choice.as_ref().and_then(|c| c.finish_reason.clone());
    let mut output = Vec::new();
    if let Some(message) = choice.map(|c| c.message) {
        if let Some(text) = message.content.filter(|t| !t.is_empty()) {
            output.push(message_item(&head.message_id(), &text, "completed"));
        }
        let calls = message.tool_calls.unwrap_or_default();
        for (i, call) in calls.as_array().into_iter().flatten().enumerate() {
            output.push(call_item(
                &head.call_id(i as u64),
                call["id"].as_str().unwrap_or_default(),
                call["function"]["name"].as_str().unwrap_or_default(),
                call["function"]["arguments"].as_str().unwrap_or_default(),
                "completed",
            ));
        }
    }
    let (status, incomplete) = ending(finish.as_deref());
    let mut response = response_object(&head, status, output, echo);
    response["incomplete_details"] = incomplete;
    response["usage"] = usage_of(&completion.usage.unwrap_or_default());
    if let Some(ragway) = completion.extra.get("ragway") {
        response["ragway"] = ragway.clone();
    }
    response
}

/// A function call being streamed.
struct Call {
    output_index: usize,
    id: String,
    call_id: String,
    name: String,
    arguments: String,
}

/// A chat stream told as the Responses API's typed events.
struct Events {
    echo: Value,
    head: Head,
    sequence: u64,
    started: bool,
    ended: bool,
    /// The message item, once text has come: its output index and text so far.
    text: Option<(usize, String)>,
    /// Function calls by their chat index.
    calls: BTreeMap<u64, Call>,
    items: usize,
    finish: Option<String>,
    usage: Option<Usage>,
    ragway: Option<Value>,
    /// The message item's id, as JSON (a string, quoted).
    message_id: String,
}

impl Events {
    fn new(echo: Value) -> Events {
        Events {
            echo,
            head: Head::default(),
            sequence: 0,
            started: false,
            ended: false,
            text: None,
            calls: BTreeMap::new(),
            items: 0,
            finish: None,
            usage: None,
            ragway: None,
            message_id: String::new(),
        }
    }

    fn of(&mut self, frame: &Bytes) -> Bytes {
        let mut out = String::new();
        if self.ended {
            return Bytes::new();
        }
        match Frame::read(frame) {
            Frame::Done => self.finish(&mut out),
            Frame::Chunk(chunk) => self.chunk(&mut out, &chunk),
            Frame::Other => {}
        }
        Bytes::from(out)
    }

    fn chunk(&mut self, out: &mut String, chunk: &Chunk<'_>) {
        if let Some(error) = &chunk.error {
            self.fail(out, error.message.as_deref());
            return;
        }
        if !self.started {
            self.started = true;
            self.head = Head::of(
                chunk.id.as_deref().unwrap_or_default(),
                chunk.created.unwrap_or_default(),
                json!(chunk.model),
            );
            self.message_id = Value::String(self.head.message_id()).to_string();
            // Both events carry the same response: written once.
            let response = response_object(&self.head, "in_progress", vec![], &self.echo);
            let fields = format!("\"response\":{response}");
            self.write(out, "response.created", &fields);
            self.write(out, "response.in_progress", &fields);
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        if let Some(ragway) = chunk.ragway {
            self.ragway = serde_json::from_str(ragway.get()).ok();
        }
        let Some(choice) = chunk.choice() else {
            return;
        };
        if let Some(finish) = &choice.finish_reason {
            self.finish = Some(finish.to_string());
        }
        let Some(delta) = &choice.delta else {
            return;
        };
        if let Some(text) = delta.text() {
            self.text_delta(out, text);
        }
        for call in delta.tool_calls.iter().flatten() {
            self.call_delta(out, call);
        }
    }

    fn text_delta(&mut self, out: &mut String, delta: &str) {
        let index = match &self.text {
            Some((index, _)) => *index,
            None => {
                let id = self.head.message_id();
                let index = self.next_item();
                let item = json!({"type": "message", "id": id, "status": "in_progress",
                    "role": "assistant", "content": []});
                self.event(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                );
                self.event(
                    out,
                    "response.content_part.added",
                    json!({"item_id": id,
                    "output_index": index, "content_index": 0, "part": text_part("")}),
                );
                self.text = Some((index, String::new()));
                index
            }
        };
        if let Some((_, text)) = &mut self.text {
            text.push_str(delta);
        }
        // The commonest event, written without building a tree.
        let fields = format!(
            "\"item_id\":{},\"output_index\":{index},\"content_index\":0,\"delta\":{},\"logprobs\":[]",
            self.message_id,
            Value::String(delta.to_owned()),
        );
        self.write(out, "response.output_text.delta", &fields);
    }

    fn call_delta(&mut self, out: &mut String, delta: &ToolCall<'_>) {
        let at = delta.index.unwrap_or_default();
        if !self.calls.contains_key(&at) {
            let output_index = self.next_item();
            let call = Call {
                output_index,
                id: self.head.call_id(at),
                call_id: delta
                    .id
                    .as_deref()
                    .map_or_else(|| format!("call_{at}"), str::to_owned),
                name: delta.name().to_owned(),
                arguments: String::new(),
            };
            let item = call_item(&call.id, &call.call_id, &call.name, "", "in_progress");
            self.event(
                out,
                "response.output_item.added",
                json!({"output_index": output_index, "item": item}),
            );
            self.calls.insert(at, call);
        }
        let Some(part) = delta.arguments() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&at) else {
            return;
        };
        call.arguments.push_str(part);
        let body = json!({"item_id": call.id, "output_index": call.output_index, "delta": part});
        self.event(out, "response.function_call_arguments.delta", body);
    }

    fn next_item(&mut self) -> usize {
        self.items += 1;
        self.items - 1
    }

    /// Closes every item, then the response, with its usage.
    fn finish(&mut self, out: &mut String) {
        self.ended = true;
        let mut output = BTreeMap::new();
        if let Some((index, text)) = self.text.take() {
            let id = self.head.message_id();
            self.event(
                out,
                "response.output_text.done",
                json!({"item_id": id,
                "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
            );
            self.event(
                out,
                "response.content_part.done",
                json!({"item_id": id,
                "output_index": index, "content_index": 0, "part": text_part(&text)}),
            );
            let item = message_item(&id, &text, "completed");
            self.event(
                out,
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            );
            output.insert(index, item);
        }
        for call in std::mem::take(&mut self.calls).into_values() {
            self.event(
                out,
                "response.function_call_arguments.done",
                json!({"item_id": call.id,
                "output_index": call.output_index, "name": call.name, "arguments": call.arguments}),
            );
            let item = call_item(
                &call.id,
                &call.call_id,
                &call.name,
                &call.arguments,
                "completed",
            );
            self.event(
                out,
                "response.output_item.done",
                json!({"output_index": call.output_index, "item": item}),
            );
            output.insert(call.output_index, item);
        }
        let (status, incomplete) = ending(self.finish.as_deref());
        let mut response = response_object(
            &self.head,
            status,
            output.into_values().collect(),
            &self.echo,
        );
        response["incomplete_details"] = incomplete;
        response["usage"] = usage_of(&self.usage.take().unwrap_or_default());
        if let Some(ragway) = self.ragway.take() {
            response["ragway"] = ragway;
        }
        let name = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.event(out, name, json!({"response": response}));
    }

    /// An answer broken off upstream: the response fails, keeping what came.
    fn fail(&mut self, out: &mut String, message: Option<&str>) {
        self.ended = true;
        let message = message.unwrap_or("the answer was cut off upstream");
        let mut output = BTreeMap::new();
        if let Some((index, text)) = self.text.take() {
            output.insert(
                index,
                message_item(&self.head.message_id(), &text, "incomplete"),
            );
        }
        for call in std::mem::take(&mut self.calls).into_values() {
            let item = call_item(
                &call.id,
                &call.call_id,
                &call.name,
                &call.arguments,
                "incomplete",
            );
            output.insert(call.output_index, item);
        }
        let mut response = response_object(
            &self.head,
            "failed",
            output.into_values().collect(),
            &self.echo,
        );
        response["error"] = json!({"code": "server_error", "message": message});
        self.event(out, "response.failed", json!({"response": response}));
    }

    /// Writes one event: its name, and its body with its type and sequence number.
    fn event(&mut self, out: &mut String, name: &str, body: Value) {
        let body = body.to_string();
        // The body's members, without its braces (every body has some).
        self.write(out, name, &body[1..body.len() - 1]);
    }

    /// Writes one event whose body's other members are `fields`, written.
    fn write(&mut self, out: &mut String, name: &str, fields: &str) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "event: {name}\ndata: {{\"type\":\"{name}\",\"sequence_number\":{},{fields}}}\n\n",
            self.sequence
        );
        self.sequence += 1;
    }
}
