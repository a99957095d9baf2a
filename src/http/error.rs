//! The one place where errors become HTTP: status codes and OpenAI-shaped bodies.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::GatewayError;

/// The error code of a response made from a [`GatewayError`].
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

pub fn status_for(error: &GatewayError) -> StatusCode {
    match error {
        GatewayError::InvalidRequest { .. }
        | GatewayError::UpstreamRejected { .. }
        | GatewayError::ContentFilter(_)
        | GatewayError::PiiBlocked(_) => StatusCode::BAD_REQUEST,
        GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
        GatewayError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        GatewayError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        GatewayError::ModelNotFound(_) | GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
        GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        GatewayError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        GatewayError::StreamInterrupted(_) => StatusCode::BAD_GATEWAY,
        GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        if let GatewayError::Internal(detail) = &self {
            tracing::error!(detail = %crate::secret::scrub(detail), "internal error");
        }
        let mut response = (status_for(&self), Json(self.body())).into_response();
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
