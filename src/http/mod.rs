//! The HTTP API: OpenAI-compatible routes plus health and metrics.

mod admin;
mod auth;
mod body;
mod chat;
mod embeddings;
mod error;
mod health;
mod models;
pub mod observe;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::{get, post};
use axum::{Router, middleware};

pub use auth::ClientKeys;
pub use error::status_for;

use crate::error::GatewayError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.client_keys),
            auth::authenticate,
        ));
    let admin = Router::new()
        .route("/admin/breakers", get(admin::breakers))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));
    Router::new()
        .merge(api)
        .merge(admin)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.server.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            observe::observe,
        ))
        .with_state(state)
}

async fn not_found(uri: Uri) -> GatewayError {
    GatewayError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> GatewayError {
    GatewayError::MethodNotAllowed
}
