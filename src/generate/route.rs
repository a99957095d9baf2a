//! The routing table: each model alias a client may ask for, with its ordered targets.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::ChatProvider;
use super::openai::OpenAiProvider;
use crate::config::{Config, ProviderKind};

/// One `provider:upstream-model` a route may call.
pub struct Target {
    /// `provider:model`, as written in the config; the label in headers and metrics.
    pub id: Arc<str>,
    /// The model name sent upstream (suffixes such as Qiniu's `?search` included).
    pub model: String,
    pub provider: Arc<dyn ChatProvider>,
}

pub struct Route {
    pub alias: Arc<str>,
    pub targets: Vec<Target>,
}

#[derive(Default)]
pub struct Routes {
    by_alias: BTreeMap<String, Arc<Route>>,
}

impl Routes {
    /// Builds every provider once and every route over them.
    pub fn from_config(config: &Config, http: &reqwest::Client) -> Routes {
        let providers: BTreeMap<&str, Arc<dyn ChatProvider>> = config
            .providers
            .iter()
            .map(|(name, p)| {
                let provider: Arc<dyn ChatProvider> = match p.kind {
                    ProviderKind::Openai => Arc::new(OpenAiProvider::new(p, http.clone())),
                };
                (name.as_str(), provider)
            })
            .collect();
        let by_alias = config
            .models
            .iter()
            .map(|(alias, model)| {
                let targets = model
                    .targets
                    .iter()
                    .filter_map(|t| {
                        Some(Target {
                            id: t.to_string().into(),
                            model: t.model.clone(),
                            // Validation guarantees the provider exists.
                            provider: providers.get(t.provider.as_str())?.clone(),
                        })
                    })
                    .collect();
                let route = Route {
                    alias: alias.as_str().into(),
                    targets,
                };
                (alias.clone(), Arc::new(route))
            })
            .collect();
        Routes { by_alias }
    }

    pub fn get(&self, alias: &str) -> Option<Arc<Route>> {
        self.by_alias.get(alias).cloned()
    }

    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.by_alias.keys().map(String::as_str)
    }
}
