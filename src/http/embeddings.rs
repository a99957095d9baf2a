//! `POST /v1/embeddings`: sentence embeddings from the local embedder, in the OpenAI
//! format. In: a string, an array of strings, an array of token ids or an array of
//! such arrays (ids in `cl100k_base`, decoded to the text they stand for: see
//! [`crate::tiktoken`]). Out: unit-length vectors as JSON floats, or as base64 of
//! little-endian f32 (`encoding_format: "base64"`, what the official SDKs ask for
//! by default and decode themselves).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::parse_json;
use super::observe::RequestId;
use crate::admit::admission::{Ask, Used};
use crate::call::{CacheControl, Call, Caller};
use crate::error::GatewayError;
use crate::state::AppState;
use crate::tiktoken::Vocabulary;
use crate::tokens;

/// Inputs one request may carry.
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default, rename = "user")]
    _user: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
}

#[derive(Clone, Copy)]
enum Encoding {
    Float,
    Base64,
}

pub async fn embeddings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(RequestId(request_id, _)): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match embed(&state, &caller, &request_id, &headers, body).await {
        Ok((answer, headroom)) => {
            let mut response = Json(answer).into_response();
            super::error::put_headroom(response.headers_mut(), &headroom);
            response
        }
        Err(error) => error.into_response(),
    }
}

/// How long an embedding call may hold a place under its caller's concurrency.
const EMBED_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

async fn embed(
    state: &AppState,
    caller: &Caller,
    request_id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Value, crate::quota::Headroom), GatewayError> {
    let request: EmbeddingsRequest = parse_json(headers, body, state.config.server.max_body_bytes)?;
    let Some((name, embedder)) = &state.embedder else {
        return Err(GatewayError::ModelNotFound(request.model));
    };
    if &request.model != name || !caller.models.allows(name) {
        return Err(GatewayError::ModelNotFound(request.model));
    }
    let encoding = match request.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(_) => {
            return Err(GatewayError::invalid(
                "invalid `encoding_format`: \"float\" or \"base64\"",
                "encoding_format".to_owned(),
            ));
        }
    };
    // The model has one width and was not trained to be cut shorter (as
    // Matryoshka models are): a request for another width is refused, not served
    // vectors that would rank badly.
    if let Some(dimensions) = request.dimensions
        && dimensions != embedder.dimension as u64
    {
        return Err(GatewayError::invalid(
            format!(
                "invalid `dimensions`: {name} gives {}-dimensional vectors and cannot shorten them; omit `dimensions` or give {}",
                embedder.dimension, embedder.dimension
            ),
            "dimensions".to_owned(),
        ));
    }
    let inputs = texts(request.input, state.token_vocabulary.as_deref())?;
    // The one admission point: the caller's limits hold here as for chat.
    let ask = Ask {
        prompt_tokens: inputs.iter().map(|t| tokens::text_tokens(t)).sum(),
        max_output: Some(0),
    };
    let call = Call {
        request_id,
        caller,
        alias: name,
        deadline: tokio::time::Instant::now() + EMBED_DEADLINE,
        stream: false,
        cache_control: CacheControl::default(),
        corpus_version: None,
    };
    let permit = state.pipeline.admission.admit(&call, ask).await?;
    let headroom = permit.headroom;
    let embedder = Arc::clone(embedder);
    // The model is CPU work: off the async threads, on the compute threads.
    let embedded =
        crate::compute::run(move || embedder.embed_counted(&inputs, ragway_engine::Role::Query))
            .await;
    let tokens = match &embedded {
        Ok(Ok((_, tokens))) => *tokens as u64,
        _ => 0,
    };
    let used = Used {
        prompt_tokens: tokens,
        ..Used::default()
    };
    state.pipeline.admission.settle(permit, used).await;
    let (vectors, tokens) = embedded
        .map_err(|e| GatewayError::Internal(e.to_string()))?
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match encoding {
                Encoding::Float => json!(vector),
                Encoding::Base64 => json!(base64_f32(&vector)),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok((
        json!({
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
        headroom,
    ))
}

/// The texts to embed, from any of the four forms of `input`.
fn texts(input: Value, vocabulary: Option<&Vocabulary>) -> Result<Vec<String>, GatewayError> {
    let invalid = |message: String| GatewayError::invalid(message, "input".to_owned());
    let shape = || {
        invalid(format!(
            "invalid `input`: give a string, or 1 to {MAX_INPUTS} strings, token ids or arrays of token ids, none empty"
        ))
    };
    let items = match input {
        Value::String(text) => vec![Value::String(text)],
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_INPUTS => items,
        _ => return Err(shape()),
    };
    // One array of ids is one input; an array of arrays, one input each.
    let token_lists: Vec<Value> = match items.first() {
        Some(Value::Number(_)) => vec![Value::Array(items)],
        Some(Value::Array(_)) => items,
        _ => {
            return items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) if !text.is_empty() => Ok(text),
                    _ => Err(shape()),
                })
                .collect();
        }
    };
    let Some(vocabulary) = vocabulary else {
        return Err(invalid(
            "token-id input is not available: the gateway has no cl100k_base vocabulary (embeddings.token_vocabulary); send text".to_owned(),
        ));
    };
    token_lists
        .into_iter()
        .map(|list| {
            let ids: Vec<u64> = match list {
                Value::Array(ids) if !ids.is_empty() => ids
                    .iter()
                    .map(|id| id.as_u64().ok_or_else(shape))
                    .collect::<Result<_, _>>()?,
                _ => return Err(shape()),
            };
            vocabulary
                .decode(&ids)
                .map_err(|e| invalid(format!("invalid `input`: {e}")))
        })
        .collect()
}

/// A vector as the OpenAI API's base64 form: its f32s, little-endian, in order.
fn base64_f32(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
