//! The audit page's JSON: the admin API's audit search (a client key's session
//! held to its own tenant, and shown no provider's error text), the same rows as
//! CSV, and a check of the hash chains.

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

/// The rows `query` finds, as the visitor may see them: a client key's session
/// gets each failed attempt's class and status, not the error's text (which may
/// quote a provider's answer, or name a host or a key's last characters: the
/// admin's to read).
async fn visible_rows(
    state: &AppState,
    signed: &Signed,
    query: Result<Query<AuditQuery>, QueryRejection>,
    path: &str,
) -> Result<Vec<crate::audit::row::Chained>, GatewayError> {
    let q = scoped(signed, query)?;
    let mut rows = admin::audit_rows(state, q, path).await?;
    if let Signed::Client(_) = signed {
        rows.iter_mut().for_each(without_error_text);
    }
    Ok(rows)
}

/// The row with its attempts' `error` texts taken out.
fn without_error_text(row: &mut crate::audit::row::Chained) {
    let Ok(mut attempts) = serde_json::from_str::<Vec<Value>>(row.row.attempts.get()) else {
        return;
    };
    attempts.iter_mut().for_each(|a| {
        if let Some(a) = a.as_object_mut() {
            a.remove("error");
        }
    });
    if let Ok(raw) = serde_json::value::to_raw_value(&attempts) {
        row.row.attempts = raw;
    }
}

/// `GET /console/api/audit?…`: `GET /admin/audit`'s rows.
pub async fn rows(
    State(state): State<AppState>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, GatewayError> {
    let rows = visible_rows(&state, &signed, query, "/console/api/audit").await?;
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
    let rows = visible_rows(&state, &signed, query, "/console/api/audit.csv").await?;
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
/// over the range (`since`, `until` as the search takes them; the last 24 hours
/// when `since` is not given), as `ragway audit verify` checks it. One check at a
/// time per replica (it reads every row of the range); the whole trail is
/// `ragway audit verify`'s.
pub async fn verify(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, GatewayError> {
    let trail = admin::audit_trail(&state, "/console/api/audit/verify")?;
    let asked: VerifyRange =
        super::super::body::parse_json(&headers, body, state.config.server.max_body_bytes)?;
    let since = asked.since.or_else(|| Some("24h".to_owned()));
    let range = admin::time_range(&since, &asked.until)?;
    let Ok(_running) = trail.verifying.try_lock() else {
        return Err(GatewayError::TooManyRequests {
            message: "a chain check is running: try again when it is done".to_owned(),
            retry_after: std::time::Duration::from_secs(5),
        });
    };
    let store = trail.readable().await.map_err(admin::unreadable)?;
    let reports = crate::audit::verify::verify(store, range)
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
