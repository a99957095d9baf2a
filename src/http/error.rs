//! The one place where errors become HTTP: status codes and OpenAI-shaped bodies.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::GatewayError;

/// The error code of a response made from a [`GatewayError`].
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        if let GatewayError::Internal(detail) = &self {
            tracing::error!(detail = %crate::secret::scrub(detail), "internal error");
        }
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body())).into_response();
        // For the audit record of a call refused before the pipeline ran.
        response.extensions_mut().insert(ErrorCode(self.code()));
        if let GatewayError::Unavailable { retry_after, .. }
        | GatewayError::TooManyRequests { retry_after, .. } = &self
        {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let GatewayError::OverLimit {
            retry_after,
            headroom,
            ..
        } = &self
        {
            if let Some(wait) = retry_after {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            put_headroom(response.headers_mut(), headroom);
        }
        if let GatewayError::RequestTimeout = &self {
            // The rest of the body may still be on its way: the connection cannot
            // carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let GatewayError::Unauthorized(_) = &self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers, and
/// `x-ragway-budget-remaining` (in the deployment's currency).
pub fn put_headroom(headers: &mut axum::http::HeaderMap, headroom: &crate::quota::Headroom) {
    if let Some(budget) = headroom.budget
        && let Ok(value) = HeaderValue::try_from(format!("{:.6}", budget.remaining.max(0.0)))
    {
        headers.insert(
            axum::http::HeaderName::from_static("x-ragway-budget-remaining"),
            value,
        );
    }
    let windows = [("requests", headroom.requests), ("tokens", headroom.tokens)];
    for (what, window) in windows {
        let Some(window) = window else { continue };
        let values = [
            ("limit", window.limit.to_string()),
            ("remaining", window.remaining.to_string()),
            ("reset", crate::quota::duration_text(window.reset)),
        ];
        for (part, value) in values {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::try_from(format!("x-ratelimit-{part}-{what}")),
                HeaderValue::try_from(value),
            ) {
                headers.insert(name, value);
            }
        }
    }
}
