//! The HTTP API: OpenAI-compatible routes plus health and metrics.

mod admin;
mod audio;
mod auth;
mod body;
mod chat;
mod completions;
mod console;
mod cors;
mod documents;
mod embeddings;
mod error;
mod frame;
mod health;
mod keys;
mod limits;
mod live;
mod messages;
mod models;
pub mod observe;
mod quickack;
mod rerank;
mod responses;
pub mod server;
mod usage;
mod voice;
pub mod workers;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::{delete, get, post};
use axum::{Router, middleware};

use crate::error::GatewayError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let audio_limit = voice::audio_body_limit(state.config.server.max_body_bytes);
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/rerank", post(rerank::rerank))
        .route(
            "/v1/voice/asr",
            post(voice::asr)
                .layer(DefaultBodyLimit::max(audio_limit))
                .get(live::asr),
        )
        .route(
            "/v1/audio/transcriptions",
            post(audio::transcriptions).layer(DefaultBodyLimit::max(audio_limit)),
        )
        .route("/v1/voice/tts", post(voice::tts))
        .route("/v1/audio/speech", post(audio::speech))
        .route("/v1/images/ocr", post(voice::ocr))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route("/v1/usage", get(usage::own))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.client_keys),
            auth::authenticate,
        ));
    // Anthropic's clients read errors in their own shape, the key's refusal too.
    let anthropic = Router::new()
        .route("/v1/messages", post(messages::messages))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.client_keys),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(messages::anthropic_errors));
    let admin = Router::new()
        .route("/admin/breakers", get(admin::breakers))
        .route("/admin/breakers/{target}/reset", post(admin::reset_breaker))
        .route("/admin/cache/purge", post(admin::purge_cache))
        .route("/admin/audit", get(admin::audit))
        .route("/admin/usage", get(usage::admin))
        .route("/admin/keys", post(keys::create).get(keys::list))
        .route(
            "/admin/keys/{id}",
            get(keys::show).patch(keys::patch).delete(keys::revoke),
        )
        .route("/admin/keys/{id}/rotate", post(keys::rotate))
        .route("/admin/tenants", get(keys::tenants))
        .route(
            "/admin/tenants/{tenant}",
            get(keys::tenant).put(keys::put_tenant),
        )
        .route("/admin/tenants/{tenant}/reindex", post(documents::reindex))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));
    // Documents take a client key or the admin key, and uploads up to the document
    // limit rather than the chat limit.
    let documents = Router::new()
        .route(
            "/v1/documents",
            post(documents::create)
                .get(documents::list)
                .delete(documents::delete_named),
        )
        .route("/v1/documents/{*id}", delete(documents::delete))
        .layer(document_body_limit(&state))
        // Not under /v1/documents/ (a document may be called `search`), and a
        // question's body is held to the chat limit.
        .route("/v1/search", post(documents::search))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            documents::principal,
        ));
    let mut router = Router::new()
        .merge(api)
        .merge(anthropic)
        .merge(admin)
        .merge(documents)
        .merge(console::router(state.clone()))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    // With its own address, /metrics is served there only (see `metrics_router`).
    if state.config.server.metrics_listen.is_none() {
        router = router.route("/metrics", get(health::metrics));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.server.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        // Outermost: a preflight is answered before anything else sees it.
        .layer(middleware::from_fn_with_state(state.clone(), cors::cors))
        .with_state(state)
}

/// The body limit of a document upload: room for the multipart framing around a
/// document of the largest size.
fn document_body_limit(state: &AppState) -> DefaultBodyLimit {
    let document_limit = state
        .config
        .retrieval
        .as_ref()
        .map_or(0, |r| r.max_document_bytes);
    DefaultBodyLimit::max(document_limit + 64 * 1024)
}

/// `/metrics` alone, for `server.metrics_listen`: scrapers reach it on an address
/// the public never sees.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(uri: Uri) -> GatewayError {
    GatewayError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> GatewayError {
    GatewayError::MethodNotAllowed
}
