//! The audit table in Postgres: rows go in by `COPY` (one round trip per batch),
//! into monthly partitions the store creates as it first needs them.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Row as _};

use super::{
    AuditStore, NameIds, Query, Range, StoreError, StoredHead, decode, kind, names_of,
    query_filters, sql, stored_head, usage_filters,
};
use crate::audit::chain::{Head, link};
use crate::audit::row::{Chained, Row};
use crate::audit::time;
use crate::audit::usage::{self, UsageQuery, UsageRow};

/// The columns as `decode` reads them, converted to its types.
const SELECT: &str = "SELECT (extract(epoch FROM at) * 1000000)::int8, instance_id::int8, seq, \
    request_id, tenant_id::int8, key_id::int8, end_user, route_id::int8, alias_id::int8, \
    target_id::int8, attempts::text, cache_id::int8, local_fallback::int4::int8, \
    stream::int4::int8, status::int8, outcome_id::int8, error_id::int8, latency_us, ttft_us, \
    prompt_tokens, completion_tokens, cost, pii::text, prompt, answer, passages::text, \
    host(client_ip), user_agent, prev_hash, row_hash, cached_tokens FROM audit_calls";

const COPY: &str = "COPY audit_calls (at, instance_id, seq, request_id, tenant_id, key_id, \
    end_user, route_id, alias_id, target_id, attempts, cache_id, local_fallback, stream, status, \
    outcome_id, error_id, latency_us, ttft_us, prompt_tokens, completion_tokens, cost, pii, \
    prompt, answer, passages, client_ip, user_agent, prev_hash, row_hash, cached_tokens) \
    FROM STDIN";

/// The current time, as `audit_chain_heads.updated_at` keeps it.
const NOW: &str = "now()";

pub struct PgStore {
    pool: PgPool,
    names: NameIds,
    /// Months whose partition is known to exist.
    months: Mutex<HashSet<(i64, u32)>>,
}

impl PgStore {
    /// A pool that connects when first used, so the gateway starts (and spools)
    /// while the database is down.
    ///
    /// TLS follows the URL's `sslmode` (`prefer` when unset) and `sslrootcert`,
    /// as libpq reads them ([`crate::db::connect_options`]).
    pub fn connect_lazy(url: &str) -> Result<PgStore, StoreError> {
        let options = crate::db::connect_options(url)?
            .application_name("ragway")
            // A statement the server has not finished in this time fails there,
            // rather than leaving the writer waiting.
            .options([("statement_timeout", "10s")]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Ok(PgStore {
            pool,
            names: NameIds::default(),
            months: Mutex::default(),
        })
    }

    async fn learn_names(&self, instance: &str, rows: &[Row]) -> Result<(), StoreError> {
        let wanted = names_of(instance, rows);
        let missing = self.names.missing(&wanted);
        if missing.is_empty() {
            return Ok(());
        }
        let kinds: Vec<&str> = missing.iter().map(|(k, _)| *k).collect();
        let names: Vec<&str> = missing.iter().map(|(_, n)| *n).collect();
        sqlx::query(
            "INSERT INTO audit_names (kind, name) SELECT * FROM unnest($1::text[], $2::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&kinds)
        .bind(&names)
        .execute(&self.pool)
        .await?;
        let found = sqlx::query(
            "SELECT id::int8, kind, name FROM audit_names \
             WHERE (kind, name) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(&kinds)
        .bind(&names)
        .fetch_all(&self.pool)
        .await?;
        for row in found {
            let kind: String = row.try_get(1)?;
            if let Some(kind) = super::static_kind(&kind) {
                self.names.learn(kind, row.try_get(2)?, row.try_get(0)?);
            }
        }
        Ok(())
    }

    async fn ensure_month(&self, year: i64, month: u32) -> Result<(), StoreError> {
        if self.lock_months().contains(&(year, month)) {
            return Ok(());
        }
        let (ny, nm) = time::next_month(year, month);
        let name = partition_name(year, month);
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF audit_calls FOR VALUES FROM ('{}') TO ('{}')",
            time::format(time::month_start(year, month)),
            time::format(time::month_start(ny, nm)),
        );
        if let Err(error) = sqlx::query(&create).execute(&self.pool).await {
            // Another replica may have created it at the same moment.
            let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                .bind(&name)
                .fetch_one(&self.pool)
                .await?;
            if exists.is_none() {
                return Err(error.into());
            }
        }
        self.lock_months().insert((year, month));
        Ok(())
    }

    fn lock_months(&self) -> std::sync::MutexGuard<'_, HashSet<(i64, u32)>> {
        self.months.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn name_map(&self) -> Result<HashMap<i64, String>, StoreError> {
        let rows = sqlx::query("SELECT id::int8, name FROM audit_names")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn name_id(&self, kind: &str, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id::int8 FROM audit_names WHERE kind = $1 AND name = $2")
                .bind(kind)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn fetch(&self, mut q: QueryBuilder<'_, Postgres>) -> Result<Vec<Chained>, StoreError> {
        let names = self.name_map().await?;
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(|r| decode(r, &names)).collect()
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let _one_at_a_time = crate::db::MIGRATING.lock().await;
        crate::db::migrator(crate::db::POSTGRES)
            .await?
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn prepare(&self, now_us: i64) -> Result<(), StoreError> {
        let (y, m) = time::month_of(now_us);
        let (ny, nm) = time::next_month(y, m);
        self.ensure_month(y, m).await?;
        self.ensure_month(ny, nm).await
    }

    async fn head(&self, instance: &str) -> Result<Option<StoredHead>, StoreError> {
        let row = sqlx::query(sql::HEAD)
            .bind(instance)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| stored_head(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
            .transpose()
    }

    async fn append(
        &self,
        instance: &str,
        rows: &[Row],
        spool: Option<(i64, u64)>,
    ) -> Result<Head, StoreError> {
        let months: HashSet<_> = rows.iter().map(|r| time::month_of(r.at_us)).collect();
        for (y, m) in months {
            self.ensure_month(y, m).await?;
        }
        self.learn_names(instance, rows).await?;
        let id = self
            .names
            .id(kind::INSTANCE, Some(instance))
            .ok_or_else(|| StoreError::Other("the instance has no name id".to_owned()))?;
        let mut tx = self.pool.begin().await?;
        let head = sqlx::query(
            "SELECT seq, row_hash FROM audit_chain_heads WHERE instance_id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| stored_head(r.try_get(0)?, r.try_get(1)?, 0, 0))
        .transpose()?
        .map_or(Head::EMPTY, |h| h.head);
        let (chained, head) = link(instance, head, rows);
        let data = copy_text(&chained, id, &self.names);
        let mut copy = tx.copy_in_raw(COPY).await?;
        if let Err(error) = copy.send(data).await {
            copy.abort("send failed").await.ok();
            return Err(error.into());
        }
        copy.finish().await?;
        sqlx::query(&sql::head_upsert(NOW))
            .bind(id)
            .bind(head.seq)
            .bind(&head.hash[..])
            .bind(spool.map(|(file, _)| file))
            .bind(spool.map(|(_, offset)| offset as i64))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(head)
    }

    async fn instances(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(sql::INSTANCES)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn seq_bounds(
        &self,
        instance: &str,
        range: Range,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let Some(id) = self.name_id(kind::INSTANCE, instance).await? else {
            return Ok(None);
        };
        let mut q = QueryBuilder::new(sql::SEQ_BOUNDS);
        q.push_bind(id);
        push_range(&mut q, range);
        let row = q.build().fetch_one(&self.pool).await?;
        let (min, max): (Option<i64>, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
        Ok(min.zip(max))
    }

    async fn chain(
        &self,
        instance: &str,
        seqs: (i64, i64),
        range: Range,
    ) -> Result<Vec<Chained>, StoreError> {
        let Some(id) = self.name_id(kind::INSTANCE, instance).await? else {
            return Ok(Vec::new());
        };
        let mut q = QueryBuilder::new(SELECT);
        q.push(" WHERE instance_id = ").push_bind(id);
        q.push(" AND seq > ").push_bind(seqs.0);
        q.push(" AND seq <= ").push_bind(seqs.1);
        push_range(&mut q, range);
        q.push(" ORDER BY seq");
        self.fetch(q).await
    }

    async fn beyond_head(&self, instance: &str) -> Result<i64, StoreError> {
        let Some(id) = self.name_id(kind::INSTANCE, instance).await? else {
            return Ok(0);
        };
        Ok(sqlx::query_scalar(sql::BEYOND_HEAD)
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn query(&self, query: &Query) -> Result<Vec<Chained>, StoreError> {
        let mut q = QueryBuilder::new(SELECT);
        q.push(" WHERE true");
        for (kind, name, column) in query_filters(query) {
            let Some(name) = name else { continue };
            // A name never stored matches no row.
            let Some(id) = self.name_id(kind, name).await? else {
                return Ok(Vec::new());
            };
            q.push(format!(" AND {column} = ")).push_bind(id);
        }
        if let Some(request_id) = &query.request_id {
            q.push(" AND request_id = ").push_bind(request_id.clone());
        }
        push_range(&mut q, query.range);
        q.push(" ORDER BY at DESC, seq DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        self.fetch(q).await
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let mut q = QueryBuilder::new(usage::sql_head(
            query.group,
            "::int8",
            "to_char(c.at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        ));
        for (kind, name, column) in usage_filters(query) {
            let Some(name) = name else { continue };
            let Some(id) = self.name_id(kind, name).await? else {
                return Ok(Vec::new());
            };
            q.push(format!(" AND c.{column} = ")).push_bind(id);
        }
        push_range(&mut q, query.range);
        q.push(usage::tail(query.group));
        q.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(usage::decode)
            .collect()
    }

    async fn retain(&self, before_us: i64) -> Result<String, StoreError> {
        let partitions: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'audit_calls'::regclass ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut dropped = Vec::new();
        for name in partitions {
            let Some((y, m)) = partition_month(&name) else {
                continue;
            };
            let (ny, nm) = time::next_month(y, m);
            // Only a month wholly older than the cutoff goes.
            if time::month_start(ny, nm) <= before_us {
                // Dropping a partition locks the parent table: give up rather than
                // stall writers behind a long read.
                let mut tx = self.pool.begin().await?;
                sqlx::query("SET LOCAL lock_timeout = '5s'")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.lock_months().remove(&(y, m));
                dropped.push(name);
            }
        }
        forget_retired_chains(&self.pool, before_us).await?;
        Ok(match dropped.is_empty() {
            true => "no partition old enough to drop".to_owned(),
            false => format!("dropped {}", dropped.join(", ")),
        })
    }
}

/// The heads of chains whose every row has aged out (the head itself last moved
/// before the cutoff): a retired instance is then not reported as truncated. A
/// chain emptied by hand keeps its head, and is.
async fn forget_retired_chains(pool: &PgPool, before_us: i64) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM audit_chain_heads h \
         WHERE h.updated_at < 'epoch'::timestamptz + interval '1 microsecond' * $1 \
         AND NOT EXISTS (SELECT 1 FROM audit_calls c WHERE c.instance_id = h.instance_id)",
    )
    .bind(before_us)
    .execute(pool)
    .await?;
    Ok(())
}

fn push_range(q: &mut QueryBuilder<'_, Postgres>, range: Range) {
    if let Some(since) = range.since {
        q.push(" AND at >= 'epoch'::timestamptz + interval '1 microsecond' * ")
            .push_bind(since);
    }
    if let Some(until) = range.until {
        q.push(" AND at < 'epoch'::timestamptz + interval '1 microsecond' * ")
            .push_bind(until);
    }
}

fn partition_name(year: i64, month: u32) -> String {
    format!("audit_calls_{year:04}_{month:02}")
}

fn partition_month(name: &str) -> Option<(i64, u32)> {
    let rest = name.strip_prefix("audit_calls_")?;
    let (y, m) = rest.split_once('_')?;
    Some((y.parse().ok()?, m.parse().ok()?))
}

/// Rows in COPY's text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_text(rows: &[Chained], instance_id: i64, names: &NameIds) -> Vec<u8> {
    let mut out = String::with_capacity(rows.len() * 1024);
    for c in rows {
        let r = &c.row;
        let id = |k: &'static str, v: &Option<String>| names.id(k, v.as_deref());
        let fields: [Field<'_>; 31] = [
            Field::Text(Some(&time::format(r.at_us))),
            Field::Int(Some(instance_id)),
            Field::Int(Some(c.seq)),
            Field::Text(Some(&r.request_id)),
            Field::Int(id(kind::TENANT, &r.tenant)),
            Field::Int(id(kind::KEY, &r.client_key)),
            Field::Text(r.end_user.as_deref()),
            Field::Int(names.id(kind::ROUTE, Some(&r.route))),
            Field::Int(id(kind::ALIAS, &r.alias)),
            Field::Int(id(kind::TARGET, &r.target)),
            Field::Text(Some(r.attempts.get())),
            Field::Int(id(kind::CACHE, &r.cache)),
            Field::Bool(r.local_fallback),
            Field::Bool(r.stream),
            Field::Int(Some(r.status)),
            Field::Int(names.id(kind::OUTCOME, Some(&r.outcome))),
            Field::Int(id(kind::ERROR, &r.error)),
            Field::Int(Some(r.latency_us)),
            Field::Int(r.ttft_us),
            Field::Int(r.prompt_tokens),
            Field::Int(r.completion_tokens),
            Field::Float(r.cost),
            Field::Text(Some(r.pii.get())),
            Field::Text(r.prompt.as_deref()),
            Field::Text(r.answer.as_deref()),
            Field::Text(Some(r.passages.get())),
            Field::Text(r.client_ip.as_deref()),
            Field::Text(r.user_agent.as_deref()),
            Field::Bytes(&c.prev_hash),
            Field::Bytes(&c.row_hash),
            Field::Int(r.cached_tokens),
        ];
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            field.write(&mut out);
        }
        out.push('\n');
    }
    out.into_bytes()
}

enum Field<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(bool),
    Bytes(&'a [u8; 32]),
}

impl Field<'_> {
    fn write(&self, out: &mut String) {
        match self {
            Field::Text(None) | Field::Int(None) | Field::Float(None) => out.push_str("\\N"),
            Field::Text(Some(text)) => {
                for ch in text.chars() {
                    match ch {
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        ch => out.push(ch),
                    }
                }
            }
            Field::Int(Some(n)) => {
                let _ = write!(out, "{n}");
            }
            Field::Float(Some(x)) => {
                let _ = write!(out, "{x:?}");
            }
            Field::Bool(b) => out.push(if *b { 't' } else { 'f' }),
            // bytea's hex input, its backslash escaped for COPY.
            Field::Bytes(bytes) => {
                out.push_str("\\\\x");
                out.push_str(&crate::encode::hex(&bytes[..]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        assert_eq!(partition_name(2026, 3), "audit_calls_2026_03");
        assert_eq!(partition_month("audit_calls_2026_03"), Some((2026, 3)));
        assert_eq!(partition_month("audit_calls_default"), None);
    }

    #[test]
    fn copy_text_escapes_what_copy_reads_as_syntax() {
        let mut out = String::new();
        Field::Text(Some("a\tb\nc\\d\re")).write(&mut out);
        assert_eq!(out, "a\\tb\\nc\\\\d\\re");
        out.clear();
        Field::Float(Some(1e-7)).write(&mut out);
        assert_eq!(out.parse::<f64>().unwrap(), 1e-7);
    }
}
