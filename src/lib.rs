//! ragway: an OpenAI-compatible edge gateway. Requests pass through
//! [`pipeline::Pipeline::run`]: sanitize → cache → retrieve → generate → respond →
//! record.
//!
//! Imports point down this table: a module may use the modules of the layers below
//! its own; within a layer, only where the last column allows it, and never round a
//! circle (`tests/architecture.rs` reads every `crate::` path and holds to it).
//!
//! | layer | modules | within the layer |
//! |---|---|---|
//! | entry | http, ingest | no |
//! | composition | state | no |
//! | request path | pipeline, config | no |
//! | stages | admit, sanitize, cache, retrieve, generate, audit | no |
//! | bottom | call, db, tokens, wire, error, resilience, quota, encode, secret, tls, tiktoken, compute, telemetry | acyclic |

pub mod admit;
pub mod audit;
pub mod cache;
pub mod call;
pub mod compute;
pub mod config;
pub mod db;
pub mod encode;
pub mod error;
pub mod generate;
pub mod http;
pub mod ingest;
pub mod pipeline;
pub mod quota;
pub mod resilience;
pub mod retrieve;
pub mod sanitize;
pub mod secret;
pub mod state;
pub mod telemetry;
pub mod tiktoken;
pub mod tls;
pub mod tokens;
pub mod wire;

pub use state::AppState;

/// The whole HTTP application.
pub fn app(state: AppState) -> axum::Router {
    http::router(state)
}

/// Serves `app(state)` on `listener`, connections spread over `server.workers`
/// threads (and `/metrics` on `server.metrics_listen`, when set), until `shutdown`
/// resolves; then lets open requests and streams finish for what `server.shutdown_grace_secs` leaves after the audit trail's share
/// ([`AppState::audit_reserve`]), and closes what is still open.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = &state.config.server;
    let limits = http::server::ConnectionLimits {
        header_read_timeout: server.header_read_timeout,
        body_read_timeout: server.body_read_timeout,
        max_connections: server.max_connections,
        max_connections_per_peer: server.max_connections_per_peer,
    };
    let drain = server.shutdown_grace.saturating_sub(state.audit_reserve());
    let stop = tokio_util::sync::CancellationToken::new();
    let until = move |stop: tokio_util::sync::CancellationToken| async move {
        stop.cancelled().await;
        tokio::time::Instant::now() + drain
    };
    let metrics_server = match server.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address).await?;
            tracing::info!(address = %listener.local_addr()?, "metrics listening");
            let router = http::metrics_router(state.clone());
            let metrics = std::sync::Arc::clone(&state.metrics);
            let until = until(stop.clone());
            Some(tokio::spawn(async move {
                let workers = http::workers::Workers::current();
                http::server::serve(listener, router, limits, metrics, &workers, until).await
            }))
        }
        None => None,
    };
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal.cancel();
    });
    let workers = http::workers::Workers::start(server.workers)?;
    let metrics = std::sync::Arc::clone(&state.metrics);
    let tasks = state.tasks().clone();
    let served =
        http::server::serve(listener, app(state), limits, metrics, &workers, until(stop)).await;
    // Streams' ends and cache stores run on the workers: they go on until the
    // caller has waited for them (or exits).
    workers.release_after(tasks);
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    served
}
