//! The usage page's JSON: `GET /admin/usage`'s sums (a client key's session held
//! to its own tenant), and the same sums as CSV.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::super::usage::{self, UsageParams};
use super::api::Signed;
use crate::audit::export::defused;
use crate::error::GatewayError;
use crate::state::AppState;

async fn scoped_sums(
    state: &AppState,
    signed: &Signed,
    params: Result<Query<UsageParams>, QueryRejection>,
    path: &str,
) -> Result<Value, GatewayError> {
    let Query(mut p) = params.map_err(|e| GatewayError::invalid(e.body_text(), None))?;
    p.tenant = signed.tenant_scope(p.tenant.take())?;
    usage::sums_of(state, p, path).await
}

/// `GET /console/api/usage?group_by=…&since=…&until=…&tenant=…&key=…`.
pub async fn sums(
    State(state): State<AppState>,
    Extension(signed): Extension<Signed>,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<Value>, GatewayError> {
    Ok(Json(
        scoped_sums(&state, &signed, params, "/console/api/usage").await?,
    ))
}

/// `GET /console/api/usage.csv?…`: the same sums, one line per group.
pub async fn csv(
    State(state): State<AppState>,
    Extension(signed): Extension<Signed>,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Response, GatewayError> {
    let sums = scoped_sums(&state, &signed, params, "/console/api/usage.csv").await?;
    let group = sums["group_by"].as_str().unwrap_or("group");
    let mut body =
        format!("{group},requests,prompt_tokens,cached_tokens,completion_tokens,cost,currency\r\n");
    for row in sums["data"].as_array().into_iter().flatten() {
        let name = row["group"].as_str().unwrap_or_default();
        let currency = row["currency"].as_str().unwrap_or_default();
        body.push_str(&format!(
            "{},{},{},{},{},{},{}\r\n",
            quoted(&defused(name)),
            row["requests"],
            row["prompt_tokens"],
            row["cached_tokens"],
            row["completion_tokens"],
            row["cost"],
            quoted(currency)
        ));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ragway-usage.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// A CSV cell, quoted (RFC 4180: quotes doubled).
fn quoted(cell: &str) -> String {
    format!("\"{}\"", cell.replace('"', "\"\""))
}
