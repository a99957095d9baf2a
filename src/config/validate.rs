//! Raw config → [`Config`], collecting every problem instead of stopping at the first,
//! so an operator fixes a file in one round.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::auth::auth;
use super::embeddings::embeddings;
use super::models::model;
use super::pii::{guard, pii};
use super::providers::provider;
use super::raw::RawConfig;
use super::server::{log, server};
use super::{Config, Env, Problem, Secret, parse_duration};

/// No deadline or breaker period is longer than a day.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Collects problems while validation goes on.
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    /// How many have been found so far (a section compares before and after).
    pub(super) fn count(&self) -> usize {
        self.0.len()
    }

    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// A positive duration at `key`, or `default` when it is not set.
    pub(super) fn duration(
        &mut self,
        key: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) if !d.is_zero() && d <= MAX_DURATION => d,
            Some(Ok(_)) => {
                self.add(key, "must be longer than zero and at most 24h");
                default
            }
            Some(Err(e)) => {
                self.add(key, e);
                default
            }
        }
    }

    /// The secret in the environment variable `var` names, which must be set.
    pub(super) fn secret(&mut self, key: &str, var: &str, env: &Env) -> Option<Secret> {
        match env.get(var).filter(|v| !v.is_empty()) {
            Some(value) => Some(Secret::new(value)),
            None => {
                self.add(key, format!("environment variable {var} is not set"));
                None
            }
        }
    }
}

/// The config, and every problem found in it (the caller decides which matter).
pub(super) fn validate(raw: RawConfig, env: &Env) -> (Config, Vec<Problem>) {
    let mut problems = Problems(Vec::new());
    let server = server(raw.server, &mut problems);
    let log = log(raw.log, &mut problems);
    let auth = auth(raw.auth, env, &mut problems);
    // Routes are checked against every declared provider, so a provider with a bad
    // key is reported once, not again by every route that uses it.
    let declared: BTreeSet<String> = raw.providers.keys().cloned().collect();
    let locals: BTreeSet<String> = raw
        .providers
        .iter()
        .filter(|(_, p)| p.kind == "local")
        .map(|(name, _)| name.clone())
        .collect();
    if locals.len() > 1 {
        problems.add(
            "providers",
            "at most one provider may be of kind = \"local\"",
        );
    }
    let embeddings = embeddings(raw.embeddings, &mut problems);
    let pii = pii(raw.pii, env, &mut problems);
    let guard = raw.guard.and_then(|g| guard(g, &mut problems));
    let retrieval = raw
        .retrieval
        .map(|r| super::retrieval::retrieval(r, embeddings.as_ref(), env, &mut problems));
    let rag_base = retrieval.as_ref().map(|r| r.defaults.clone());
    let cache = raw
        .cache
        .map(|c| super::cache::cache(c, embeddings.is_some(), &mut problems));
    let audit = raw
        .audit
        .map(|a| super::audit::audit(a, env, &mut problems));
    let governance = raw.governance.map(|g| {
        let audit = audit.as_ref().map(|a| &a.database);
        let redis = cache.as_ref().and_then(|c| c.redis.as_ref());
        super::governance::governance(g, audit, redis, env, &mut problems)
    });
    let tracing = raw.tracing.map(|t| super::traces::traces(t, &mut problems));
    let providers: BTreeMap<_, _> = raw
        .providers
        .into_iter()
        .filter_map(|(name, p)| Some((name.clone(), provider(&name, p, env, &mut problems)?)))
        .collect();
    let models: BTreeMap<String, super::ModelConfig> = raw
        .models
        .into_iter()
        .filter_map(|(alias, m)| {
            Some((
                alias.clone(),
                model(
                    &alias,
                    m,
                    &declared,
                    &locals,
                    rag_base.as_ref(),
                    &mut problems,
                )?,
            ))
        })
        .collect();
    rerank_aliases(&models, &locals, embeddings.is_some(), &mut problems);
    if let Some(alias) = retrieval.as_ref().and_then(|r| r.rerank.as_ref())
        && models
            .get(alias)
            .is_none_or(|m: &super::ModelConfig| m.kind != super::ModelKind::Rerank)
    {
        problems.add(
            "retrieval.rerank",
            format!("`{alias}` is not a rerank alias (a [models] entry with kind = \"rerank\")"),
        );
    }
    let config = Config {
        server,
        log,
        auth,
        providers,
        models,
        embeddings,
        pii,
        guard,
        retrieval,
        cache,
        audit,
        governance,
        tracing,
    };
    (config, problems.0)
}

/// The aliases that are not chat: the local chat model serves none of them, and
/// a rerank alias ranks on its remote targets, then the embedder: it needs one.
fn rerank_aliases(
    models: &BTreeMap<String, super::ModelConfig>,
    locals: &BTreeSet<String>,
    embedder: bool,
    problems: &mut Problems,
) {
    for (alias, model) in models {
        if model.kind == super::ModelKind::Chat {
            continue;
        }
        let at = format!("models.{alias}");
        if model.targets.iter().any(|t| locals.contains(&t.provider)) {
            problems.add(
                format!("{at}.targets"),
                format!(
                    "the local chat model serves chat only, not {}",
                    model.kind.name()
                ),
            );
        }
        if model.kind != super::ModelKind::Rerank {
            continue;
        }
        if model.targets.is_empty() && !(embedder && model.local_fallback) {
            problems.add(
                &at,
                "ranks with nothing: give it targets, or an [embeddings] section for the local fallback",
            );
        }
    }
}
