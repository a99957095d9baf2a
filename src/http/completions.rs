//! `POST /v1/completions`: the legacy prompt completion, for older tools. The
//! prompt becomes the user's message and goes through the chat pipeline like any
//! chat (keys and limits, personal data, cache, retrieval, failover, audit); the
//! answer is told back as a `text_completion`.
//!
//! Refused with a 400 naming the field, rather than silently ignored: several
//! prompts in one request, token-id prompts, `suffix`, `echo`, `logprobs` and
//! `best_of` above 1 (a chat model serves none of them).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::body::parse_json;
use super::chat::{Called, respond_with, serve, sse_stream};
use crate::error::GatewayError;
use crate::pipeline::{Reply, ReplyBody};
use crate::state::AppState;
use crate::wire::{ChatCompletion, ChatRequest};

/// The fields passed on to the chat request as they are.
const CARRIED: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "seed",
    "ragway",
];

pub async fn completions(
    State(state): State<AppState>,
    called: Called,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = parse_json(&headers, body, state.config.server.max_body_bytes)
        .and_then(as_chat)
        .and_then(|r: ChatRequest| r.validate().map(|()| r));
    serve(&state, called, &headers, request, text_reply).await
}

/// The legacy request as a chat request.
fn as_chat(legacy: Map<String, Value>) -> Result<ChatRequest, GatewayError> {
    let refuse = |param: &str, message: &str| {
        Err(GatewayError::invalid(
            format!("`{param}`: {message}"),
            Some(param.to_owned()),
        ))
    };
    for (param, unsupported) in [
        (
            "suffix",
            legacy
                .get("suffix")
                .is_some_and(|v| !v.is_null() && v != ""),
        ),
        (
            "echo",
            legacy.get("echo").is_some_and(|v| v == &json!(true)),
        ),
        (
            "logprobs",
            legacy.get("logprobs").is_some_and(|v| !v.is_null()),
        ),
        (
            "best_of",
            legacy
                .get("best_of")
                .is_some_and(|v| v.as_u64() != Some(1) && !v.is_null()),
        ),
    ] {
        if unsupported {
            return refuse(param, "not supported by this gateway's chat models");
        }
    }
    let known = ["prompt", "suffix", "echo", "logprobs", "best_of"];
    if let Some(unknown) = legacy
        .keys()
        .find(|k| !CARRIED.contains(&k.as_str()) && !known.contains(&k.as_str()))
    {
        return refuse(unknown, "not a field of a completion request");
    }
    let prompt = match legacy.get("prompt") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        Some(Value::Array(_)) => {
            return refuse(
                "prompt",
                "send one prompt, as text, per request (several prompts or token ids are not taken)",
            );
        }
        _ => return refuse("prompt", "required, as text"),
    };
    let mut chat: Map<String, Value> = legacy
        .into_iter()
        .filter(|(k, _)| CARRIED.contains(&k.as_str()))
        .collect();
    chat.insert(
        "messages".to_owned(),
        json!([{"role": "user", "content": prompt}]),
    );
    serde_json::from_value(Value::Object(chat))
        .map_err(|e| GatewayError::invalid(e.to_string(), None))
}

/// The reply as a `text_completion`, whole or streamed.
fn text_reply(reply: Reply) -> Response {
    respond_with(reply, |body| match body {
        ReplyBody::Whole(completion) => Json(text_completion(*completion)).into_response(),
        // The chat frames, each told again in this dialect.
        ReplyBody::Stream(frames) => sse_stream(futures_util::stream::unfold(
            frames,
            |mut frames| async move {
                let frame = frames.recv().await?;
                Some((text_frame(&frame), frames))
            },
        )),
    })
}

fn text_completion(completion: ChatCompletion) -> Value {
    let choices: Vec<Value> = completion
        .choices
        .into_iter()
        .map(|c| {
            json!({
                "text": c.message.content.unwrap_or_default(),
                "index": c.index,
                "logprobs": null,
                "finish_reason": c.finish_reason,
            })
        })
        .collect();
    let mut body = json!({
        "id": completion.id.replacen("chatcmpl-", "cmpl-", 1),
        "object": "text_completion",
        "created": completion.created,
        "model": completion.model,
        "choices": choices,
    });
    if let Some(usage) = completion.usage {
        body["usage"] = json!(usage);
    }
    if let Some(ragway) = completion.extra.get("ragway") {
        body["ragway"] = ragway.clone();
    }
    body
}

/// One chat stream frame as a `text_completion` chunk; `[DONE]` and error events
/// as they are.
fn text_frame(frame: &Bytes) -> Bytes {
    let Some(data) = frame
        .strip_prefix(b"data: ")
        .and_then(|d| d.strip_suffix(b"\n\n"))
    else {
        return frame.clone();
    };
    let Ok(Value::Object(chunk)) = serde_json::from_slice::<Value>(data) else {
        return frame.clone();
    };
    if chunk.contains_key("error") {
        return frame.clone();
    }
    let choices: Vec<Value> = chunk
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "text": c["delta"]["content"].as_str().unwrap_or_default(),
                "index": c["index"],
                "logprobs": null,
                "finish_reason": c["finish_reason"],
            })
        })
        .collect();
    let mut out = json!({
        "id": chunk.get("id").and_then(Value::as_str).unwrap_or_default().replacen("chatcmpl-", "cmpl-", 1),
        "object": "text_completion",
        "created": chunk.get("created"),
        "model": chunk.get("model"),
        "choices": choices,
    });
    for key in ["usage", "ragway"] {
        if let Some(value) = chunk.get(key) {
            out[key] = value.clone();
        }
    }
    crate::pipeline::data_frame(&out)
}
