//! ragway: an OpenAI-compatible edge gateway. Requests pass through
//! [`pipeline::Pipeline::run`]: sanitize → cache → retrieve → generate → respond →
//! record.

pub mod audit;
pub mod cache;
pub mod config;
pub mod error;
pub mod generate;
pub mod http;
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
