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
use crate::audit::export::{defused, record};
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
    let columns = [
        "requests",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "cost",
    ];
    let header: Vec<String> = std::iter::once(group)
        .chain(columns)
        .chain(["currency"])
        .map(str::to_owned)
        .collect();
    let mut body = record(&header);
    for row in sums["data"].as_array().into_iter().flatten() {
        let text = |field: &str| defused(row[field].as_str().unwrap_or_default()).into_owned();
        let fields: Vec<String> = std::iter::once(text("group"))
            .chain(columns.iter().map(|c| row[*c].to_string()))
            .chain([text("currency")])
            .collect();
        body.push_str(&record(&fields));
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
