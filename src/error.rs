//! The errors a client can be told about: each with its HTTP status and its
//! OpenAI-shaped body (`{"error": {...}}`). `http::error` turns them into responses;
//! the streaming path writes the same body in-band.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed; `param` names the offending field.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The request body did not arrive in full within the server's body deadline.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The caller has as much work in flight as it may; `retry_after` says when to
    /// try again.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: Duration,
    },
    /// Over a rate limit (`kind` `requests` or `tokens`, code
    /// `rate_limit_exceeded`) or out of budget (`insufficient_quota`); `headroom`
    /// becomes the `x-ratelimit-*` headers. `retry_after` is `None` when waiting
    /// cannot help (the request is larger than the limit).
    #[error("{message}")]
    OverLimit {
        message: String,
        kind: &'static str,
        code: &'static str,
        retry_after: Option<Duration>,
        headroom: Box<crate::quota::Headroom>,
    },
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    #[error("no route to `{0}`")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Every target of the route failed before answering.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// Every target refused the request itself (too long, a parameter it does not
    /// take): the client's to fix, not an outage.
    #[error("{message}")]
    UpstreamRejected {
        message: String,
        context_length: bool,
    },
    /// A provider, or ragway's content guard, refused on content grounds.
    #[error("{0}")]
    ContentFilter(String),
    /// The request holds personal data of kinds the policy refuses (named, never
    /// the values).
    #[error("the request contains personal data that may not be sent: {}", .0.join(", "))]
    PiiBlocked(Vec<&'static str>),
    /// The answer broke off after the client had begun to receive it.
    #[error("{0}")]
    StreamInterrupted(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn invalid(message: impl Into<String>, param: impl Into<Option<String>>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: param.into(),
        }
    }

    /// The HTTP status this error is answered with (and recorded as).
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::UpstreamRejected { .. }
            | GatewayError::ContentFilter(_)
            | GatewayError::PiiBlocked(_) => 400,
            GatewayError::Unauthorized(_) => 401,
            GatewayError::Forbidden(_) => 403,
            GatewayError::UnsupportedMediaType(_) => 415,
            GatewayError::PayloadTooLarge { .. } => 413,
            GatewayError::RequestTimeout => 408,
            GatewayError::TooManyRequests { .. } | GatewayError::OverLimit { .. } => 429,
            GatewayError::ModelNotFound(_) | GatewayError::NotFound(_) => 404,
            GatewayError::MethodNotAllowed => 405,
            GatewayError::Unavailable { .. } => 503,
            GatewayError::StreamInterrupted(_) => 502,
            GatewayError::Internal(_) => 500,
        }
    }

    /// The OpenAI error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::UnsupportedMediaType(_)
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::RequestTimeout
            | GatewayError::ModelNotFound(_)
            | GatewayError::NotFound(_)
            | GatewayError::MethodNotAllowed
            | GatewayError::UpstreamRejected { .. }
            | GatewayError::ContentFilter(_)
            | GatewayError::PiiBlocked(_) => "invalid_request_error",
            GatewayError::Unauthorized(_) => "authentication_error",
            GatewayError::Forbidden(_) => "permission_error",
            GatewayError::TooManyRequests { .. } => "rate_limit_error",
            GatewayError::OverLimit { kind, .. } => kind,
            GatewayError::Unavailable { .. } | GatewayError::StreamInterrupted(_) => {
                "upstream_error"
            }
            GatewayError::Internal(_) => "server_error",
        }
    }

    /// The OpenAI error `code`: stable, machine-readable, low-cardinality (it also
    /// labels metrics and audit rows).
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest { .. } => "invalid_request",
            GatewayError::Unauthorized(_) => "invalid_api_key",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::UnsupportedMediaType(_) => "unsupported_media_type",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::TooManyRequests { .. } => "rate_limited",
            GatewayError::OverLimit { code, .. } => code,
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::MethodNotAllowed => "method_not_allowed",
            GatewayError::Unavailable { .. } => "all_targets_failed",
            GatewayError::UpstreamRejected {
                context_length: true,
                ..
            } => "context_length_exceeded",
            GatewayError::UpstreamRejected { .. } => "upstream_rejected",
            GatewayError::ContentFilter(_) => "content_filter",
            GatewayError::PiiBlocked(_) => "pii_blocked",
            GatewayError::StreamInterrupted(_) => "stream_interrupted",
            GatewayError::Internal(_) => "internal_error",
        }
    }

    pub fn body(&self) -> ErrorEnvelope {
        let param = match self {
            GatewayError::InvalidRequest { param, .. } => param.clone(),
            GatewayError::ModelNotFound(_) => Some("model".to_owned()),
            _ => None,
        };
        // Internal details go to the log, not to the client; nothing that looks
        // like a credential goes to either.
        let message = match self {
            GatewayError::Internal(_) => "internal error".to_owned(),
            other => crate::secret::scrub(&other.to_string()).into_owned(),
        };
        ErrorEnvelope {
            error: ErrorBody {
                message,
                kind: self.kind().to_owned(),
                param,
                code: Some(self.code().to_owned()),
            },
        }
    }
}

/// `{"error": {...}}`, the body of every error ragway returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}
