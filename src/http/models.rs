//! `GET /v1/models` and `GET /v1/models/{id}`: the chat aliases clients may ask
//! for, and the embedding model.

use axum::Json;
use axum::extract::{Extension, Path, State};

use crate::call::Caller;
use crate::error::GatewayError;
use crate::state::AppState;
use crate::wire::{ModelCard, ModelList};

/// The models the caller's key may use.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<ModelList> {
    Json(ModelList {
        object: "list".to_owned(),
        data: state
            .routes
            .aliases()
            .chain(embedder(&state).filter(|name| state.routes.get(name).is_none()))
            .filter(|alias| caller.models.allows(alias))
            .map(|a| card(&state, a))
            .collect(),
    })
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, GatewayError> {
    if !caller.models.allows(&id) {
        return Err(GatewayError::ModelNotFound(id));
    }
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
