//! The outermost layer: every request gets a request id (the client's `x-request-id`
//! when it is sane, a new one otherwise) that is returned in the response and carried
//! by every log line of the request, and one access-log line plus its metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::telemetry::{Metrics, RequestFinished};

pub const REQUEST_ID: &str = "x-request-id";

/// The id of the request being served.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// What a handler tells the access log about the model call it served.
#[derive(Debug, Clone)]
pub struct ServedModel {
    pub alias: Arc<str>,
    pub target: Option<Arc<str>>,
    pub attempts: usize,
}

pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.run(request).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let served = response.extensions().get::<ServedModel>();
    span.in_scope(|| {
        metrics.request_finished(&RequestFinished {
            method: method.as_str(),
            route: route.as_ref().map_or("unmatched", MatchedPath::as_str),
            model: served.map_or("", |s| &s.alias),
            status: response.status().as_u16(),
            elapsed: started.elapsed(),
            target: served.and_then(|s| s.target.as_deref()),
            attempts: served.map_or(0, |s| s.attempts),
        })
    });
    response
}

/// The client's id if it is printable ASCII of sane length (it goes into logs and
/// headers), otherwise a new UUID.
fn request_id(headers: &HeaderMap) -> Arc<str> {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(Arc::from)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string().into())
}
