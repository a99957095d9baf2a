//! `GET /v1/models` and `GET /v1/models/{id}`: the aliases clients may ask for.

use axum::Json;
use axum::extract::{Path, State};

use crate::error::GatewayError;
use crate::state::AppState;
use crate::wire::{ModelCard, ModelList};

pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".to_owned(),
        data: state.routes.aliases().map(|a| card(&state, a)).collect(),
    })
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, GatewayError> {
    match state.routes.get(&id) {
        Some(route) => Ok(Json(card(&state, &route.alias))),
        None => Err(GatewayError::ModelNotFound(id)),
    }
}

fn card(state: &AppState, alias: &str) -> ModelCard {
    ModelCard {
        id: alias.to_owned(),
        object: "model".to_owned(),
        created: state.started_at,
        owned_by: "ragway".to_owned(),
    }
}
