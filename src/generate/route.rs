//! The routing table: each model alias a client may ask for, with its ordered targets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::local::LocalProvider;
use super::openai::OpenAiProvider;
use super::{ChatProvider, Deadlines};
use crate::config::{Config, LocalInput, ModelConfig, ProviderKind, TargetRef};
use crate::resilience::{Breaker, RetryPolicy};
use crate::telemetry::Metrics;

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
}

pub struct Route {
    pub alias: Arc<str>,
    pub targets: Vec<Arc<Target>>,
    /// The deadline for the whole request, across every target and retry.
    pub request_timeout: Duration,
    pub failover_on_content_filter: bool,
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
    /// Builds every provider once, every target once, and every route over them.
    /// The local model, when there is one, ends every route that does not opt out,
    /// and answers on its own as `local`.
    pub fn from_config(config: &Config, metrics: &Arc<Metrics>) -> Result<Routes, LoadError> {
        let mut providers: BTreeMap<&str, Arc<dyn ChatProvider>> = BTreeMap::new();
        for (name, p) in &config.providers {
            let failed = |message: String| LoadError {
                provider: name.clone(),
                message,
            };
            let provider: Arc<dyn ChatProvider> = match (&p.kind, &p.local) {
                (ProviderKind::Local, Some(local)) => Arc::new(
                    LocalProvider::load(local, Arc::clone(metrics))
                        .map_err(|e| failed(e.to_string()))?,
                ),
                _ => Arc::new(OpenAiProvider::new(p).map_err(|e| failed(e.to_string()))?),
            };
            providers.insert(name.as_str(), provider);
        }
        let local = config
            .providers
            .iter()
            .find(|(_, p)| p.kind == ProviderKind::Local)
            .map(|(name, _)| TargetRef {
                provider: name.clone(),
                model: String::new(),
            });
        let mut models = config.models.clone();
        if let Some(local) = &local {
            for model in models.values_mut() {
                if model.local_fallback && !model.targets.contains(local) {
                    model.targets.push(local.clone());
                }
            }
            models
                .entry(LOCAL_ALIAS.to_owned())
                .or_insert_with(|| ModelConfig {
                    targets: vec![local.clone()],
                    description: Some("the model served by this gateway".to_owned()),
                    request_timeout: Duration::from_secs(120),
                    failover_on_content_filter: false,
                    local_fallback: false,
                    // The retrieve stage's defaults apply.
                    rag: None,
                    cache: crate::cache::CachePolicy::Deterministic,
                });
        }
        let mut targets: BTreeMap<Arc<str>, Arc<Target>> = BTreeMap::new();
        let mut by_alias = BTreeMap::new();
        for (alias, model) in &models {
            let mut route_targets = Vec::new();
            for t in &model.targets {
                // Validation guarantees the provider exists.
                let (Some(provider), Some(settings)) = (
                    providers.get(t.provider.as_str()),
                    config.providers.get(&t.provider),
                ) else {
                    continue;
                };
                let id: Arc<str> = t.to_string().into();
                let target = targets.entry(id.clone()).or_insert_with(|| {
                    Arc::new(Target {
                        id,
                        model: t.model.clone(),
                        provider: provider.clone(),
                        breaker: Arc::new(Breaker::new(settings.breaker)),
                        retry: settings.retry,
                        deadlines: settings.deadlines,
                        stream_upstream: settings.stream_upstream,
                        raw_input: settings.kind == ProviderKind::Local
                            && config.pii.local_input == LocalInput::Raw,
                        local: settings.kind == ProviderKind::Local,
                    })
                });
                route_targets.push(Arc::clone(target));
            }
            let route = Route {
                alias: alias.as_str().into(),
                targets: route_targets,
                request_timeout: model.request_timeout,
                failover_on_content_filter: model.failover_on_content_filter,
            };
            by_alias.insert(alias.clone(), Arc::new(route));
        }
        Ok(Routes { by_alias, targets })
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
