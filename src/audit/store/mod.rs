//! Where rows are kept: Postgres ([`postgres::PgStore`]) or a SQLite file
//! ([`sqlite::SqliteStore`]), behind one small trait. Both keep repeated names
//! in `audit_names` and each instance's chain head in `audit_chain_heads`.

pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::value::RawValue;

use super::chain::Head;
use super::row::{Chained, Row};
use super::usage::{UsageQuery, UsageRow};

pub use crate::db::StoreError;

/// The chain head as stored, with how far the instance's spool was replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredHead {
    pub head: Head,
    pub spool_file: i64,
    pub spool_offset: u64,
}

/// A time range, in microseconds since the epoch: `since` inclusive, `until`
/// exclusive.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// What the query endpoint asks for; newest rows first.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub range: Range,
    pub tenant: Option<String>,
    /// A client key's id.
    pub key: Option<String>,
    /// The target that served the call (`provider:model`).
    pub target: Option<String>,
    /// `ok`, `error`, `interrupted`, `abandoned` or `content_filter`.
    pub outcome: Option<String>,
    pub request_id: Option<String>,
    pub limit: u32,
}

/// The filters of a [`Query`] by name: (kind of name, the name asked, column).
pub fn query_filters(query: &Query) -> [(&'static str, Option<&str>, &'static str); 4] {
    [
        (kind::TENANT, query.tenant.as_deref(), "tenant_id"),
        (kind::KEY, query.key.as_deref(), "key_id"),
        (kind::TARGET, query.target.as_deref(), "target_id"),
        (kind::OUTCOME, query.outcome.as_deref(), "outcome_id"),
    ]
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Applies the migrations this build carries.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Readies the table for rows written around `now_us` (Postgres: this month's
    /// and the next month's partitions).
    async fn prepare(&self, now_us: i64) -> Result<(), StoreError>;

    /// The head of `instance`'s chain, if it has rows.
    async fn head(&self, instance: &str) -> Result<Option<StoredHead>, StoreError>;

    /// Puts `rows` on `instance`'s chain after the stored head and writes them, in
    /// one transaction; with `spool`, also records that the spool is replayed up to
    /// that (file, offset).
    async fn append(
        &self,
        instance: &str,
        rows: &[Row],
        spool: Option<(i64, u64)>,
    ) -> Result<Head, StoreError>;

    /// The instances that have written rows.
    async fn instances(&self) -> Result<Vec<String>, StoreError>;

    /// The lowest and highest place of `instance`'s rows within `range`.
    async fn seq_bounds(
        &self,
        instance: &str,
        range: Range,
    ) -> Result<Option<(i64, i64)>, StoreError>;

    /// The rows of `instance` with places in `seqs` (first exclusive, last
    /// inclusive) within `range`, in chain order. A window by place, not a row
    /// count, so that two rows claiming one place are read together.
    async fn chain(
        &self,
        instance: &str,
        seqs: (i64, i64),
        range: Range,
    ) -> Result<Vec<Chained>, StoreError>;

    /// Rows of `instance` past its head: none unless someone added them.
    async fn beyond_head(&self, instance: &str) -> Result<i64, StoreError>;

    async fn query(&self, query: &Query) -> Result<Vec<Chained>, StoreError>;

    /// Calls, tokens and cost summed by the query's group, the costliest first.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;

    /// Removes rows older than `before_us`; returns what went (partitions or rows).
    async fn retain(&self, before_us: i64) -> Result<String, StoreError>;
}

/// Statements both schemas take as they are (sqlx binds `$n` for SQLite too).
pub mod sql {
    /// An instance's head, by the instance's name.
    pub const HEAD: &str = "SELECT h.seq, h.row_hash, h.spool_file, h.spool_offset \
        FROM audit_chain_heads h JOIN audit_names n ON n.id = h.instance_id \
        WHERE n.kind = 'instance' AND n.name = $1";

    pub const INSTANCES: &str =
        "SELECT name FROM audit_names WHERE kind = 'instance' ORDER BY name";

    /// Rows past the head: one statement, one snapshot, so the two agree.
    pub const BEYOND_HEAD: &str = "SELECT count(*) FROM audit_calls WHERE instance_id = $1 \
        AND seq > COALESCE((SELECT seq FROM audit_chain_heads WHERE instance_id = $1), 0)";

    pub const SEQ_BOUNDS: &str = "SELECT min(seq), max(seq) FROM audit_calls WHERE instance_id = ";

    /// Moves the head (and, when given, the spool position); `now` is the
    /// dialect's current time.
    pub fn head_upsert(now: &str) -> String {
        format!(
            "INSERT INTO audit_chain_heads (instance_id, seq, row_hash, spool_file, spool_offset) \
             VALUES ($1, $2, $3, COALESCE($4, 0), COALESCE($5, 0)) \
             ON CONFLICT (instance_id) DO UPDATE SET seq = excluded.seq, \
             row_hash = excluded.row_hash, \
             spool_file = COALESCE($4, audit_chain_heads.spool_file), \
             spool_offset = COALESCE($5, audit_chain_heads.spool_offset), updated_at = {now}"
        )
    }
}

/// A usage query's filters: (kind of name, the name asked for, its column).
pub fn usage_filters(query: &UsageQuery) -> [(&'static str, Option<&str>, &'static str); 2] {
    [
        (kind::TENANT, query.tenant.as_deref(), "tenant_id"),
        (kind::KEY, query.key.as_deref(), "key_id"),
    ]
}

/// The kinds of names kept in `audit_names`.
pub mod kind {
    pub const INSTANCE: &str = "instance";
    pub const TENANT: &str = "tenant";
    pub const KEY: &str = "key";
    pub const ROUTE: &str = "route";
    pub const ALIAS: &str = "alias";
    pub const TARGET: &str = "target";
    pub const CACHE: &str = "cache";
    pub const OUTCOME: &str = "outcome";
    pub const ERROR: &str = "error";
}

/// Every (kind, name) a batch of rows refers to.
pub fn names_of<'a>(instance: &'a str, rows: &'a [Row]) -> Vec<(&'static str, &'a str)> {
    let mut names = vec![(kind::INSTANCE, instance)];
    for r in rows {
        names.push((kind::ROUTE, &r.route));
        names.push((kind::OUTCOME, &r.outcome));
        let optional = [
            (kind::TENANT, &r.tenant),
            (kind::KEY, &r.client_key),
            (kind::ALIAS, &r.alias),
            (kind::TARGET, &r.target),
            (kind::CACHE, &r.cache),
            (kind::ERROR, &r.error),
        ];
        names.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.as_deref()?))),
        );
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// Name ids as the writer has learnt them (names are never removed).
#[derive(Default)]
/// By kind, then name: looked up by `&str`, without allocating, for every name of
/// every row.
pub struct NameIds(Mutex<HashMap<&'static str, HashMap<String, i64>>>);

impl NameIds {
    /// The names of `wanted` not yet known.
    pub fn missing<'a>(&self, wanted: &[(&'static str, &'a str)]) -> Vec<(&'static str, &'a str)> {
        let known = self.lock();
        wanted
            .iter()
            .filter(|(k, n)| known.get(k).is_none_or(|names| !names.contains_key(*n)))
            .copied()
            .collect()
    }

    pub fn learn(&self, kind: &'static str, name: String, id: i64) {
        self.lock().entry(kind).or_default().insert(name, id);
    }

    pub fn id(&self, kind: &'static str, name: Option<&str>) -> Option<i64> {
        self.lock().get(kind)?.get(name?).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, HashMap<String, i64>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The kind that matches a name read back from the database.
pub fn static_kind(kind: &str) -> Option<&'static str> {
    [
        kind::INSTANCE,
        kind::TENANT,
        kind::KEY,
        kind::ROUTE,
        kind::ALIAS,
        kind::TARGET,
        kind::CACHE,
        kind::OUTCOME,
        kind::ERROR,
    ]
    .into_iter()
    .find(|k| *k == kind)
}

/// The columns both schemas share, in the order [`decode`] reads them (each
/// backend's select list converts its own types into these).
pub const COLUMNS: &str = "instance_id, seq, request_id, tenant_id, key_id, end_user, route_id, \
    alias_id, target_id, attempts, cache_id, local_fallback, stream, status, outcome_id, error_id, \
    latency_us, ttft_us, prompt_tokens, completion_tokens, cost, pii, prompt, answer, passages, \
    client_ip, user_agent, prev_hash, row_hash, cached_tokens";

/// A row read back: column 0 is the time in microseconds, then [`COLUMNS`] with
/// ids, booleans and small numbers as 64-bit integers and JSON as text.
pub fn decode<R>(r: &R, names: &HashMap<i64, String>) -> Result<Chained, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let name = |i: usize| -> Result<Option<String>, StoreError> {
        let id: Option<i64> = r.try_get(i)?;
        id.map(|id| {
            names
                .get(&id)
                .cloned()
                .ok_or_else(|| StoreError::Other(format!("audit_names has no id {id}")))
        })
        .transpose()
    };
    let json = |i: usize| -> Result<Box<RawValue>, StoreError> {
        let text: String = r.try_get(i)?;
        RawValue::from_string(text).map_err(|e| StoreError::Other(format!("stored JSON: {e}")))
    };
    let hash = |i: usize| -> Result<[u8; 32], StoreError> {
        let bytes: Vec<u8> = r.try_get(i)?;
        bytes
            .try_into()
            .map_err(|_| StoreError::Other("a stored hash is not 32 bytes".to_owned()))
    };
    let required =
        |v: Option<String>| v.ok_or_else(|| StoreError::Other("a required name is missing".into()));
    let client_ip: Option<String> = r.try_get(26)?;
    Ok(Chained {
        instance: required(name(1)?)?,
        seq: r.try_get(2)?,
        row: Row {
            at_us: r.try_get(0)?,
            request_id: r.try_get(3)?,
            tenant: name(4)?,
            client_key: name(5)?,
            end_user: r.try_get(6)?,
            route: required(name(7)?)?,
            alias: name(8)?,
            target: name(9)?,
            attempts: json(10)?,
            cache: name(11)?,
            local_fallback: r.try_get::<i64, _>(12)? != 0,
            stream: r.try_get::<i64, _>(13)? != 0,
            status: r.try_get(14)?,
            outcome: required(name(15)?)?,
            error: name(16)?,
            latency_us: r.try_get(17)?,
            ttft_us: r.try_get(18)?,
            prompt_tokens: r.try_get(19)?,
            completion_tokens: r.try_get(20)?,
            cached_tokens: r.try_get(30)?,
            cost: r.try_get(21)?,
            pii: json(22)?,
            prompt: r.try_get(23)?,
            answer: r.try_get(24)?,
            passages: json(25)?,
            // The database may print an address its own way; the hash was taken
            // over this form.
            client_ip: client_ip
                .map(|ip| ip.parse::<std::net::IpAddr>().map_or(ip, |a| a.to_string())),
            user_agent: r.try_get(27)?,
        },
        prev_hash: hash(28)?,
        row_hash: hash(29)?,
    })
}

/// A head as the database returns it.
pub fn stored_head(
    seq: i64,
    hash: Vec<u8>,
    spool_file: i64,
    spool_offset: i64,
) -> Result<StoredHead, StoreError> {
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Other("a stored head hash is not 32 bytes".to_owned()))?;
    Ok(StoredHead {
        head: Head { seq, hash },
        spool_file,
        spool_offset: u64::try_from(spool_offset).unwrap_or(0),
    })
}
