//! `POST /v1/chat/completions`.

use std::convert::Infallible;
use tokio::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::body::parse_json;
use super::observe::{Recorded, RequestId, ServedModel};
use crate::audit::Origin;
use crate::cache::CacheControl;
use crate::call::Caller;
use crate::error::GatewayError;
use crate::pipeline::{Reply, ReplyBody, RequestCtx};
use crate::state::AppState;
use crate::wire::ChatRequest;

pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    origin: Option<Extension<Origin>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let request: ChatRequest = match parse_json(&headers, body, state.config.server.max_body_bytes)
        .and_then(|r: ChatRequest| r.validate().map(|()| r))
        .and_then(|r| rag_header(&headers, r))
    {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    // A model the key may not use is answered as one that does not exist.
    let Some(route) = state
        .routes
        .get(&request.model)
        .filter(|_| caller.models.allows(&request.model))
    else {
        return GatewayError::ModelNotFound(request.model).into_response();
    };
    let alias = route.alias.clone();
    let mut ctx = RequestCtx::new(request_id, caller, route, &request, started);
    if let Some(Extension(origin)) = origin {
        ctx.origin = origin;
    }
    if let Some(value) = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    {
        ctx.cache_control = CacheControl::parse(value);
    }
    let (mut response, served) = match state.pipeline.run(ctx, request).await {
        Ok(reply) => {
            let served = ServedModel {
                alias,
                target: Some(reply.target.clone()),
                attempts: reply.attempts,
            };
            (reply_response(reply), served)
        }
        Err(error) => {
            let served = ServedModel {
                alias,
                target: None,
                attempts: 0,
            };
            (error.into_response(), served)
        }
    };
    response.extensions_mut().insert(served);
    response.extensions_mut().insert(Recorded);
    response
}

/// `x-ragway-rag: off` (or `on`) switches retrieval for this request, like
/// `"ragway": {"rag": false}` in the body, for clients that cannot add fields.
fn rag_header(headers: &HeaderMap, mut request: ChatRequest) -> Result<ChatRequest, GatewayError> {
    let Some(value) = headers.get("x-ragway-rag") else {
        return Ok(request);
    };
    let on = match value
        .to_str()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "on" | "true" | "1" => true,
        "off" | "false" | "0" => false,
        _ => {
            return Err(GatewayError::invalid(
                "the x-ragway-rag header must be `on` or `off`",
                Some("x-ragway-rag".to_owned()),
            ));
        }
    };
    request.ragway.get_or_insert_with(Default::default).rag = Some(on);
    Ok(request)
}

fn reply_response(reply: Reply) -> Response {
    let mut response = match reply.body {
        ReplyBody::Whole(completion) => Json(completion).into_response(),
        ReplyBody::Stream(frames) => sse_response(frames),
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&reply.target) {
        headers.insert(HeaderName::from_static("x-ragway-target"), value);
    }
    headers.insert(
        HeaderName::from_static("x-ragway-attempts"),
        HeaderValue::from(reply.attempts),
    );
    if let Some(value) = reply
        .continued
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert(HeaderName::from_static("x-ragway-continued"), value);
    }
    headers.insert(
        HeaderName::from_static("x-ragway-cache"),
        HeaderValue::from_static(reply.cache.as_str()),
    );
    super::error::put_headroom(headers, &reply.headroom);
    response
}

fn sse_response(frames: mpsc::Receiver<Bytes>) -> Response {
    let body = futures_util::stream::unfold(frames, |mut frames| async move {
        let frame = frames.recv().await?;
        Some((Ok::<_, Infallible>(frame), frames))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies in front of ragway not to buffer the stream.
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}
