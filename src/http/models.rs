//! `GET /v1/models` and `GET /v1/models/{id}`: the chat aliases clients may ask
//! for, and the embedding model.

use axum::Json;
use axum::extract::{Path, State};

use crate::error::GatewayError;
use crate::state::AppState;
use crate::wire::{ModelCard, ModelList};

pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".to_owned(),
        data: state
            .routes
            .aliases()
            .chain(embedder(&state).filter(|name| state.routes.get(name).is_none()))
            .map(|a| card(&state, a))
            .collect(),
    })
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, GatewayError> {
    match state.routes.get(&id) {
        Some(route) => Ok(Json(card(&state, &route.alias))),
        None if embedder(&state) == Some(id.as_str()) => Ok(Json(card(&state, &id))),
        None => Err(GatewayError::ModelNotFound(id)),
    }
}

/// The name `/v1/embeddings` answers to, when an embedder is configured.
fn embedder(state: &AppState) -> Option<&str> {
    state.embedder.as_ref().map(|(name, _)| name.as_str())
}

fn card(state: &AppState, alias: &str) -> ModelCard {
    ModelCard {
        id: alias.to_owned(),
        object: "model".to_owned(),
        created: state.started_at,
        owned_by: "ragway".to_owned(),
    }
}
