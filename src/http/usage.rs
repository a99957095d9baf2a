//! Spend you can see: `GET /admin/usage` (admin) sums the audit rows by tenant,
//! key, alias or target; `GET /v1/usage` (a client key) shows the key's limits and
//! budgets as they stand and, with the audit trail on, its own totals for the
//! current day and month.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use serde_json::{Value, json};

use super::admin::{audit_trail, time_range, unreadable};
use crate::audit::AuditTrail;
use crate::audit::store::Range;
use crate::audit::time;
use crate::audit::usage::{Group, UsageQuery, UsageRow};
use crate::call::Caller;
use crate::error::GatewayError;
use crate::state::AppState;

#[derive(serde::Deserialize)]
pub struct UsageParams {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
    pub(super) tenant: Option<String>,
    key: Option<String>,
}

/// `GET /admin/usage?group_by=tenant|key|alias|target&since=…&until=…&tenant=…&key=…`:
/// calls, tokens and cost per group over the range (all time when unbounded).
pub async fn admin(
    State(state): State<AppState>,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<Value>, GatewayError> {
    let Query(p) = params.map_err(|e| GatewayError::invalid(e.body_text(), None))?;
    Ok(Json(sums_of(&state, p, "/admin/usage").await?))
}

/// The sums `p` asks for, as `GET /admin/usage` answers them (`path` names the
/// endpoint when there is no audit trail).
pub(super) async fn sums_of(
    state: &AppState,
    p: UsageParams,
    path: &str,
) -> Result<Value, GatewayError> {
    let trail = audit_trail(state, path)?;
    let group_text = p.group_by.as_deref().unwrap_or("tenant");
    let group = Group::parse(group_text).ok_or_else(|| {
        GatewayError::invalid(
            format!("group_by must be {}", Group::NAMES),
            Some("group_by".to_owned()),
        )
    })?;
    let range = time_range(&p.since, &p.until)?;
    let query = UsageQuery {
        group,
        range,
        tenant: p.tenant,
        key: p.key,
    };
    let currency = currency(state);
    let data: Vec<Value> = sums(trail, &query)
        .await?
        .iter()
        .map(|row| shown(row, currency))
        .collect();
    Ok(json!({
        "object": "list",
        "group_by": group_text,
        "since": range.since.map(time::format),
        "until": range.until.map(time::format),
        "data": data,
    }))
}

/// `GET /v1/usage` with a client key: its own limits and budgets, and its
/// tenant's, as they stand now; with the audit trail on, what the key spent this
/// day and this month (as of the trail's last flush, `audit.flush_every`).
pub async fn own(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, GatewayError> {
    let scopes = state.pipeline.admission.standing(&caller).await?;
    let mut answer = json!({
        "object": "usage",
        "key": caller.key_id.as_deref(),
        "tenant": caller.tenant.as_ref(),
        "scopes": scopes,
    });
    if let (Some(trail), Some(key)) = (&state.audit, &caller.key_id) {
        answer["spend"] = Value::Array(own_spend(&state, trail, key).await?);
    }
    Ok(Json(answer))
}

/// The key's totals since the start of the current day and month, at the
/// deployment's budget offset.
async fn own_spend(
    state: &AppState,
    trail: &AuditTrail,
    key: &str,
) -> Result<Vec<Value>, GatewayError> {
    use crate::admit::grant::Period;
    let offset = state
        .config
        .governance
        .as_ref()
        .map_or(::time::UtcOffset::UTC, |g| g.budget_utc_offset);
    let now = ::time::OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for (name, period) in [("day", Period::Day), ("month", Period::Month)] {
        let start = crate::admit::period::start(period, now, offset);
        let since = i64::try_from(start.unix_timestamp_nanos() / 1000).unwrap_or(0);
        let query = UsageQuery {
            group: Group::Key,
            range: Range {
                since: Some(since),
                until: None,
            },
            tenant: None,
            key: Some(key.to_owned()),
        };
        let row = sums(trail, &query).await?.into_iter().next();
        let row = row.unwrap_or(UsageRow {
            group: Some(key.to_owned()),
            requests: 0,
            prompt_tokens: 0,
            cached_tokens: 0,
            completion_tokens: 0,
            cost: 0.0,
        });
        let mut shown = shown(&row, currency(state));
        shown["period"] = json!(name);
        shown["since"] = json!(time::format(since));
        out.push(shown);
    }
    Ok(out)
}

/// The sums, or a 503 (see [`unreadable`]).
async fn sums(trail: &AuditTrail, query: &UsageQuery) -> Result<Vec<UsageRow>, GatewayError> {
    let store = trail.readable().await.map_err(unreadable)?;
    store.usage(query).await.map_err(unreadable)
}

fn shown(row: &UsageRow, currency: &str) -> Value {
    let mut value = serde_json::to_value(row).unwrap_or(Value::Null);
    value["currency"] = json!(currency);
    value
}

/// The deployment's currency (`governance.currency`, CNY by default).
fn currency(state: &AppState) -> &str {
    state
        .config
        .governance
        .as_ref()
        .map_or("CNY", |g| g.currency.as_str())
}
