//! Cross-origin calls from browser chat front-ends (`server.cors_origins`; off by
//! default): `/v1/*` only. The console is its own origin's, and the admin API is
//! not for pages on other sites. A caller still needs its key: CORS only lets a
//! browser hand the answer to the page that asked.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// The answer's headers a page may read.
const EXPOSED: &str = "x-request-id, x-ragway-target, x-ragway-cache, x-ragway-attempts, \
     x-ragway-continued, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, \
     x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, retry-after";
/// The request headers a page may send.
const ALLOWED: &str = "authorization, content-type, x-api-key, x-request-id, x-ragway-rag, \
     cache-control, openai-organization, openai-project, openai-beta, anthropic-version, \
     anthropic-beta";
const METHODS: &str = "GET, POST, DELETE, OPTIONS";

pub async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let origins = &state.config.server.cors_origins;
    if origins.is_empty() || !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let allowed = allowed_origin(origins, request.headers());
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(origin) = allowed else {
            return StatusCode::FORBIDDEN.into_response();
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        return response;
    }
    let mut response = next.run(request).await;
    if let Some(origin) = allowed {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// The value of `Access-Control-Allow-Origin` for this request's `Origin`, when
/// it is one of `origins`.
fn allowed_origin(origins: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    if origins.iter().any(|o| o == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let text = origin.to_str().ok()?;
    origins.iter().any(|o| o == text).then(|| origin.clone())
}
