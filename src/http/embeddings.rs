//! `POST /v1/embeddings`: sentence embeddings from the local embedder, in the OpenAI
//! format (a string or an array of strings in; unit-length float vectors out).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::parse_json;
use crate::error::GatewayError;
use crate::state::AppState;

/// Inputs one request may carry.
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Input,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default, rename = "user")]
    _user: Option<String>,
    #[serde(default, rename = "dimensions")]
    _dimensions: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

pub async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match embed(&state, &headers, body).await {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn embed(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, GatewayError> {
    let request: EmbeddingsRequest = parse_json(headers, body, state.config.server.max_body_bytes)?;
    let Some((name, embedder)) = &state.embedder else {
        return Err(GatewayError::ModelNotFound(request.model));
    };
    if &request.model != name {
        return Err(GatewayError::ModelNotFound(request.model));
    }
    if request
        .encoding_format
        .as_deref()
        .is_some_and(|f| f != "float")
    {
        return Err(GatewayError::invalid(
            "invalid `encoding_format`: only \"float\" is supported",
            "encoding_format".to_owned(),
        ));
    }
    let inputs = match request.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS || inputs.iter().any(|t| t.is_empty()) {
        return Err(GatewayError::invalid(
            format!("invalid `input`: give 1 to {MAX_INPUTS} non-empty strings"),
            "input".to_owned(),
        ));
    }
    let embedder = Arc::clone(embedder);
    // The model is CPU work: off the async threads, on the compute threads.
    let (vectors, tokens) = crate::compute::run(move || embedder.embed_counted(&inputs))
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))?
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| json!({"object": "embedding", "index": index, "embedding": embedding}))
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}
