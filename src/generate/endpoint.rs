//! Where a provider's chat completions live, from the `base_url` an operator wrote.
//!
//! Two forms: a base that ends at the API version (`https://api.qnaigc.com/v1`), to
//! which `/chat/completions` is appended; and a per-model template
//! (`https://cloud.infini-ai.com/maas/{model}/nvidia`), expanded for each request.
//! The common mistakes — a bare domain, or a URL that already ends in
//! `/chat/completions` — are refused with the fix in the message.

use hyper::Uri;
use reqwest::Url;
use serde::Serialize;

const CHAT_PATH: &str = "/chat/completions";
const MODEL_SLOT: &str = "{model}";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct ChatEndpoint {
    /// The base with no trailing slash; holds `{model}` for a per-model template.
    base: String,
    /// The whole URL when it does not depend on the model, parsed once.
    fixed: Option<Uri>,
}

impl ChatEndpoint {
    pub fn parse(base_url: &str) -> Result<Self, String> {
        let base = base_url.trim().trim_end_matches('/');
        // Validate the shape with a placeholder where the model name goes.
        let probe = base.replace(MODEL_SLOT, "model");
        let url = Url::parse(&probe).map_err(|e| format!("`{base_url}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{base_url}` must use http or https"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "`{base_url}` must not carry a query or fragment; ragway appends {CHAT_PATH}"
            ));
        }
        if url.path().ends_with(CHAT_PATH) {
            let fixed = base.trim_end_matches(CHAT_PATH);
            return Err(format!(
                "`{base_url}` ends at {CHAT_PATH}; give the base that ends at the API \
                 version instead (ragway appends {CHAT_PATH}): `{fixed}`"
            ));
        }
        if matches!(url.path(), "" | "/") {
            return Err(format!(
                "`{base_url}` has no path; an OpenAI-compatible base ends at the API \
                 version, e.g. `{}/v1`",
                probe.trim_end_matches('/')
            ));
        }
        if base.matches(MODEL_SLOT).count() > 1 {
            return Err(format!("`{base_url}` holds {MODEL_SLOT} more than once"));
        }
        let fixed = match base.contains(MODEL_SLOT) {
            true => None,
            false => Some(to_uri(&format!("{base}{CHAT_PATH}"))?),
        };
        Ok(ChatEndpoint {
            base: base.to_owned(),
            fixed,
        })
    }

    /// The chat completions URL for one upstream model.
    pub fn url_for(&self, model: &str) -> Result<Uri, String> {
        if let Some(uri) = &self.fixed {
            return Ok(uri.clone());
        }
        self.url_at(model, CHAT_PATH)
    }

    /// The URL of another endpoint of the same API (`/rerank`), for one model.
    pub fn url_at(&self, model: &str, path: &str) -> Result<Uri, String> {
        to_uri(&(self.base.replace(MODEL_SLOT, &encode_segment(model)) + path))
    }
}

/// A URL as the HTTP client takes it: parsed as a browser would first (an
/// international host name becomes its ASCII form), then as a request target.
fn to_uri(text: &str) -> Result<Uri, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    Uri::try_from(url.as_str()).map_err(|e| format!("`{text}` is not a URL: {e}"))
}

impl From<ChatEndpoint> for String {
    fn from(endpoint: ChatEndpoint) -> String {
        endpoint.base
    }
}

/// Percent-encodes a model name for use as one path segment.
fn encode_segment(model: &str) -> String {
    let mut out = String::with_capacity(model.len());
    for byte in model.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_versioned_base_gets_the_chat_path() {
        let e = ChatEndpoint::parse("https://api.qnaigc.com/v1/").unwrap();
        assert_eq!(
            e.url_for("deepseek-v3?search").unwrap().to_string(),
            "https://api.qnaigc.com/v1/chat/completions"
        );
    }

    #[test]
    fn a_template_is_expanded_per_model() {
        let e = ChatEndpoint::parse("https://cloud.infini-ai.com/maas/{model}/nvidia").unwrap();
        assert_eq!(
            e.url_for("deepseek-v3").unwrap().to_string(),
            "https://cloud.infini-ai.com/maas/deepseek-v3/nvidia/chat/completions"
        );
        assert_eq!(
            e.url_for("a b/c").unwrap().to_string(),
            "https://cloud.infini-ai.com/maas/a%20b%2Fc/nvidia/chat/completions"
        );
    }

    #[test]
    fn common_mistakes_are_refused_with_the_fix() {
        let err = ChatEndpoint::parse("https://api.qnaigc.com/v1/chat/completions").unwrap_err();
        assert!(err.contains("`https://api.qnaigc.com/v1`"), "{err}");
        let err = ChatEndpoint::parse("https://api.qnaigc.com").unwrap_err();
        assert!(err.contains("https://api.qnaigc.com/v1"), "{err}");
        assert!(ChatEndpoint::parse("ftp://x/v1").is_err());
        assert!(ChatEndpoint::parse("not a url").is_err());
        assert!(ChatEndpoint::parse("https://x/v1?a=b").is_err());
    }
}
