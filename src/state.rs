//! The application state, built once from the validated config.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_util::task::TaskTracker;

use crate::audit::NoAudit;
use crate::cache::NoCache;
use crate::config::Config;
use crate::generate::{Router, Routes};
use crate::http::ClientKeys;
use crate::pipeline::Pipeline;
use crate::retrieve::NoRetrieval;
use crate::sanitize::{ContentGuard, PiiSanitizer};
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
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Provider(#[from] crate::generate::LoadError),
    #[error("embeddings: {0}")]
    Embedder(#[from] ragway_engine::EngineError),
    #[error("content guard: {0}")]
    Guard(String),
}

impl AppState {
    pub fn from_config(config: Config) -> Result<AppState, BuildError> {
        AppState::from_config_with(config, |_| {})
    }

    /// Like [`AppState::from_config`], with a chance to replace pipeline stages (an
    /// embedding application's own audit sink or retriever, say) before serving.
    pub fn from_config_with(
        config: Config,
        customize: impl FnOnce(&mut Pipeline),
    ) -> Result<AppState, BuildError> {
        let metrics = Arc::new(Metrics::new());
        let routes = Arc::new(Routes::from_config(&config)?);
        let embedder = match &config.embeddings {
            Some(e) => {
                let device = ragway_engine::device(&e.device)?;
                let model = ragway_engine::Embedder::load(&e.model, &device)?;
                Some((e.name.clone(), Arc::new(model)))
            }
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
        let mut pipeline = Pipeline {
            sanitizer: Arc::new(PiiSanitizer::new(
                config.pii.actions.clone(),
                hash_key(&config),
            )),
            guard: Arc::new(guard),
            cache: Arc::new(NoCache),
            retriever: Arc::new(NoRetrieval),
            generator: Arc::new(Router::new(Arc::clone(&metrics))),
            audit: Arc::new(NoAudit),
            metrics: Arc::clone(&metrics),
            tasks: TaskTracker::new(),
        };
        customize(&mut pipeline);
        Ok(AppState(Arc::new(Shared {
            client_keys: Arc::new(ClientKeys::from_config(&config.auth)),
            config: Arc::new(config),
            routes,
            pipeline,
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            embedder,
        })))
    }

    /// Background work (streams, cache stores) still running.
    pub fn tasks(&self) -> &TaskTracker {
        &self.pipeline.tasks
    }
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
