//! Spend as the audit trail recorded it: calls, tokens and cost summed by tenant,
//! key, alias, target or day over a time range. The audit rows are the record of what
//! was spent (the limit counters only say what is left), so `GET /admin/usage` and
//! a key's own totals in `GET /v1/usage` are read from them.

use serde::Serialize;

use super::store::Range;

/// What the sums are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Tenant,
    Key,
    Alias,
    Target,
    /// The UTC day of the call (`2026-12-06`): spend over time.
    Day,
}

impl Group {
    pub const NAMES: &'static str = "tenant, key, alias, target or day";

    pub fn parse(text: &str) -> Option<Group> {
        match text {
            "tenant" => Some(Group::Tenant),
            "key" => Some(Group::Key),
            "alias" => Some(Group::Alias),
            "target" => Some(Group::Target),
            "day" => Some(Group::Day),
            _ => None,
        }
    }

    /// The `audit_calls` column holding the group's name id (none for a day).
    pub fn column(self) -> Option<&'static str> {
        match self {
            Group::Tenant => Some("tenant_id"),
            Group::Key => Some("key_id"),
            Group::Alias => Some("alias_id"),
            Group::Target => Some("target_id"),
            Group::Day => None,
        }
    }
}

/// Which rows to sum, and how to group them.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub group: Group,
    pub range: Range,
    /// Only this tenant's rows.
    pub tenant: Option<String>,
    /// Only this key's rows (by key id).
    pub key: Option<String>,
}

/// One group's sums over the calls that spend ([`SPENDING_ROUTES`]; the admin API's
/// and `/v1/usage`'s own calls are audited but spend nothing). Every such call
/// counts as a request, refused ones too;
/// tokens and cost are what the providers reported and the prices made of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    /// The tenant, key id, alias or target; none for calls without one (a refused
    /// call has no target, a gateway without keys no key).
    pub group: Option<String>,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub completion_tokens: i64,
    pub cost: f64,
}

/// The aggregate both schemas take, in the dialect: `int` casts a sum to a 64-bit
/// integer (Postgres sums `bigint` into `numeric`), `day` is the UTC day of a
/// row `c` as `YYYY-MM-DD` text. The filters and the range follow as ` AND …`
/// clauses, then [`tail`].
pub fn sql_head(group: Group, int: &str, day: &str) -> String {
    let (name, join) = match group.column() {
        Some(column) => (
            "n.name".to_owned(),
            format!("LEFT JOIN audit_names n ON n.id = c.{column} "),
        ),
        None => (day.to_owned(), String::new()),
    };
    format!(
        "SELECT {name}, count(*), COALESCE(sum(c.prompt_tokens), 0){int}, \
         COALESCE(sum(c.cached_tokens), 0){int}, COALESCE(sum(c.completion_tokens), 0){int}, \
         COALESCE(sum(c.cost), 0.0) \
         FROM audit_calls c JOIN audit_names r ON r.id = c.route_id \
         {join}WHERE r.name IN ({})",
        SPENDING_ROUTES
            .iter()
            .map(|route| format!("'{route}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The routes whose calls spend (admitted against limits and budgets): what usage
/// sums. An endpoint that spends is added here as it is added to the API.
pub const SPENDING_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/responses",
    "/v1/rerank",
    "/v1/voice/asr",
    "/v1/voice/tts",
    "/v1/images/ocr",
    // The console's playground: chat as the signed-in key, or the admin.
    "/console/api/chat",
];

/// Groups, the costliest first; days in order.
pub fn tail(group: Group) -> &'static str {
    match group {
        Group::Day => " GROUP BY 1 ORDER BY 1",
        _ => " GROUP BY 1 ORDER BY 6 DESC, 1",
    }
}

/// A summed row as either database returns it.
pub fn decode<R>(r: &R) -> Result<UsageRow, super::store::StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(UsageRow {
        group: r.try_get(0)?,
        requests: r.try_get(1)?,
        prompt_tokens: r.try_get(2)?,
        cached_tokens: r.try_get(3)?,
        completion_tokens: r.try_get(4)?,
        cost: r.try_get(5)?,
    })
}
