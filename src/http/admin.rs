//! `/admin/…`: operator endpoints, behind the admin key (`auth.admin_key_env`).
//! Without an admin key configured they are off.

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::state::AppState;

/// Lets a request through only with `Authorization: Bearer <admin key>`.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(admin_key) = &state.config.auth.admin_key else {
        return GatewayError::Forbidden(
            "the admin API is off: set auth.admin_key_env to enable it".to_owned(),
        )
        .into_response();
    };
    let presented = super::auth::bearer(&request).unwrap_or_default();
    // Comparing digests keeps the comparison's time independent of the key.
    if Sha256::digest(presented.as_bytes()) != Sha256::digest(admin_key.expose().as_bytes()) {
        return GatewayError::Unauthorized("invalid admin key".to_owned()).into_response();
    }
    next.run(request).await
}

/// Every target's circuit breaker: state, counts, and when an open one will probe.
pub async fn breakers(State(state): State<AppState>) -> Json<Value> {
    let now = tokio::time::Instant::now();
    let breakers: Vec<Value> = state
        .routes
        .targets()
        .map(|target| {
            let mut entry = json!(target.breaker.snapshot(now));
            entry["target"] = json!(target.id.as_ref());
            entry
        })
        .collect();
    Json(json!({ "breakers": breakers }))
}
