//! `POST /v1/rerank`: documents ordered by relevance to a query, in the shape
//! Cohere, Jina and SiliconFlow share (`query`, `documents`, `top_n`,
//! `return_documents` in; `results` of `index` and `relevance_score` out). The
//! model is a rerank alias (`kind = "rerank"`): its targets, then the local
//! embedder ([`crate::generate::Ranker`]), through the pipeline's limits,
//! personal data and audit ([`crate::pipeline::Pipeline::rerank`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::body::{invalid, only_known, parse_json};
use super::chat::{Called, recorded};
use crate::error::GatewayError;
use crate::generate::ModelKind;
use crate::pipeline::RerankAsk;
use crate::state::AppState;

/// The most documents one request may rank (Cohere's and SiliconFlow's bound).
const MAX_DOCUMENTS: usize = 1000;

const FIELDS: &[&str] = &["model", "query", "documents", "top_n", "return_documents"];

pub async fn rerank(
    State(state): State<AppState>,
    called: Called,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let asked = match parse_json(&headers, body, state.config.server.max_body_bytes).and_then(read)
    {
        Ok(asked) => asked,
        Err(error) => return error.into_response(),
    };
    let request_id = called.request_id.clone();
    let route = match super::voice::route_of(&state, &called.caller, asked.model, ModelKind::Rerank)
    {
        Ok(route) => route,
        Err(error) => return error.into_response(),
    };
    let alias = route.alias.clone();
    let ctx = called.context(route);
    let ask = RerankAsk {
        query: asked.query,
        documents: asked.documents.clone(),
    };
    match state.pipeline.rerank(ctx, ask).await {
        Ok((ranking, headroom)) => {
            let results: Vec<Value> = ranking
                .order
                .iter()
                .take(asked.top_n)
                .map(|&(index, score)| {
                    let mut result = json!({"index": index, "relevance_score": score});
                    // The client's own text: what it sent, not what the ranker saw.
                    if asked.return_documents {
                        result["document"] = json!({"text": asked.documents[index]});
                    }
                    result
                })
                .collect();
            let mut response = Json(json!({
                "id": &*request_id,
                "model": &*alias,
                "results": results,
                "usage": {"total_tokens": ranking.tokens},
                "meta": {"tokens": {"input_tokens": ranking.tokens, "output_tokens": 0}},
            }))
            .into_response();
            super::error::put_headroom(response.headers_mut(), &headroom);
            recorded(response, alias, Some((ranking.target, 1)))
        }
        Err(error) => recorded(error.into_response(), alias, None),
    }
}

struct Asked {
    model: String,
    query: String,
    documents: Vec<String>,
    top_n: usize,
    return_documents: bool,
}

fn read(asked: Map<String, Value>) -> Result<Asked, GatewayError> {
    only_known(&asked, FIELDS, "a rerank request")?;
    let model = asked
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("model", "`model` is required: a rerank alias"))?;
    let query = asked
        .get("query")
        .and_then(Value::as_str)
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| invalid("query", "`query` is required: text, not empty"))?;
    let given = asked
        .get("documents")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty() && d.len() <= MAX_DOCUMENTS)
        .ok_or_else(|| {
            invalid(
                "documents",
                format!("`documents` is a list of 1 to {MAX_DOCUMENTS} texts"),
            )
        })?;
    let mut documents = Vec::with_capacity(given.len());
    for (i, document) in given.iter().enumerate() {
        // A text, or Cohere's and Jina's `{"text": …}`.
        let text = document
            .as_str()
            .or_else(|| document.get("text").and_then(Value::as_str))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                invalid(
                    &format!("documents[{i}]"),
                    "a document is text (or {\"text\": …}), not empty",
                )
            })?;
        documents.push(text.to_owned());
    }
    let top_n = match asked.get("top_n") {
        None | Some(Value::Null) => documents.len(),
        Some(n) => n
            .as_u64()
            .filter(|n| *n >= 1)
            .map(|n| (n as usize).min(documents.len()))
            .ok_or_else(|| invalid("top_n", "`top_n` is a whole number of at least 1"))?,
    };
    let return_documents = match asked.get("return_documents") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(invalid(
                "return_documents",
                "`return_documents` is true or false",
            ));
        }
    };
    Ok(Asked {
        model: model.to_owned(),
        query: query.to_owned(),
        documents,
        top_n,
        return_documents,
    })
}
