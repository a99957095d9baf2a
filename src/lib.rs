//! ragway: an OpenAI-compatible edge gateway. Requests pass through
//! [`pipeline::Pipeline::run`]: sanitize → cache → retrieve → generate → respond →
//! record.

pub mod audit;
pub mod cache;
pub mod compute;
pub mod config;
pub mod encode;
pub mod error;
pub mod generate;
pub mod http;
pub mod ingest;
pub mod pipeline;
pub mod retrieve;
pub mod sanitize;
pub mod state;
pub mod telemetry;
pub mod wire;

pub use state::AppState;

/// The whole HTTP application.
pub fn app(state: AppState) -> axum::Router {
    http::router(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then lets open
/// requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Streamed chunks are small writes: without TCP_NODELAY, Nagle's algorithm holds
    // each one back until the previous is acknowledged.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
    });
    let app = app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
