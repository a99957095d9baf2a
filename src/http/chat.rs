//! `POST /v1/chat/completions`.

use std::convert::Infallible;
use tokio::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
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
use crate::telemetry::traces::Trace;
use crate::wire::ChatRequest;

pub async fn completions(
    State(state): State<AppState>,
    called: Called,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = parse_json(&headers, body, state.config.server.max_body_bytes)
        .and_then(|r: ChatRequest| r.validate().map(|()| r));
    serve(&state, called, &headers, request, reply_response).await
}

/// Who called, and when: what every dialect's handler hands to [`serve`], read
/// from what authentication and the request's observer put on it.
pub(super) struct Called {
    pub caller: Caller,
    pub request_id: std::sync::Arc<str>,
    pub origin: Option<Origin>,
    pub started: Instant,
    /// The request's trace (empty with traces off).
    pub trace: Trace,
}

impl Called {
    /// The pipeline's context of this call to `route`.
    pub(super) fn context(self, route: std::sync::Arc<crate::generate::Route>) -> RequestCtx {
        let mut ctx = RequestCtx::answered_whole(self.request_id, self.caller, route, self.started);
        if let Some(origin) = self.origin {
            ctx.origin = origin;
        }
        ctx.trace = self.trace;
        ctx
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Called {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Called, GatewayError> {
        let started = Instant::now();
        let missing = || GatewayError::Internal("a chat route without its layers".to_owned());
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(missing)?;
        let RequestId(request_id, trace) = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .ok_or_else(missing)?;
        Ok(Called {
            caller,
            request_id,
            origin: parts.extensions.get::<Origin>().cloned(),
            started,
            trace,
        })
    }
}

/// Runs a chat request (or one translated into it) through the pipeline, and
/// answers with `respond`, which shapes the reply in the client's dialect.
pub(super) async fn serve(
    state: &AppState,
    called: Called,
    headers: &HeaderMap,
    request: Result<ChatRequest, GatewayError>,
    respond: impl FnOnce(Reply) -> Response,
) -> Response {
    let caller = &called.caller;
    let request = match request.and_then(|r| rag_header(headers, r)) {
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
    if route.kind != crate::generate::ModelKind::Chat {
        let message = format!(
            "`{}` is a {} model: POST {}",
            route.alias,
            route.kind.name(),
            route.kind.route()
        );
        return GatewayError::invalid(message, Some("model".to_owned())).into_response();
    }
    let alias = route.alias.clone();
    let mut ctx = called.context(route).asking(&request);
    if let Some(value) = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    {
        ctx.cache_control = CacheControl::parse(value);
    }
    match state.pipeline.run(ctx, request).await {
        Ok(reply) => {
            let served = (reply.target.clone(), reply.attempts);
            recorded(respond(reply), alias, Some(served))
        }
        Err(error) => recorded(error.into_response(), alias, None),
    }
}

/// Marks the answer to a call the pipeline recorded (the observer writes no row of
/// its own), and names who served it, when a target did: (target, attempts).
pub(super) fn recorded(
    mut response: Response,
    alias: std::sync::Arc<str>,
    served: Option<(std::sync::Arc<str>, usize)>,
) -> Response {
    let (target, attempts) = match served {
        Some((target, attempts)) => {
            if let Ok(value) = HeaderValue::from_str(&target) {
                let headers = response.headers_mut();
                headers.insert(HeaderName::from_static("x-ragway-target"), value);
            }
            (Some(target), attempts)
        }
        None => (None, 0),
    };
    let extensions = response.extensions_mut();
    extensions.insert(ServedModel {
        alias,
        target,
        attempts,
    });
    extensions.insert(Recorded);
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
    respond_with(reply, |body| match body {
        ReplyBody::Whole(completion) => Json(completion).into_response(),
        ReplyBody::Stream(frames) => sse_response(frames),
    })
}

/// The reply's body as `body` makes it, with the gateway's headers: the
/// attempts, a continuation, the cache, and the caller's headroom (the serving
/// target's is [`recorded`]'s).
pub(super) fn respond_with(reply: Reply, body: impl FnOnce(ReplyBody) -> Response) -> Response {
    let Reply {
        target: _,
        attempts,
        continued,
        cache,
        headroom,
        body: reply_body,
    } = reply;
    let mut response = body(reply_body);
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-ragway-attempts"),
        HeaderValue::from(attempts),
    );
    if let Some(value) = continued
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert(HeaderName::from_static("x-ragway-continued"), value);
    }
    headers.insert(
        HeaderName::from_static("x-ragway-cache"),
        HeaderValue::from_static(cache.as_str()),
    );
    super::error::put_headroom(headers, &headroom);
    response
}

pub(super) fn sse_response(frames: mpsc::Receiver<Bytes>) -> Response {
    sse_stream(futures_util::stream::unfold(
        frames,
        |mut frames| async move {
            let frame = frames.recv().await?;
            Some((frame, frames))
        },
    ))
}

/// A response streaming `frames` (server-sent events, ready to write).
pub(super) fn sse_stream<S>(frames: S) -> Response
where
    S: futures_util::Stream<Item = Bytes> + Send + 'static,
{
    use futures_util::StreamExt;
    let mut response = Response::new(Body::from_stream(frames.map(Ok::<_, Infallible>)));
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
