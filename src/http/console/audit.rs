//! The audit page's JSON: the admin API's audit search (a client key's session
//! held to its own tenant), the same rows as CSV, and a check of the hash chains.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::super::admin::{self, AuditQuery};
use super::api::Signed;
use crate::audit::export;
use crate::error::GatewayError;
use crate::state::AppState;

/// The search as the visitor may make it: a client key's session searches its own
/// tenant, and naming another is refused.
fn scoped(
    signed: &Signed,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<AuditQuery, GatewayError> {
    let Query(mut q) = query.map_err(|e| GatewayError::invalid(e.body_text(), None))?;
    q.tenant = signed.tenant_scope(q.tenant.take())?;
    Ok(q)
}

/// `GET /console/api/audit?…`: `GET /admin/audit`'s rows.
pub async fn rows(
    State(state): State<AppState>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, GatewayError> {
    let q = scoped(&signed, query)?;
    let rows = admin::audit_rows(&state, q, "/console/api/audit").await?;
    let data: Vec<Value> = rows.iter().map(export::json).collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

/// `GET /console/api/audit.csv?…`: the same rows as a CSV download (cells made
/// safe to open in a spreadsheet, as `ragway audit export` writes them).
pub async fn csv(
    State(state): State<AppState>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, GatewayError> {
    let q = scoped(&signed, query)?;
    let rows = admin::audit_rows(&state, q, "/console/api/audit.csv").await?;
    let mut body = export::csv_header();
    rows.iter()
        .for_each(|row| body.push_str(&export::csv_line(row)));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ragway-audit.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRange {
    since: Option<String>,
    until: Option<String>,
}

/// `POST /console/api/audit/verify` (the admin's): every instance's hash chain
/// over the range (`since`, `until` as the search takes them), as `ragway audit
/// verify` checks it.
pub async fn verify(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, GatewayError> {
    let trail = admin::audit_trail(&state, "/console/api/audit/verify")?;
    let asked: VerifyRange =
        super::super::body::parse_json(&headers, body, state.config.server.max_body_bytes)?;
    let range = admin::time_range(&asked.since, &asked.until)?;
    let reports = crate::audit::verify::verify(trail.store.as_ref(), range)
        .await
        .map_err(admin::unreadable)?;
    let chains: Vec<Value> = reports
        .iter()
        .map(|report| {
            json!({
                "instance": report.instance,
                "rows": report.rows,
                "ok": report.fault.is_none(),
                "report": report.to_string(),
            })
        })
        .collect();
    let ok = chains.iter().all(|c| c["ok"] == true);
    Ok(Json(json!({ "ok": ok, "chains": chains })))
}
