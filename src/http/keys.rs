//! `/admin/keys` and `/admin/tenants`: client keys and tenants managed while the
//! gateway runs (with `[governance]`). A key is shown once, in the answer that
//! creates or rotates it; the table keeps its SHA-256 only.

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::admit::grant::{self, KeyRecord, TenantRecord};
use crate::admit::manage::{self, ManageError};
use crate::admit::store::{KeyStore, StoreError};
use crate::error::GatewayError;
use crate::state::AppState;

type Answer = Result<(StatusCode, Json<Value>), GatewayError>;

fn store(state: &AppState) -> Result<&KeyStore, GatewayError> {
    state.client_keys.store().ok_or_else(|| {
        GatewayError::NotFound(
            "/admin/keys (keys are managed with [governance] in the config)".to_owned(),
        )
    })
}

/// A store failure is told without the driver's words (they may name hosts and
/// users); the log has them.
pub(super) fn unavailable(error: StoreError) -> GatewayError {
    tracing::warn!(%error, "key table");
    GatewayError::Unavailable {
        message: "the key table cannot be reached; try again shortly".to_owned(),
        retry_after: std::time::Duration::from_secs(2),
    }
}

impl From<ManageError> for GatewayError {
    fn from(error: ManageError) -> Self {
        match error {
            ManageError::Invalid(invalid) => GatewayError::invalid(
                format!("{}: {}", invalid.field, invalid.message),
                Some(invalid.field),
            ),
            ManageError::NoSuchKey(id) => {
                GatewayError::NotFound(format!("/admin/keys/{id} (no such key)"))
            }
            ManageError::Store(error) => unavailable(error),
        }
    }
}

fn body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, GatewayError> {
    super::body::parse_json(headers, body, state.config.server.max_body_bytes)
}

/// The key's view; with the key itself when it was just made.
async fn shown(state: &AppState, record: KeyRecord, key: Option<String>) -> Json<Value> {
    let mut view = record.view(grant::now_us());
    if let Some(key) = key {
        view["key"] = json!(key);
    }
    known_here(state, || state.client_keys.learn(record)).await;
    Json(view)
}

/// This replica knows a change it made at once (the others at their next read):
/// it reads the table past what it knew, so that a read already on its way cannot
/// put an older row back; `or_else` applies the change itself when the table
/// cannot be read just now.
async fn known_here(state: &AppState, or_else: impl FnOnce()) {
    if state.client_keys.refresh().await.is_err() {
        or_else();
    }
}

/// `POST /admin/keys`: 201 with the key, shown this once.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Result<Bytes, BytesRejection>,
) -> Answer {
    let store = store(&state)?;
    let (record, key) = manage::create(store, body(&state, &headers, request)?).await?;
    Ok((StatusCode::CREATED, shown(&state, record, Some(key)).await))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    tenant: Option<String>,
}

/// `GET /admin/keys[?tenant=]`.
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    let store = store(&state)?;
    let Query(query) = query.map_err(|e| GatewayError::invalid(e.body_text(), None))?;
    let keys = store
        .list(query.tenant.as_deref())
        .await
        .map_err(unavailable)?;
    let now = grant::now_us();
    let data: Vec<Value> = keys.iter().map(|k| k.view(now)).collect();
    Ok((
        StatusCode::OK,
        Json(json!({ "object": "list", "data": data })),
    ))
}

/// `GET /admin/keys/{id}`.
pub async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Answer {
    let key = store(&state)?.get(&id).await.map_err(unavailable)?;
    let key = key.ok_or(ManageError::NoSuchKey(id))?;
    Ok((StatusCode::OK, Json(key.view(grant::now_us()))))
}

/// `PATCH /admin/keys/{id}`: changes the fields given; a bad field changes nothing.
pub async fn patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    request: Result<Bytes, BytesRejection>,
) -> Answer {
    let store = store(&state)?;
    let key = manage::patch(store, &id, body(&state, &headers, request)?).await?;
    Ok((StatusCode::OK, shown(&state, key, None).await))
}

/// `DELETE /admin/keys/{id}`: revokes the key.
pub async fn revoke(State(state): State<AppState>, Path(id): Path<String>) -> Answer {
    let key = manage::revoke(store(&state)?, &id).await?;
    Ok((StatusCode::OK, shown(&state, key, None).await))
}

/// `POST /admin/keys/{id}/rotate`: a new key for the same id.
pub async fn rotate(State(state): State<AppState>, Path(id): Path<String>) -> Answer {
    let (record, key) = manage::rotate(store(&state)?, &id).await?;
    Ok((StatusCode::OK, shown(&state, record, Some(key)).await))
}

/// `PUT /admin/tenants/{tenant}`: the tenant's limits and budget, which its keys
/// share (a key never gets more than its tenant).
pub async fn put_tenant(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    request: Result<Bytes, BytesRejection>,
) -> Answer {
    let store = store(&state)?;
    let record = manage::put_tenant(store, &tenant, body(&state, &headers, request)?).await?;
    let view = record.view();
    known_here(&state, || state.client_keys.learn_tenant(record)).await;
    Ok((StatusCode::OK, Json(view)))
}

/// `GET /admin/tenants`: the tenants with settings of their own.
pub async fn tenants(State(state): State<AppState>) -> Answer {
    let tenants = store(&state)?.tenants().await.map_err(unavailable)?;
    let data: Vec<Value> = tenants.iter().map(TenantRecord::view).collect();
    Ok((
        StatusCode::OK,
        Json(json!({ "object": "list", "data": data })),
    ))
}

/// `GET /admin/tenants/{tenant}`: its settings (none set: no limits, no budget).
pub async fn tenant(State(state): State<AppState>, Path(tenant): Path<String>) -> Answer {
    let found = store(&state)?.tenant(&tenant).await.map_err(unavailable)?;
    let record = found.unwrap_or(TenantRecord {
        tenant,
        ..TenantRecord::default()
    });
    Ok((StatusCode::OK, Json(record.view())))
}
