//! What can go wrong when calling a provider, typed so that retry and failover
//! decisions read the error, not a string.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No response headers arrived: refused, reset, DNS or TLS failure.
    #[error("connection failed: {0}")]
    Connect(String),
    /// A deadline passed.
    #[error("{0}")]
    Timeout(TimeoutPhase),
    /// The provider answered with an error status, or an error object in its body.
    #[error("HTTP {status}: {detail}")]
    Status {
        status: u16,
        detail: ProviderError,
        retry_after: Option<Duration>,
    },
    /// The answer could not be read: malformed JSON, a malformed stream chunk.
    #[error("unreadable response: {0}")]
    Protocol(String),
    /// The connection broke while the body was being read.
    #[error("connection lost mid-answer: {0}")]
    Interrupted(String),
    /// The stream closed with neither a finish reason nor `[DONE]`.
    #[error("the stream ended before the answer finished")]
    Truncated,
}

impl UpstreamError {
    /// A short, fixed name for the kind of failure: a metric label and audit field.
    pub fn class(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(phase) => phase.class(),
            UpstreamError::Status { status, .. } => match status {
                400..=499 => "http_4xx",
                500..=599 => "http_5xx",
                _ => "error_body",
            },
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Interrupted(_) => "interrupted",
            UpstreamError::Truncated => "truncated",
        }
    }

    /// The flat form the record keeps.
    pub fn failure(&self) -> crate::call::Failure {
        crate::call::Failure {
            class: self.class(),
            status: match self {
                UpstreamError::Status { status, .. } => Some(*status),
                _ => None,
            },
            message: self.to_string(),
        }
    }

    /// Whether the provider refused on content grounds. Such a refusal is the same
    /// at every provider, so it goes back to the client rather than failing over.
    pub fn is_content_filter(&self) -> bool {
        let UpstreamError::Status { detail, .. } = self else {
            return false;
        };
        let says = |s: &Option<String>| {
            s.as_deref().is_some_and(|s| {
                matches!(
                    s,
                    "content_filter" | "content_policy_violation" | "data_inspection_failed"
                )
            })
        };
        says(&detail.code) || says(&detail.kind)
    }

    /// An `error` member found in a body the provider sent with `status`.
    pub fn in_body(status: u16, error: Value) -> Self {
        UpstreamError::Status {
            status,
            detail: ProviderError::from_json(&serde_json::json!({ "error": error })),
            retry_after: None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// No connection within the connect deadline.
    Connect,
    /// No first token (and perhaps no response at all) within its deadline.
    FirstToken,
    /// The stream went quiet for longer than the idle deadline.
    Idle,
    /// The request's overall deadline.
    Total,
}

impl TimeoutPhase {
    pub fn class(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect_timeout",
            TimeoutPhase::FirstToken => "first_token_timeout",
            TimeoutPhase::Idle => "idle_timeout",
            TimeoutPhase::Total => "deadline",
        }
    }
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "no connection within the connect deadline",
            TimeoutPhase::FirstToken => "no first token within the first-token deadline",
            TimeoutPhase::Idle => "the stream went quiet past the idle deadline",
            TimeoutPhase::Total => "the request's deadline passed",
        })
    }
}

/// A provider's own account of an error, from whatever shape its body had.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderError {
    pub message: String,
    /// The OpenAI `type` (`quota_exceeded_error`, `invalid_request_error`, …).
    pub kind: Option<String>,
    /// The provider's code as text: `context_length_exceeded`, or DeepSeek's `42901`.
    pub code: Option<String>,
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match (&self.kind, &self.code) {
            (Some(kind), Some(code)) => write!(f, " ({kind}, {code})"),
            (Some(one), None) | (None, Some(one)) => write!(f, " ({one})"),
            (None, None) => Ok(()),
        }
    }
}

/// The most of a provider's message kept: enough to say what went wrong, too little
/// to carry a page of whatever a proxy chose to echo.
const MAX_MESSAGE: usize = 300;
/// A `type` or `code` longer than this, or with other characters than an
/// identifier's, is not a code: it is dropped.
const MAX_CODE: usize = 64;

impl ProviderError {
    /// Reads an error body. Handles OpenAI's `{"error":{message,type,code}}`, Qiniu's
    /// `{"error":"authorization header missing","status":false}`, DeepSeek-style
    /// `{"code":42901,"message":…}`, and plain text.
    ///
    /// The body is the provider's (or a proxy's) free text and may echo the
    /// request's `Authorization` header: only the code and type are kept as they
    /// are, when they look like codes; the message is scrubbed of credentials and
    /// cut short before anything else reads it.
    pub fn from_body(body: &[u8]) -> Self {
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => Self::from_json(&value),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                ProviderError {
                    message: if text.is_empty() {
                        "empty error body".to_owned()
                    } else {
                        truncate(text)
                    },
                    ..Default::default()
                }
            }
        }
    }

    pub fn from_json(value: &Value) -> Self {
        let inner = match value.get("error") {
            Some(Value::String(message)) => {
                return ProviderError {
                    message: truncate(message),
                    kind: None,
                    code: text_of(value.get("code")),
                };
            }
            Some(object @ Value::Object(_)) => object,
            _ => value,
        };
        let message = inner
            .get("message")
            .or_else(|| inner.get("msg"))
            .and_then(Value::as_str)
            .map(truncate)
            .unwrap_or_else(|| truncate(&value.to_string()));
        ProviderError {
            message,
            kind: text_of(inner.get("type")),
            code: text_of(inner.get("code")),
        }
    }
}

fn text_of(value: Option<&Value>) -> Option<String> {
    let is_code = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_CODE
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    };
    match value? {
        Value::String(s) if is_code(s) && crate::secret::scrub(s) == s.as_str() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A provider's message as it may travel on: credentials scrubbed, then cut.
fn truncate(text: &str) -> String {
    let text = crate::secret::scrub(text);
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shapes_providers_send() {
        let qiniu = ProviderError::from_body(
            br#"{"error":{"message":"the price of the model is not set (model: x)","type":"quota_exceeded_error"}}"#,
        );
        assert_eq!(qiniu.kind.as_deref(), Some("quota_exceeded_error"));
        assert!(
            qiniu
                .message
                .starts_with("the price of the model is not set")
        );

        let missing =
            ProviderError::from_body(br#"{"error":"authorization header missing","status":false}"#);
        assert_eq!(missing.message, "authorization header missing");

        let deepseek = ProviderError::from_body(br#"{"code":42901,"message":"rate limited"}"#);
        assert_eq!(deepseek.code.as_deref(), Some("42901"));
        assert_eq!(deepseek.message, "rate limited");

        let nested = ProviderError::from_body(br#"{"error":{"code":"40101","message":"bad key"}}"#);
        assert_eq!(nested.code.as_deref(), Some("40101"));

        let text = ProviderError::from_body(b"<html>Bad Gateway</html>");
        assert_eq!(text.message, "<html>Bad Gateway</html>");
        assert_eq!(ProviderError::from_body(b"").message, "empty error body");
    }

    #[test]
    fn an_echoed_authorization_header_does_not_survive() {
        let echoed = br#"{"error":{"message":"invalid request, headers were {\"Authorization\": \"Bearer sk-live-abcdefghijklmnop1234\"}","type":"invalid_request_error","code":"Bearer sk-live-abcdefghijklmnop1234"}}"#;
        let error = ProviderError::from_body(echoed);
        let shown = error.to_string();
        assert!(!shown.contains("abcdefghijklmnop1234"), "{shown}");
        assert_eq!(error.kind.as_deref(), Some("invalid_request_error"));
        assert_eq!(error.code, None, "a code that is not a code is dropped");
        let plain = ProviderError::from_body(
            b"502 from proxy; request was: POST /v1/chat/completions Authorization: Bearer sk-live-abcdefghijklmnop1234",
        );
        assert!(!plain.message.contains("abcdefghijklmnop1234"), "{plain}");
        let long = ProviderError::from_body("x".repeat(10_000).as_bytes());
        assert!(long.message.chars().count() <= MAX_MESSAGE + 1);
    }

    #[test]
    fn content_filter_is_recognised_by_code_or_type() {
        let err = |code: &str| UpstreamError::Status {
            status: 400,
            detail: ProviderError {
                message: "no".into(),
                kind: None,
                code: Some(code.into()),
            },
            retry_after: None,
        };
        assert!(err("content_policy_violation").is_content_filter());
        assert!(!err("context_length_exceeded").is_content_filter());
    }
}
