//! The key table: managed keys and tenants in the gateway's database (Postgres, or
//! the SQLite file by default), the same statements for both. Every change takes
//! the next revision (see `migrations/*/0002_keys.sql`), so each replica reads only
//! what changed since it last looked.

use std::time::Duration;

use serde::de::DeserializeOwned;
use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;

use super::grant::{KeyRecord, TenantRecord};

pub use crate::db::StoreError;

/// What changed past a revision.
#[derive(Debug, Default)]
pub struct Changes {
    pub keys: Vec<KeyRecord>,
    pub tenants: Vec<TenantRecord>,
    /// The revision these bring the reader to.
    pub revision: i64,
}

pub enum KeyStore {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// The same statements on either pool (sqlx binds `$n` for SQLite too).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            KeyStore::Postgres($pool) => $body,
            KeyStore::Sqlite($pool) => $body,
        }
    };
}

/// A key row's columns, in the order `key_of` reads and `bind_key!` binds them.
macro_rules! key_columns {
    () => {
        "id, sha256, name, tenant, models, limits, budget, metadata, expires_us, revoked_us, \
         created_us, updated_us"
    };
}
const KEY_COLUMNS: &str = key_columns!();

const TENANT_COLUMNS: &str = "tenant, limits, budget, updated_us";

/// A key row written whole at `revision`: a new one (`create`), or, with
/// [`REPLACE_KEY`] after it, a changed one (`modify`).
const INSERT_KEY: &str = concat!(
    "INSERT INTO gateway_keys (",
    key_columns!(),
    ", revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
);

/// What a change may touch: never the id, the tenant or the creation time.
const REPLACE_KEY: &str = " ON CONFLICT (id) DO UPDATE SET sha256 = excluded.sha256, \
    name = excluded.name, models = excluded.models, limits = excluded.limits, \
    budget = excluded.budget, metadata = excluded.metadata, \
    expires_us = excluded.expires_us, revoked_us = excluded.revoked_us, \
    updated_us = excluded.updated_us, revision = excluded.revision";

/// Binds a key's columns, in [`INSERT_KEY`]'s order, to `$query`.
macro_rules! bind_key {
    ($query:expr, $key:expr, $revision:expr) => {
        $query
            .bind(&$key.id)
            .bind($key.sha256.to_vec())
            .bind(&$key.name)
            .bind(&$key.tenant)
            .bind(json(&$key.models))
            .bind(json(&$key.limits))
            .bind($key.budget.map(|b| json(&b)))
            .bind(json(&$key.metadata))
            .bind($key.expires_us)
            .bind($key.revoked_us)
            .bind($key.created_us)
            .bind($key.updated_us)
            .bind($revision)
    };
}

/// Takes the next revision; its row lock orders concurrent writers.
const NEXT_REVISION: &str =
    "UPDATE gateway_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision";

impl KeyStore {
    /// A pool on `url` (`postgres://…` or `sqlite://…`) that connects when first
    /// used, so the gateway starts while the database is away.
    pub fn open(url: &str) -> Result<KeyStore, StoreError> {
        if url.starts_with("sqlite:") {
            return Ok(KeyStore::Sqlite(crate::db::sqlite_pool(url)?));
        }
        let options = crate::db::connect_options(url)?
            .application_name("ragway")
            .options([("statement_timeout", "5s")])
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Ok(KeyStore::Postgres(pool))
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let _one_at_a_time = crate::db::MIGRATING.lock().await;
        match self {
            KeyStore::Postgres(pool) => {
                crate::db::migrator(crate::db::POSTGRES)
                    .await?
                    .run(pool)
                    .await?
            }
            KeyStore::Sqlite(pool) => {
                crate::db::migrator(crate::db::SQLITE)
                    .await?
                    .run(pool)
                    .await?
            }
        }
        Ok(())
    }

    pub async fn create(&self, key: &KeyRecord) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let revision: i64 = sqlx::query_scalar(NEXT_REVISION).fetch_one(&mut *tx).await?;
            bind_key!(sqlx::query(INSERT_KEY), key, revision)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM gateway_keys WHERE id = $1");
        on_pool!(self, pool => {
            let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
            row.map(|r| key_of(&r)).transpose()
        })
    }

    /// Every key, or one tenant's, oldest first.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM gateway_keys WHERE ($1 IS NULL OR tenant = $1) \
             ORDER BY created_us, id"
        );
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(tenant).fetch_all(pool).await?;
            rows.iter().map(key_of).collect()
        })
    }

    /// Reads key `id`, lets `change` edit it, and writes it back, in one
    /// transaction behind the revision lock (two admins' changes do not lose each
    /// other's). `Ok(None)` when there is no such key; `change`'s error leaves the
    /// key as it was.
    pub async fn modify<E>(
        &self,
        id: &str,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), E>,
    ) -> Result<Option<Result<KeyRecord, E>>, StoreError> {
        let select = format!("SELECT {KEY_COLUMNS} FROM gateway_keys WHERE id = $1");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let revision: i64 = sqlx::query_scalar(NEXT_REVISION).fetch_one(&mut *tx).await?;
            let Some(row) = sqlx::query(&select).bind(id).fetch_optional(&mut *tx).await? else {
                return Ok(None);
            };
            let mut key = key_of(&row)?;
            if let Err(error) = change(&mut key) {
                return Ok(Some(Err(error)));
            }
            let replace = format!("{INSERT_KEY}{REPLACE_KEY}");
            bind_key!(sqlx::query(&replace), key, revision)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(Ok(key)))
        })
    }

    /// Sets a tenant's limits and budget.
    pub async fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let revision: i64 = sqlx::query_scalar(NEXT_REVISION).fetch_one(&mut *tx).await?;
            sqlx::query(&format!(
                "INSERT INTO gateway_tenants ({TENANT_COLUMNS}, revision) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (tenant) DO UPDATE SET limits = excluded.limits, \
                 budget = excluded.budget, updated_us = excluded.updated_us, \
                 revision = excluded.revision"
            ))
            .bind(&tenant.tenant)
            .bind(json(&tenant.limits))
            .bind(tenant.budget.map(|b| json(&b)))
            .bind(tenant.updated_us)
            .bind(revision)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM gateway_tenants ORDER BY tenant");
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter().map(tenant_of).collect()
        })
    }

    pub async fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM gateway_tenants WHERE tenant = $1");
        on_pool!(self, pool => {
            let row = sqlx::query(&sql).bind(tenant).fetch_optional(pool).await?;
            row.map(|r| tenant_of(&r)).transpose()
        })
    }

    /// Keys and tenants changed past `revision` (all of them from 0).
    pub async fn changes(&self, revision: i64) -> Result<Changes, StoreError> {
        let keys = format!("SELECT {KEY_COLUMNS} FROM gateway_keys WHERE revision > $1");
        let tenants = format!("SELECT {TENANT_COLUMNS} FROM gateway_tenants WHERE revision > $1");
        on_pool!(self, pool => {
            // One snapshot for the three reads: the revision read is not behind
            // what the rows show.
            let mut tx = pool.begin().await?;
            let now: i64 = sqlx::query_scalar("SELECT revision FROM gateway_revision WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            if now == revision {
                return Ok(Changes { revision, ..Changes::default() });
            }
            let keys = sqlx::query(&keys).bind(revision).fetch_all(&mut *tx).await?;
            let tenants = sqlx::query(&tenants).bind(revision).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            Ok(Changes {
                keys: keys.iter().map(key_of).collect::<Result<_, _>>()?,
                tenants: tenants.iter().map(tenant_of).collect::<Result<_, _>>()?,
                revision: now,
            })
        })
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn parse<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Other(format!("a stored key is damaged: {what}: {e}")))
}

fn key_of<R>(r: &R) -> Result<KeyRecord, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = r.try_get(0)?;
    let sha256: Vec<u8> = r.try_get(1)?;
    let budget: Option<String> = r.try_get(6)?;
    Ok(KeyRecord {
        sha256: sha256.try_into().map_err(|_| {
            StoreError::Other(format!(
                "a stored key is damaged: {id}: the hash is not 32 bytes"
            ))
        })?,
        name: r.try_get(2)?,
        tenant: r.try_get(3)?,
        models: parse("models", &r.try_get::<String, _>(4)?)?,
        limits: parse("limits", &r.try_get::<String, _>(5)?)?,
        budget: budget.map(|b| parse("budget", &b)).transpose()?,
        metadata: parse("metadata", &r.try_get::<String, _>(7)?)?,
        expires_us: r.try_get(8)?,
        revoked_us: r.try_get(9)?,
        created_us: r.try_get(10)?,
        updated_us: r.try_get(11)?,
        id,
    })
}

fn tenant_of<R>(r: &R) -> Result<TenantRecord, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let budget: Option<String> = r.try_get(2)?;
    Ok(TenantRecord {
        tenant: r.try_get(0)?,
        limits: parse("limits", &r.try_get::<String, _>(1)?)?,
        budget: budget.map(|b| parse("budget", &b)).transpose()?,
        updated_us: r.try_get(3)?,
    })
}
