//! `[models.ALIAS]`: the aliases clients ask for, each with its ordered targets.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Problems;
use super::{RagSettings, as_duration};
pub use crate::generate::ModelKind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// What the alias serves: `chat` (the default) or `rerank`.
    pub kind: Option<String>,
    pub targets: Vec<String>,
    pub description: Option<String>,
    /// The whole request's deadline, across every target and retry.
    pub request_timeout: Option<String>,
    /// Try the next target when a provider refuses on content grounds.
    pub failover_on_content_filter: Option<bool>,
    /// End the route with the local model (default: true when one is configured).
    pub local_fallback: Option<bool>,
    /// Ground answers in the tenant's documents: `false`, or settings overriding
    /// `[retrieval]`'s.
    pub rag: Option<super::retrieval::RawRag>,
    /// Which requests the answer cache serves: `deterministic` (the default),
    /// `always` or `off`.
    pub cache: Option<String>,
    /// Start the next target beside the first when its first token has not come
    /// by then (e.g. `"2s"`); off by default.
    pub hedge_after: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub targets: Vec<TargetRef>,
    pub description: Option<String>,
    #[serde(serialize_with = "as_duration")]
    pub request_timeout: Duration,
    pub failover_on_content_filter: bool,
    pub local_fallback: bool,
    /// How the alias grounds answers; `None` without `[retrieval]`.
    pub rag: Option<RagSettings>,
    pub cache: crate::cache::CachePolicy,
    #[serde(serialize_with = "crate::encode::as_optional_duration")]
    pub hedge_after: Option<Duration>,
}

/// `provider:upstream-model`, as written in a route's `targets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct TargetRef {
    pub provider: String,
    pub model: String,
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.model.is_empty() {
            true => f.write_str(&self.provider), // a local model: `local`
            false => write!(f, "{}:{}", self.provider, self.model),
        }
    }
}

impl From<TargetRef> for String {
    fn from(target: TargetRef) -> String {
        target.to_string()
    }
}

pub(super) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) fn model(
    alias: &str,
    raw: RawModel,
    providers: &BTreeSet<String>,
    locals: &BTreeSet<String>,
    rag_base: Option<&RagSettings>,
    problems: &mut Problems,
) -> Option<ModelConfig> {
    let at = format!("models.{alias}");
    let before = problems.count();
    if alias.trim().is_empty() {
        problems.add(&at, "a model alias must not be empty");
    }
    let named = raw.kind.as_deref().unwrap_or("chat");
    let kind = match ModelKind::ALL.into_iter().find(|k| k.name() == named) {
        Some(kind) => kind,
        None => {
            problems.add(
                format!("{at}.kind"),
                format!("`{named}` is not `chat`, `rerank`, `asr`, `tts` or `ocr`"),
            );
            ModelKind::Chat
        }
    };
    // A reranker with the local fallback may rank with the embedder alone.
    if raw.targets.is_empty() && !(kind == ModelKind::Rerank && raw.local_fallback != Some(false)) {
        problems.add(format!("{at}.targets"), "must list at least one target");
    }
    let mut targets = Vec::new();
    for (i, text) in raw.targets.iter().enumerate() {
        let key = format!("{at}.targets[{i}]");
        match text.split_once(':') {
            // A local provider serves one model: its name alone is the target.
            None if locals.contains(text.as_str()) => targets.push(TargetRef {
                provider: text.clone(),
                model: String::new(),
            }),
            Some((provider, model)) if !provider.is_empty() && !model.is_empty() => {
                if !providers.contains(provider) {
                    problems.add(&key, format!("provider `{provider}` is not configured"));
                }
                targets.push(TargetRef {
                    provider: provider.to_owned(),
                    model: model.to_owned(),
                });
            }
            _ => problems.add(&key, format!("`{text}` is not `provider:model`")),
        }
    }
    let request_timeout = problems.duration(
        &format!("{at}.request_timeout"),
        raw.request_timeout.as_deref(),
        DEFAULT_REQUEST_TIMEOUT,
    );
    if kind != ModelKind::Chat && (raw.hedge_after.is_some() || raw.rag.is_some()) {
        problems.add(
            &at,
            format!(
                "a {} alias takes neither `hedge_after` nor `rag`",
                kind.name()
            ),
        );
    }
    let rag = match rag_base {
        Some(base) => Some(super::retrieval::alias_settings(
            &at, raw.rag, base, problems,
        )),
        None => {
            if raw.rag.is_some() {
                problems.add(format!("{at}.rag"), "needs a [retrieval] section");
            }
            None
        }
    };
    let cache = super::cache::policy(&at, raw.cache.as_deref(), problems);
    let hedge_after = raw.hedge_after.as_deref().map(|text| {
        let key = format!("{at}.hedge_after");
        let delay = problems.duration(&key, Some(text), Duration::ZERO);
        if delay < Duration::from_millis(10) || delay >= request_timeout {
            problems.add(
                &key,
                "must be at least 10ms and shorter than the request_timeout",
            );
        }
        delay
    });
    (problems.count() == before).then_some(ModelConfig {
        kind,
        targets,
        description: raw.description,
        request_timeout,
        failover_on_content_filter: raw.failover_on_content_filter.unwrap_or(false),
        local_fallback: raw.local_fallback.unwrap_or(true),
        rag,
        cache,
        hedge_after,
    })
}
