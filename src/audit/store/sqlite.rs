//! The audit table in a SQLite file: the default when no Postgres is configured,
//! so a single gateway keeps its trail without a database server.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Row as _, Sqlite};

use super::{
    AuditStore, COLUMNS, NameIds, Query, Range, StoreError, StoredHead, decode, kind, names_of,
    query_filters, sql, stored_head, usage_filters,
};
use crate::audit::chain::{Head, link};
use crate::audit::row::{Chained, Row};
use crate::audit::usage::{self, UsageQuery, UsageRow};

/// Rows per INSERT statement: 31 values each, under SQLite's 32,766 limit.
const ROWS_PER_INSERT: usize = 500;

/// The current time, as `audit_chain_heads.updated_at` keeps it.
const NOW: &str = "CAST(strftime('%s', 'now') AS INTEGER)";

pub struct SqliteStore {
    pool: SqlitePool,
    names: NameIds,
}

impl SqliteStore {
    /// Opens (creating) the file named by `sqlite://path`.
    pub fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let pool = crate::db::sqlite_pool(url)?;
        Ok(SqliteStore {
            pool,
            names: NameIds::default(),
        })
    }

    async fn learn_names(&self, instance: &str, rows: &[Row]) -> Result<(), StoreError> {
        for (kind, name) in self.names.missing(&names_of(instance, rows)) {
            sqlx::query(
                "INSERT INTO audit_names (kind, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(kind)
            .bind(name)
            .execute(&self.pool)
            .await?;
            if let Some(id) = self.name_id(kind, name).await? {
                self.names.learn(kind, name.to_owned(), id);
            }
        }
        Ok(())
    }

    async fn name_id(&self, kind: &str, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM audit_names WHERE kind = $1 AND name = $2")
                .bind(kind)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn fetch(&self, mut q: QueryBuilder<'_, Sqlite>) -> Result<Vec<Chained>, StoreError> {
        let names: HashMap<i64, String> = sqlx::query("SELECT id, name FROM audit_names")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok::<_, StoreError>((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, _>>()?;
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(|r| decode(r, &names)).collect()
    }
}

fn select() -> QueryBuilder<'static, Sqlite> {
    QueryBuilder::new(format!("SELECT at_us, {COLUMNS} FROM audit_calls"))
}

fn push_range(q: &mut QueryBuilder<'_, Sqlite>, range: Range) {
    if let Some(since) = range.since {
        q.push(" AND at_us >= ").push_bind(since);
    }
    if let Some(until) = range.until {
        q.push(" AND at_us < ").push_bind(until);
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let _one_at_a_time = crate::db::MIGRATING.lock().await;
        crate::db::migrator(crate::db::SQLITE)
            .await?
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn prepare(&self, _now_us: i64) -> Result<(), StoreError> {
        Ok(())
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
        self.learn_names(instance, rows).await?;
        let id = self
            .names
            .id(kind::INSTANCE, Some(instance))
            .ok_or_else(|| StoreError::Other("the instance has no name id".to_owned()))?;
        let mut tx = self.pool.begin().await?;
        let head =
            sqlx::query("SELECT seq, row_hash FROM audit_chain_heads WHERE instance_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| stored_head(r.try_get(0)?, r.try_get(1)?, 0, 0))
                .transpose()?
                .map_or(Head::EMPTY, |h| h.head);
        let (chained, head) = link(instance, head, rows);
        let names = &self.names;
        for part in chained.chunks(ROWS_PER_INSERT) {
            let mut q =
                QueryBuilder::<Sqlite>::new(format!("INSERT INTO audit_calls (at_us, {COLUMNS}) "));
            q.push_values(part, |mut b, c| {
                let r = &c.row;
                let name = |k: &'static str, v: &Option<String>| names.id(k, v.as_deref());
                b.push_bind(r.at_us)
                    .push_bind(id)
                    .push_bind(c.seq)
                    .push_bind(r.request_id.clone())
                    .push_bind(name(kind::TENANT, &r.tenant))
                    .push_bind(name(kind::KEY, &r.client_key))
                    .push_bind(r.end_user.clone())
                    .push_bind(names.id(kind::ROUTE, Some(&r.route)))
                    .push_bind(name(kind::ALIAS, &r.alias))
                    .push_bind(name(kind::TARGET, &r.target))
                    .push_bind(r.attempts.get().to_owned())
                    .push_bind(name(kind::CACHE, &r.cache))
                    .push_bind(i64::from(r.local_fallback))
                    .push_bind(i64::from(r.stream))
                    .push_bind(r.status)
                    .push_bind(names.id(kind::OUTCOME, Some(&r.outcome)))
                    .push_bind(name(kind::ERROR, &r.error))
                    .push_bind(r.latency_us)
                    .push_bind(r.ttft_us)
                    .push_bind(r.prompt_tokens)
                    .push_bind(r.completion_tokens)
                    .push_bind(r.cost)
                    .push_bind(r.pii.get().to_owned())
                    .push_bind(r.prompt.clone())
                    .push_bind(r.answer.clone())
                    .push_bind(r.passages.get().to_owned())
                    .push_bind(r.client_ip.clone())
                    .push_bind(r.user_agent.clone())
                    .push_bind(c.prev_hash.to_vec())
                    .push_bind(c.row_hash.to_vec())
                    .push_bind(r.cached_tokens);
            });
            q.build().execute(&mut *tx).await?;
        }
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
        let mut q = select();
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
        let mut q = select();
        q.push(" WHERE 1 = 1");
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
        q.push(" ORDER BY at_us DESC, seq DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        self.fetch(q).await
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let mut q = QueryBuilder::new(usage::sql_head(
            query.group,
            "",
            "strftime('%Y-%m-%d', c.at_us / 1000000, 'unixepoch')",
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
        let done = sqlx::query("DELETE FROM audit_calls WHERE at_us < $1")
            .bind(before_us)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "DELETE FROM audit_chain_heads WHERE updated_at < $1 AND NOT EXISTS \
             (SELECT 1 FROM audit_calls c WHERE c.instance_id = audit_chain_heads.instance_id)",
        )
        .bind(before_us / 1_000_000)
        .execute(&self.pool)
        .await?;
        Ok(format!("deleted {} rows", done.rows_affected()))
    }
}
