//! The application state, built once from the validated config.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admit::ClientKeys;
use crate::audit::{AuditSink, AuditTrail, NoAudit};
use crate::cache::redis::RedisTier;
use crate::cache::semantic::Semantic;
use crate::cache::tiered::TieredCache;
use crate::cache::{AnswerCache, CachePolicy, NoCache};
use crate::call::{Caller, Price};
use crate::config::{
    Config, LocalInput, ModelConfig, ModelKind, ProviderKind, RetrievalConfig, StoreConfig,
    TargetRef,
};
use crate::generate::{
    ChatProvider, LOCAL_ALIAS, LoadError, LocalProvider, OpenAiProvider, Ranker, Route, Router,
    Routes, Target,
};
use crate::pipeline::{AliasRanker, Pipeline};
use crate::quota::{Counters, Gate};
use crate::resilience::Breaker;
use crate::retrieve::chunk::ChunkSize;
use crate::retrieve::corpus::Corpus;
use crate::retrieve::ground::Grounding;
use crate::retrieve::prompt::Prompts;
use crate::retrieve::store::Switch;
use crate::retrieve::store::VectorStore;
use crate::retrieve::store::edge::EdgeStore;
use crate::retrieve::store::server::QdrantServer;
use crate::retrieve::{NoRetrieval, Retriever};
use crate::sanitize::{ContentGuard, PiiSanitizer, Sanitizer, Vault};
use crate::telemetry::Metrics;

/// Cheap to clone (one `Arc`): axum clones it for every handler and middleware.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub config: Arc<Config>,
    pub routes: Arc<Routes>,
    pub pipeline: Pipeline,
    pub metrics: Arc<Metrics>,
    pub client_keys: Arc<ClientKeys>,
    /// Set when shutdown begins: `/readyz` turns away new traffic.
    pub draining: Arc<AtomicBool>,
    /// Unix seconds at start-up (the `created` of each model card).
    pub started_at: u64,
    /// The sentence embedder and the name clients ask for it by.
    pub embedder: Option<(String, Arc<ragway_engine::Embedder>)>,
    /// OpenAI's `cl100k_base` ids → text, for token-id input to the embedder.
    pub token_vocabulary: Option<Arc<crate::tiktoken::Vocabulary>>,
    /// The tenants' documents, with `[retrieval]` configured.
    pub corpus: Option<Arc<Corpus>>,
    /// Cancelled when shutdown begins: background loops end.
    pub shutdown: CancellationToken,
    /// The audit trail, with `[audit]` configured.
    pub audit: Option<Arc<AuditTrail>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Provider(#[from] crate::generate::LoadError),
    #[error("embeddings: {0}")]
    Embedder(#[from] ragway_engine::EngineError),
    #[error("embeddings: {0}")]
    Vocabulary(#[from] crate::tiktoken::VocabularyError),
    #[error("content guard: {0}")]
    Guard(String),
    #[error("retrieval: {0}")]
    Retrieval(String),
    #[error("cache: {0}")]
    Cache(String),
    #[error("audit: {0}")]
    Audit(String),
    #[error("key table: {0}")]
    Keys(String),
}

impl AppState {
    pub async fn from_config(config: Config) -> Result<AppState, BuildError> {
        AppState::from_config_with(config, |_| {}).await
    }

    /// Like [`AppState::from_config`], with a chance to replace pipeline stages (an
    /// embedding application's own audit sink or retriever, say) before serving.
    pub async fn from_config_with(
        config: Config,
        customize: impl FnOnce(&mut Pipeline),
    ) -> Result<AppState, BuildError> {
        // Before the audit store or the Redis tier makes any TLS connection.
        crate::tls::install_crypto_provider();
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let counters = counters(&config, &metrics, &shutdown)?;
        let routes = Arc::new(routes(&config, &metrics, &counters)?);
        let embedder = match &config.embeddings {
            Some(e) => {
                let device = ragway_engine::device(&e.device)?;
                let model = ragway_engine::Embedder::load(&e.model, &device)?;
                Some((e.name.clone(), Arc::new(model)))
            }
            None => None,
        };
        let token_vocabulary = match config
            .embeddings
            .as_ref()
            .and_then(|e| e.token_vocabulary.as_deref())
        {
            Some(path) => Some(Arc::new(crate::tiktoken::Vocabulary::load(path)?)),
            None => None,
        };
        for target in routes.targets() {
            metrics.breaker_registered(&target.id);
        }
        let guard = match &config.guard {
            Some(g) => ContentGuard::from_file(&g.file, g.action, g.check_every)
                .map_err(BuildError::Guard)?,
            None => ContentGuard::disabled(),
        };
        let ranker = Arc::new(Ranker::new(
            Arc::clone(&metrics),
            embedder.as_ref().map(|(_, e)| Arc::clone(e)),
        ));
        let (corpus, retriever) = match (&config.retrieval, &embedder) {
            (Some(retrieval), Some((_, embedder))) => {
                let (corpus, mut grounding) =
                    retrieval_stage(&config, retrieval, embedder, &metrics).await?;
                if let Some(route) = retrieval.rerank.as_deref().and_then(|a| routes.get(a)) {
                    let ranker = Arc::clone(&ranker);
                    grounding = grounding.reranked_by(Arc::new(AliasRanker::new(ranker, route)));
                }
                (Some(corpus), Arc::new(grounding) as Arc<dyn Retriever>)
            }
            _ => (None, Arc::new(NoRetrieval) as Arc<dyn Retriever>),
        };
        let sanitizer: Arc<dyn Sanitizer> = Arc::new(PiiSanitizer::new(
            config.pii.actions.clone(),
            hash_key(&config),
        ));
        let audit = match &config.audit {
            Some(a) => {
                let redact = Arc::new(AuditRedaction(Arc::clone(&sanitizer)));
                Some(Arc::new(
                    AuditTrail::start(a, Arc::clone(&metrics), redact)
                        .map_err(BuildError::Audit)?,
                ))
            }
            None => None,
        };
        let audit_sink: Arc<dyn AuditSink> = match &audit {
            Some(trail) => trail.writer.clone(),
            None => Arc::new(NoAudit),
        };
        let client_keys = managed_keys(&config, &shutdown).await?;
        let mut pipeline = Pipeline {
            admission: admission(&config, &routes, &client_keys, &metrics, counters),
            sanitizer,
            guard: Arc::new(guard),
            cache: answer_cache(&config, embedder.as_ref().map(|(_, e)| e), &metrics)?,
            retriever,
            generator: Arc::new(Router::new(Arc::clone(&metrics))),
            ranker,
            audit: audit_sink,
            metrics: Arc::clone(&metrics),
            tasks: TaskTracker::new(),
        };
        customize(&mut pipeline);
        Ok(AppState(Arc::new(Shared {
            client_keys,
            config: Arc::new(config),
            routes,
            pipeline,
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            embedder,
            token_vocabulary,
            corpus,
            shutdown,
            audit,
        })))
    }

    /// The document store and embedder alone, for `ragway ingest`.
    pub async fn open_corpus(config: &Config) -> Result<Arc<Corpus>, BuildError> {
        AppState::open_corpus_with(config, Switch::Refuse).await
    }

    /// [`AppState::open_corpus`], taking over a store another embedder filled (see
    /// [`EdgeStore::switch_to`]): what `ragway reindex` opens.
    pub async fn open_corpus_switching(config: &Config) -> Result<Arc<Corpus>, BuildError> {
        AppState::open_corpus_with(config, Switch::Adopt).await
    }

    async fn open_corpus_with(config: &Config, switch: Switch) -> Result<Arc<Corpus>, BuildError> {
        let (Some(retrieval), Some(e)) = (&config.retrieval, &config.embeddings) else {
            return Err(BuildError::Retrieval(
                "needs [retrieval] and [embeddings] in the config".to_owned(),
            ));
        };
        let device = ragway_engine::device(&e.device)?;
        let embedder = Arc::new(ragway_engine::Embedder::load(&e.model, &device)?);
        let store = open_store(&retrieval.store, &embedder, switch, None).await?;
        Ok(Arc::new(corpus(store, embedder, retrieval)))
    }

    /// Keeps the document store healthy while serving (see
    /// [`VectorStore::maintain`]); ends with `tasks`' shutdown, finishing the store.
    pub fn spawn_maintenance(&self, every: std::time::Duration) {
        let Some(corpus) = self.corpus.clone() else {
            return;
        };
        let token = self.shutdown.clone();
        self.pipeline.tasks.spawn(async move {
            let store = corpus.store();
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(error) = store.maintain().await {
                    tracing::warn!(%error, "document store maintenance failed");
                }
            }
            if let Err(error) = store.finish().await {
                tracing::error!(%error, "document store: final flush failed");
            }
        });
    }

    /// Writes the audit rows still queued or spooled (call once background work has
    /// finished, so the last streams' records are in).
    pub async fn finish_audit(&self, within: std::time::Duration) {
        if let Some(trail) = &self.audit {
            trail.writer.finish(within).await;
        }
    }

    /// The part of `server.shutdown_grace_secs` kept for the audit trail's last
    /// writes after requests have drained: what the writer would take on its own
    /// (its shutdown deadline and one write), at most half the grace. Whatever it
    /// cannot write in that time is in its spool, replayed at the next start.
    pub fn audit_reserve(&self) -> std::time::Duration {
        let Some(audit) = &self.config.audit else {
            return std::time::Duration::ZERO;
        };
        let own = audit.shutdown_deadline + audit.write_timeout + std::time::Duration::from_secs(1);
        own.min(self.config.server.shutdown_grace / 2)
    }

    /// Background work (streams, cache stores) still running.
    pub fn tasks(&self) -> &TaskTracker {
        &self.pipeline.tasks
    }
}

/// The answer cache: its tiers, and each alias's policy.
fn answer_cache(
    config: &Config,
    embedder: Option<&Arc<ragway_engine::Embedder>>,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn AnswerCache>, BuildError> {
    let Some(cache) = &config.cache else {
        return Ok(Arc::new(NoCache));
    };
    let l2 = match &cache.redis {
        Some(redis) => {
            let ca_pem = redis
                .ca_file
                .as_deref()
                .map(crate::tls::read_ca_file)
                .transpose()
                .map_err(|e| BuildError::Cache(format!("redis_ca_file: {e}")))?;
            Some(
                RedisTier::new(
                    &redis.url,
                    ca_pem,
                    &redis.key_prefix,
                    cache.ttl,
                    redis.timeout,
                )
                .map_err(BuildError::Cache)?,
            )
        }
        None => None,
    };
    let semantic = match (cache.semantic_threshold, embedder) {
        (Some(threshold), Some(embedder)) => {
            Some(Semantic::new(Arc::clone(embedder), threshold, cache.ttl))
        }
        _ => None,
    };
    let policies = config
        .models
        .iter()
        .map(|(alias, m)| (alias.clone(), m.cache))
        .collect();
    Ok(Arc::new(TieredCache::new(
        cache.memory_bytes,
        cache.ttl,
        l2,
        semantic,
        CachePolicy::Deterministic,
        policies,
        Arc::clone(metrics),
    )))
}

/// The document store, and the retrieve stage over it.
async fn retrieval_stage(
    config: &Config,
    retrieval: &RetrievalConfig,
    embedder: &Arc<ragway_engine::Embedder>,
    metrics: &Metrics,
) -> Result<(Arc<Corpus>, Grounding), BuildError> {
    let store = open_store(&retrieval.store, embedder, Switch::Refuse, Some(metrics)).await?;
    let corpus = Arc::new(corpus(store, Arc::clone(embedder), retrieval));
    let prompts = match &retrieval.prompts {
        Some(dir) => Prompts::load(dir).map_err(BuildError::Retrieval)?,
        None => Prompts::builtin(),
    };
    let by_alias = config
        .models
        .iter()
        .filter_map(|(alias, m)| Some((alias.clone(), m.rag.clone()?)))
        .collect();
    let grounding = Grounding::new(
        Arc::clone(&corpus),
        prompts,
        retrieval.language,
        retrieval.defaults.clone(),
        by_alias,
    );
    Ok((corpus, grounding))
}

fn corpus(
    store: Arc<dyn VectorStore>,
    embedder: Arc<ragway_engine::Embedder>,
    retrieval: &RetrievalConfig,
) -> Corpus {
    let size = ChunkSize {
        target: retrieval.chunk_tokens,
        overlap: retrieval.chunk_overlap,
    };
    Corpus::new(store, embedder, size)
        .with_cjk_dense_weight(retrieval.cjk_dense_weight)
        .with_ingest_concurrency(retrieval.ingest_concurrency)
}

/// The deadline of each call to a Qdrant server.
const QDRANT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the configured vector store; `switch` says what becomes of a store
/// another embedder filled (refused when serving, taken over by `ragway
/// reindex`), and a Qdrant collection laid out otherwise than configured is
/// reported (a warning, and in `metrics` when given).
async fn open_store(
    store: &StoreConfig,
    embedder: &ragway_engine::Embedder,
    switch: Switch,
    metrics: Option<&Metrics>,
) -> Result<Arc<dyn VectorStore>, BuildError> {
    let dimension = embedder.dimension;
    let space = embedder.search_space();
    Ok(match store {
        StoreConfig::Embedded { path } => Arc::new(
            match switch {
                Switch::Refuse => EdgeStore::open_for(path, dimension, &space),
                Switch::Adopt => EdgeStore::switch_to(path, dimension, &space),
            }
            .map_err(|e| BuildError::Retrieval(e.to_string()))?,
        ),
        StoreConfig::Qdrant {
            url,
            collection,
            api_key,
            cluster,
            ..
        } => {
            let server = QdrantServer::connect_laid_out(
                url,
                api_key.as_ref().map(|k| k.expose().to_owned()),
                collection,
                dimension,
                QDRANT_TIMEOUT,
                *cluster,
            )
            .await
            .map_err(|e| BuildError::Retrieval(e.to_string()))?;
            if let Some(version) = server.untested_version() {
                let ((low, from), (high, to)) = (
                    *crate::retrieve::store::server::TESTED_RELEASES.start(),
                    *crate::retrieve::store::server::TESTED_RELEASES.end(),
                );
                tracing::warn!(
                    url = %url,
                    version,
                    tested = %format!("{low}.{from} to {high}.{to}"),
                    "the Qdrant server's release is not one ragway is tested with: what it lacks \
                     fails the calls that need it; the v1.16.3 of docker-compose.yml and the Helm \
                     values is"
                );
                if let Some(metrics) = metrics {
                    metrics.vector_store_differs("server_version");
                }
            }
            for difference in server.differences() {
                tracing::warn!(
                    collection = %collection,
                    setting = difference.setting,
                    configured = %difference.configured,
                    collection_has = %difference.collection,
                    "the Qdrant collection keeps the layout it was created with; change it on \
                     the cluster (or the config) to make them agree"
                );
                if let Some(metrics) = metrics {
                    metrics.vector_store_differs(difference.setting);
                }
            }
            Arc::new(
                server
                    .for_embedder(&space, switch)
                    .await
                    .map_err(|e| BuildError::Retrieval(e.to_string()))?,
            )
        }
    })
}

/// The key of the `hash` action: the configured one, or a random one for this run.
fn hash_key(config: &Config) -> Vec<u8> {
    match &config.pii.hash_key {
        Some(key) => key.expose().as_bytes().to_vec(),
        None => [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
            .iter()
            .flat_map(|u| *u.as_bytes())
            .collect(),
    }
}

/// The audit trail's redaction of texts the sanitize stage never saw (request ids,
/// user agents, document ids, providers' errors): credentials scrubbed, then
/// personal data replaced as the gateway's policy says.
struct AuditRedaction(Arc<dyn Sanitizer>);

impl crate::audit::Redact for AuditRedaction {
    fn redact(&self, text: &str) -> String {
        let text = crate::secret::scrub(text);
        self.0
            .sanitize_text(&text, &mut Vault::new())
            .unwrap_or_else(|_| crate::secret::REDACTED.to_owned())
    }
}

/// The counters that limits and budgets are held by: in Redis, shared by the
/// replicas (`governance.redis_url`, or the cache's Redis), or in this process.
fn counters(
    config: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<Arc<dyn Counters>, BuildError> {
    let Some(shared) = config.governance.as_ref().and_then(|g| g.redis.as_ref()) else {
        return Ok(Arc::new(crate::quota::memory::MemoryCounters::default()));
    };
    let ca_pem = shared
        .ca_file
        .as_deref()
        .map(crate::tls::read_ca_file)
        .transpose()
        .map_err(|e| BuildError::Keys(format!("redis_ca_file: {e}")))?;
    let redis =
        crate::resilience::redis::GuardedRedis::new(&shared.url, ca_pem, shared.timeout, "limits")
            .map_err(BuildError::Keys)?;
    let counters = Arc::new(crate::quota::redis::RedisCounters::new(
        redis,
        &shared.key_prefix,
        shared.on_down,
        &uuid::Uuid::new_v4().to_string(),
        Arc::clone(metrics),
    ));
    tokio::spawn(Arc::clone(&counters).keep_up(shutdown.clone()));
    Ok(counters)
}

/// The admission stage: the key table's limits and budgets, held by `counters`;
/// a pass-through without `[governance]`.
fn admission(
    config: &Config,
    routes: &Routes,
    keys: &Arc<ClientKeys>,
    metrics: &Arc<Metrics>,
    counters: Arc<dyn Counters>,
) -> Arc<dyn crate::admit::admission::Admit> {
    let Some(governance) = &config.governance else {
        return Arc::new(crate::admit::admission::Unlimited);
    };
    // Prices are the audit's (`[audit.prices]`); a call is reserved at the
    // dearest target of its route.
    let prices: HashMap<String, Price> =
        config.audit.iter().flat_map(|a| a.prices.clone()).collect();
    let dearest = routes
        .aliases()
        .filter_map(|alias| {
            let route = routes.get(alias)?;
            let price = route
                .targets
                .iter()
                .filter_map(|t| prices.get(t.id.as_ref()).copied())
                .reduce(Price::dearest)?;
            Some((alias.to_owned(), price))
        })
        .collect();
    let budgets = crate::admit::admission::BudgetSettings {
        currency: governance.currency.clone(),
        soft: governance.soft_budget,
        offset: governance.budget_utc_offset,
    };
    Arc::new(crate::admit::admission::Admission::new(
        Arc::clone(keys),
        counters,
        Arc::clone(metrics),
        governance.reserve_output_tokens,
        prices,
        dearest,
        budgets,
    ))
}

/// How long start-up waits for the key table before serving with what it has.
const KEY_TABLE_WAIT: Duration = Duration::from_secs(5);

/// The client keys: those of `[auth]`, and with `[governance]` the key table's,
/// read once now and then followed until `shutdown`.
async fn managed_keys(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Arc<ClientKeys>, BuildError> {
    let keys = client_keys(&config.auth);
    let Some(governance) = &config.governance else {
        return Ok(Arc::new(keys));
    };
    let store = crate::admit::store::KeyStore::open(governance.database.url())
        .map_err(|e| BuildError::Keys(crate::secret::scrub(&e.to_string()).into_owned()))?;
    let keys = Arc::new(keys.with_store(store));
    let loaded = match tokio::time::timeout(KEY_TABLE_WAIT, keys.load()).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read the key table yet; serving the [auth] keys meanwhile");
            false
        }
        Err(_) => {
            tracing::warn!(
                "the key table did not answer in time; serving the [auth] keys meanwhile"
            );
            false
        }
    };
    tokio::spawn(Arc::clone(&keys).follow(governance.refresh_every, loaded, shutdown.clone()));
    Ok(keys)
}

/// The client keys of `[auth]`, each standing for its tenant.
fn client_keys(auth: &crate::config::AuthConfig) -> ClientKeys {
    ClientKeys::new(auth.keys.iter().map(|key| {
        let caller = Caller::new(&key.tenant, Some(&key.id));
        (key.sha256, caller)
    }))
}

/// Builds every provider once, every target once, and every route over them. The
/// local model, when there is one, ends every route that does not opt out, and
/// answers on its own as `local`.
fn routes(
    config: &Config,
    metrics: &Arc<Metrics>,
    counters: &Arc<dyn Counters>,
) -> Result<Routes, LoadError> {
    let reserve_output = config
        .governance
        .as_ref()
        .map_or(512, |g| g.reserve_output_tokens);
    let gate = |prefix: String, limits: &crate::quota::Limits| {
        Arc::new(Gate::new(
            prefix,
            *limits,
            Arc::clone(counters),
            reserve_output,
        ))
    };
    // A provider's quota is shared by all its targets: one gate each.
    let provider_gates: BTreeMap<&str, Arc<Gate>> = config
        .providers
        .iter()
        .filter_map(|(name, p)| {
            Some((
                name.as_str(),
                gate(format!("provider/{name}"), p.limits.as_ref()?),
            ))
        })
        .collect();
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
            if model.kind == ModelKind::Chat
                && model.local_fallback
                && !model.targets.contains(local)
            {
                model.targets.push(local.clone());
            }
        }
        models
            .entry(LOCAL_ALIAS.to_owned())
            .or_insert_with(|| ModelConfig {
                kind: ModelKind::Chat,
                targets: vec![local.clone()],
                description: Some("the model served by this gateway".to_owned()),
                request_timeout: Duration::from_secs(120),
                failover_on_content_filter: false,
                local_fallback: false,
                // The retrieve stage's defaults apply.
                rag: None,
                cache: CachePolicy::Deterministic,
                hedge_after: None,
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
                let gates = provider_gates
                    .get(t.provider.as_str())
                    .cloned()
                    .into_iter()
                    .chain(
                        settings
                            .model_limits
                            .get(&t.model)
                            .map(|limits| gate(format!("target/{id}"), limits)),
                    )
                    .collect();
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
                    gates,
                })
            });
            route_targets.push(Arc::clone(target));
        }
        let route = Route {
            alias: alias.as_str().into(),
            kind: model.kind,
            rank_locally: model.kind == ModelKind::Rerank
                && model.local_fallback
                && config.embeddings.is_some(),
            targets: route_targets,
            request_timeout: model.request_timeout,
            failover_on_content_filter: model.failover_on_content_filter,
            hedge_after: model.hedge_after,
        };
        by_alias.insert(alias.clone(), Arc::new(route));
    }
    Ok(Routes::new(by_alias, targets))
}
