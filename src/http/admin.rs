//! `/admin/…`: operator endpoints, behind the admin key (`auth.admin_key_env`).
//! Without an admin key configured they are off.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
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
    if !matches_admin_key(admin_key.expose(), request.headers()) {
        return GatewayError::Unauthorized("invalid admin key".to_owned()).into_response();
    }
    next.run(request).await
}

/// Whether the request carries the admin key (never, with the admin API off).
pub fn is_admin(state: &AppState, headers: &HeaderMap) -> bool {
    state
        .config
        .auth
        .admin_key
        .as_ref()
        .is_some_and(|key| matches_admin_key(key.expose(), headers))
}

fn matches_admin_key(admin_key: &str, headers: &HeaderMap) -> bool {
    is_admin_key(admin_key, super::auth::bearer(headers).unwrap_or_default())
}

/// Whether `presented` is the admin key (the console's sign-in asks too).
pub(super) fn is_admin_key(admin_key: &str, presented: &str) -> bool {
    // Comparing digests keeps the comparison's time independent of the key.
    Sha256::digest(presented.as_bytes()) == Sha256::digest(admin_key.as_bytes())
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

/// `POST /admin/breakers/{target}/reset`: closes the target's breaker now (its
/// failure streak and back-off forgotten, its totals kept), on this replica.
pub async fn reset_breaker(
    State(state): State<AppState>,
    axum::extract::Path(target): axum::extract::Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let Some(found) = state.routes.targets().find(|t| *t.id == *target) else {
        return Err(GatewayError::NotFound(format!(
            "/admin/breakers/{target}/reset (no such target)"
        )));
    };
    if let Some(changed) = found.breaker.reset() {
        state.metrics.breaker_changed(&found.id, changed);
    }
    tracing::info!(upstream = %found.id, "circuit breaker reset by the operator");
    let mut entry = json!(found.breaker.snapshot(tokio::time::Instant::now()));
    entry["target"] = json!(found.id.as_ref());
    Ok(Json(entry))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    /// One tenant's answers; all answers when absent.
    tenant: Option<String>,
}

/// `POST /admin/cache/purge` with `{"tenant": "…"}` or `{}`: drops cached answers
/// from every tier.
pub async fn purge_cache(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, GatewayError> {
    let purge: Purge = match body.as_ref().map(|b| b.is_empty()) {
        Ok(true) => Purge::default(),
        _ => super::body::parse_json(&headers, body, state.config.server.max_body_bytes)?,
    };
    state
        .pipeline
        .cache
        .purge(purge.tenant.as_deref())
        .await
        .map_err(|message| GatewayError::Unavailable {
            message: format!("the cache could not be purged: {message}"),
            retry_after: std::time::Duration::from_secs(1),
        })?;
    Ok(Json(
        json!({ "purged": purge.tenant.as_deref().unwrap_or("*") }),
    ))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// `2026-11-24`, `2026-11-24T13:05:00Z`, or an age such as `24h`.
    since: Option<String>,
    until: Option<String>,
    pub(super) tenant: Option<String>,
    key: Option<String>,
    target: Option<String>,
    outcome: Option<String>,
    request_id: Option<String>,
    limit: Option<u32>,
}

const AUDIT_LIMIT: u32 = 100;
const AUDIT_MAX_LIMIT: u32 = 1_000;

/// `GET /admin/audit?since=…&until=…&tenant=…&key=…&target=…&outcome=…&request_id=…&limit=…`:
/// audit rows, newest first (read only).
pub async fn audit(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, GatewayError> {
    let axum::extract::Query(q) = query.map_err(|e| GatewayError::invalid(e.body_text(), None))?;
    let rows = audit_rows(&state, q, "/admin/audit").await?;
    let data: Vec<Value> = rows.iter().map(crate::audit::export::json).collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

/// The rows `q` asks for, newest first (`path` names the endpoint when there is
/// no audit trail).
pub(super) async fn audit_rows(
    state: &AppState,
    q: AuditQuery,
    path: &str,
) -> Result<Vec<crate::audit::row::Chained>, GatewayError> {
    let trail = audit_trail(state, path)?;
    let empty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let query = crate::audit::store::Query {
        range: time_range(&q.since, &q.until)?,
        tenant: empty(q.tenant),
        key: empty(q.key),
        target: empty(q.target),
        outcome: empty(q.outcome),
        request_id: empty(q.request_id),
        limit: q.limit.unwrap_or(AUDIT_LIMIT).clamp(1, AUDIT_MAX_LIMIT),
    };
    let store = trail.readable().await.map_err(unreadable)?;
    store.query(&query).await.map_err(unreadable)
}

/// The audit trail, or a 404 saying `path` needs one.
pub(super) fn audit_trail<'s>(
    state: &'s AppState,
    path: &str,
) -> Result<&'s crate::audit::AuditTrail, GatewayError> {
    state.audit.as_deref().ok_or_else(|| {
        GatewayError::NotFound(format!("{path} (the audit trail is not configured)"))
    })
}

/// `since` and `until` as the audit endpoints take them (`2026-11-24`,
/// `2026-11-24T13:05:00Z`, or an age such as `24h`); a bad one is a 400 naming it.
pub(super) fn time_range(
    since: &Option<String>,
    until: &Option<String>,
) -> Result<crate::audit::store::Range, GatewayError> {
    let now = crate::audit::time::now_micros();
    let time = |name: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| crate::audit::time::parse(t, now))
            .transpose()
            .map_err(|message| GatewayError::invalid(message, Some(name.to_owned())))
    };
    Ok(crate::audit::store::Range {
        since: time("since", since)?,
        until: time("until", until)?,
    })
}

/// A failed read of the audit database, as a 503 without the driver's words (they
/// may name hosts and users); the log has them.
pub(super) fn unreadable(error: crate::audit::store::StoreError) -> GatewayError {
    tracing::warn!(%error, "reading the audit database");
    GatewayError::Unavailable {
        message: "the audit database cannot be read; try again shortly".to_owned(),
        retry_after: std::time::Duration::from_secs(5),
    }
}
