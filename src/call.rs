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
}

impl Caller {
    /// The caller when client authentication is off.
    pub fn anonymous() -> Self {
        Caller {
            tenant: "default".into(),
            key_id: None,
        }
    }
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

/// One upstream attempt, as the record keeps it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub target: Arc<str>,
    pub latency: std::time::Duration,
    /// Why it failed; `None` when it answered.
    pub failure: Option<Failure>,
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
