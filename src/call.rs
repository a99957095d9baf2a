//! The request's vocabulary, shared by every layer above: who is calling, the
//! narrow view of the call each stage reads ([`Call`]), the client's cache
//! control, and the upstream attempts as the record keeps them.

use std::sync::Arc;

/// Who is calling, as authentication established it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Arc<str>,
    /// The id of the client key used (never the key itself); `None` with auth off.
    pub key_id: Option<Arc<str>>,
    /// The model aliases the key may use.
    pub models: ModelAccess,
}

impl Caller {
    /// The caller when client authentication is off.
    pub fn anonymous() -> Self {
        Caller::new("default", None)
    }

    /// A caller that may use every model.
    pub fn new(tenant: &str, key_id: Option<&str>) -> Self {
        Caller {
            tenant: tenant.into(),
            key_id: key_id.map(Into::into),
            models: ModelAccess::All,
        }
    }
}

/// Which model aliases a key may use: all, or those matching one of its patterns
/// (`*` matches any run of characters: `deepseek-*`, `*-chat`).
#[derive(Debug, Clone, Default)]
pub enum ModelAccess {
    #[default]
    All,
    Matching(Arc<[Box<str>]>),
}

impl ModelAccess {
    /// From a key's patterns: none means every model.
    pub fn from_patterns(patterns: &[String]) -> Self {
        match patterns.is_empty() {
            true => ModelAccess::All,
            false => ModelAccess::Matching(patterns.iter().map(|p| p.as_str().into()).collect()),
        }
    }

    pub fn allows(&self, alias: &str) -> bool {
        match self {
            ModelAccess::All => true,
            ModelAccess::Matching(patterns) => patterns.iter().any(|p| glob(p, alias)),
        }
    }
}

/// `pattern` matches all of `text`, `*` standing for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole text was the prefix
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What a stage may read of the call it serves: a narrow view of the pipeline's
/// own context, so the stages depend on this, not on the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub request_id: &'a str,
    pub caller: &'a Caller,
    /// The model alias the client asked for.
    pub alias: &'a str,
    /// When the whole request must be answered by.
    pub deadline: tokio::time::Instant,
    /// The client asked for a stream.
    pub stream: bool,
    pub cache_control: CacheControl,
    /// What retrieval would ground the answer in (corpus generation and template
    /// version), once known: part of the cache key.
    pub corpus_version: Option<&'a str>,
}

/// The client's `Cache-Control`: `no-cache` skips the lookup, `no-store` the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_cache: bool,
    pub no_store: bool,
}

impl CacheControl {
    pub fn parse(header: &str) -> CacheControl {
        let mut control = CacheControl::default();
        for directive in header.split(',') {
            match directive.trim().to_ascii_lowercase().as_str() {
                "no-cache" => control.no_cache = true,
                "no-store" => control.no_store = true,
                _ => {}
            }
        }
        control
    }
}

/// A target's price per million tokens, in the deployment's currency: prompt
/// tokens, those of them the provider served from its cache (at `input` when
/// unset), and completion tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    pub output: f64,
}

impl Price {
    /// What `prompt` tokens (`cached` of them from the provider's cache) and
    /// `completion` tokens cost.
    pub fn cost(&self, prompt: u64, cached: u64, completion: u64) -> f64 {
        let cached = cached.min(prompt);
        let fresh = (prompt - cached) as f64 * self.input;
        let cached = cached as f64 * self.cached_input.unwrap_or(self.input);
        (fresh + cached + completion as f64 * self.output) / 1e6
    }

    /// The dearer of two prices, part by part: what a call is reserved at when
    /// any of several targets may serve it.
    pub fn dearest(self, other: Price) -> Price {
        Price {
            input: self.input.max(other.input),
            cached_input: match (self.cached_input, other.cached_input) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            output: self.output.max(other.output),
        }
    }
}

/// One upstream attempt, as the record keeps it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub target: Arc<str>,
    pub latency: std::time::Duration,
    /// Why it failed; `None` when it answered.
    pub failure: Option<Failure>,
    pub kind: AttemptKind,
}

/// Why an attempt was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttemptKind {
    /// In the route's order (a retry included).
    #[default]
    Plain,
    /// Started beside a target slow to give its first token (`hedge_after`).
    Hedge,
    /// It asked for the rest of an answer another target had begun.
    Continuation,
}

impl AttemptKind {
    /// Its name in the record; none for a plain attempt.
    pub fn name(self) -> Option<&'static str> {
        match self {
            AttemptKind::Plain => None,
            AttemptKind::Hedge => Some("hedge"),
            AttemptKind::Continuation => Some("continuation"),
        }
    }
}

/// A failed attempt, flat: what the record and the metrics need of it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The error class (`connect`, `first_token_timeout`, `http_5xx` …).
    pub class: &'static str,
    /// The provider's HTTP status, when it answered with one.
    pub status: Option<u16>,
    /// What went wrong, in words (the provider's text already cut and scrubbed).
    pub message: String,
}

/// A passage the answer was grounded in, as shown to the client.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Citation {
    pub doc_id: String,
    pub title: String,
    pub source: String,
    pub chunk: u32,
    pub score: f32,
}

/// Puts the personal data of text that joins the request (a retrieved passage)
/// into this request's own placeholders, restored in the answer: the sanitize
/// stage, as the other stages reach it.
pub trait Placeholders: Send {
    fn text(&mut self, text: &str) -> Result<String, crate::error::GatewayError>;
}

/// What the cache did for a request; the `x-ragway-cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    HitL1,
    HitL2,
    Miss,
    Bypass,
}

impl CacheStatus {
    pub fn is_hit(self) -> bool {
        matches!(self, CacheStatus::HitL1 | CacheStatus::HitL2)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::HitL1 => "hit-l1",
            CacheStatus::HitL2 => "hit-l2",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// How a call ended, as the record and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered in full.
    Ok,
    /// Refused or failed before an answer began.
    Error,
    /// A stream cut off upstream after it began.
    Interrupted,
    /// The client left before the answer ended.
    Abandoned,
    /// The content guard cut the answer.
    ContentFilter,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Interrupted => "interrupted",
            Outcome::Abandoned => "abandoned",
            Outcome::ContentFilter => "content_filter",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_prompt_tokens_cost_their_own_price() {
        let price = Price {
            input: 2.0,
            cached_input: Some(0.5),
            output: 8.0,
        };
        // 1,000 prompt tokens, 600 from the provider's cache, 500 written.
        let cost = price.cost(1000, 600, 500);
        assert!((cost - (400.0 * 2.0 + 600.0 * 0.5 + 500.0 * 8.0) / 1e6).abs() < 1e-12);
        let plain = Price {
            cached_input: None,
            ..price
        };
        assert!((plain.cost(1000, 600, 0) - 2000.0 / 1e6).abs() < 1e-12);
    }

    #[test]
    fn patterns_match_whole_aliases() {
        let access =
            ModelAccess::from_patterns(&["deepseek-*".into(), "*-mini".into(), "qwen".into()]);
        for alias in ["deepseek-v3", "deepseek-", "gpt-4o-mini", "qwen"] {
            assert!(access.allows(alias), "{alias}");
        }
        for alias in ["qwen2", "my-deepseek-v3", "mini", "gpt-4o", ""] {
            assert!(!access.allows(alias), "{alias}");
        }
        assert!(glob("a*b*c", "abc") && glob("a*b*c", "axxbyyc") && !glob("a*b*c", "acb"));
        assert!(glob("*", "") && glob("**", "x") && !glob("ab*ba", "aba"));
        assert!(ModelAccess::from_patterns(&[]).allows("anything"));
    }
}
