//! The routing table: each model alias a client may ask for, with its ordered targets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{ChatProvider, Deadlines};
use crate::resilience::{Breaker, RetryPolicy};

/// One `provider:upstream-model` a route may call. A target named by several
/// routes is one target, with one breaker.
pub struct Target {
    /// `provider:model`, as written in the config; the label in headers and metrics.
    pub id: Arc<str>,
    /// The model name sent upstream (suffixes such as Qiniu's `?search` included).
    pub model: String,
    pub provider: Arc<dyn ChatProvider>,
    pub breaker: Arc<Breaker>,
    pub retry: RetryPolicy,
    pub deadlines: Deadlines,
    /// Whole answers are asked for as streams and assembled.
    pub stream_upstream: bool,
    /// Given the user's own text instead of placeholders (the local model, when
    /// `pii.local_input = "raw"`); never a remote provider.
    pub raw_input: bool,
    /// The local model (the last resort when every remote route fails).
    pub local: bool,
    /// Its provider's limits and its own (`[providers.X] limits`, `model_limits`):
    /// at any of them, it is passed over.
    pub gates: Vec<Arc<crate::quota::Gate>>,
}

/// What an alias serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Chat (and the dialects translated into it).
    #[default]
    Chat,
    /// `/v1/rerank`: its targets' rerank endpoint, and the local embedder when
    /// `local_fallback` (the default) and one is configured.
    Rerank,
    /// `/v1/voice/asr`: speech recognition, passed through to its targets.
    Asr,
    /// `/v1/voice/tts`: speech synthesis, passed through to its targets.
    Tts,
    /// `/v1/images/ocr`: text recognition in an image, passed through.
    Ocr,
}

impl ModelKind {
    pub const ALL: [ModelKind; 5] = [
        ModelKind::Chat,
        ModelKind::Rerank,
        ModelKind::Asr,
        ModelKind::Tts,
        ModelKind::Ocr,
    ];

    /// Its name in the config (`kind = "…"`).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Rerank => "rerank",
            ModelKind::Asr => "asr",
            ModelKind::Tts => "tts",
            ModelKind::Ocr => "ocr",
        }
    }

    /// The gateway's route for it, which is also where its targets' API serves
    /// it, below their base URL (less the `/v1`).
    pub fn route(self) -> &'static str {
        match self {
            ModelKind::Chat => "/v1/chat/completions",
            ModelKind::Rerank => "/v1/rerank",
            ModelKind::Asr => "/v1/voice/asr",
            ModelKind::Tts => "/v1/voice/tts",
            ModelKind::Ocr => "/v1/images/ocr",
        }
    }
}

pub struct Route {
    pub alias: Arc<str>,
    /// What it serves: chat, rerank, speech or OCR.
    pub kind: ModelKind,
    /// A reranker's last resort: the local embedder ranks when no target answers.
    pub rank_locally: bool,
    pub targets: Vec<Arc<Target>>,
    /// The deadline for the whole request, across every target and retry.
    pub request_timeout: Duration,
    pub failover_on_content_filter: bool,
    /// Start the next target beside the first when its first token has not come
    /// by then (`None`: no hedging).
    pub hedge_after: Option<Duration>,
}

#[derive(Default)]
pub struct Routes {
    by_alias: BTreeMap<String, Arc<Route>>,
    targets: BTreeMap<Arc<str>, Arc<Target>>,
}

/// A provider that could not be started.
#[derive(Debug, thiserror::Error)]
#[error("provider `{provider}`: {message}")]
pub struct LoadError {
    pub provider: String,
    pub message: String,
}

/// The alias under which the local model answers on its own.
pub const LOCAL_ALIAS: &str = "local";

impl Routes {
    /// The table over these routes and their targets (`state` builds them from
    /// the config).
    pub fn new(
        by_alias: BTreeMap<String, Arc<Route>>,
        targets: BTreeMap<Arc<str>, Arc<Target>>,
    ) -> Routes {
        Routes { by_alias, targets }
    }

    pub fn get(&self, alias: &str) -> Option<Arc<Route>> {
        self.by_alias.get(alias).cloned()
    }

    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.by_alias.keys().map(String::as_str)
    }

    /// Every target of every route, once each.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.targets.values()
    }
}
