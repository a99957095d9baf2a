//! The gateway's own database (Postgres, or a SQLite file by default): the schema
//! migrations under `migrations/`, shared by the audit trail and the key table, and
//! how a `postgres://` URL becomes connection options.

use std::borrow::Cow;
use std::str::FromStr;

use sqlx::ConnectOptions as _;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// What a store over the gateway's database (the audit trail, the key table) may
/// fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Other(String),
}

/// A lazy pool on the SQLite file `url` names (`sqlite://path`), the file and its
/// directory made when missing; write-ahead log, every commit on disk.
pub fn sqlite_pool(url: &str) -> Result<sqlx::SqlitePool, StoreError> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(std::time::Duration::from_secs(5));
    if let Some(dir) = std::path::Path::new(options.get_filename()).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Other(format!("{}: {e}", dir.display())))?;
    }
    Ok(SqlitePoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(options))
}

/// The gateway's database: a Postgres URL (it may hold a password: a secret) or a
/// SQLite file's URL (`sqlite://data/audit.db`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    Postgres(crate::secret::Secret),
    Sqlite(String),
}

impl Database {
    pub fn url(&self) -> &str {
        match self {
            Database::Postgres(url) => url.expose(),
            Database::Sqlite(url) => url,
        }
    }
}

/// (version, description, SQL), oldest first.
type Steps = &'static [(i64, &'static str, &'static str)];

pub const POSTGRES: Steps = &[
    (
        1,
        "audit",
        include_str!("../migrations/postgres/0001_audit.sql"),
    ),
    (
        2,
        "keys",
        include_str!("../migrations/postgres/0002_keys.sql"),
    ),
    (
        3,
        "usage",
        include_str!("../migrations/postgres/0003_usage.sql"),
    ),
    (
        4,
        "outcome",
        include_str!("../migrations/postgres/0004_outcome.sql"),
    ),
];

pub const SQLITE: Steps = &[
    (
        1,
        "audit",
        include_str!("../migrations/sqlite/0001_audit.sql"),
    ),
    (
        2,
        "keys",
        include_str!("../migrations/sqlite/0002_keys.sql"),
    ),
    (
        3,
        "usage",
        include_str!("../migrations/sqlite/0003_usage.sql"),
    ),
    (
        4,
        "outcome",
        include_str!("../migrations/sqlite/0004_outcome.sql"),
    ),
];

#[derive(Debug)]
struct Embedded(Steps);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> futures_util::future::BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

pub async fn migrator(steps: Steps) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded(steps)).await
}

/// Held while migrating: the audit writer and the key table migrate the same
/// database as they start, and SQLite's migrator takes no lock of its own (on
/// Postgres it takes an advisory lock, which also covers other replicas).
pub static MIGRATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The options of a `postgres://` URL, TLS included: `sslmode` (`disable`,
/// `allow` — taken as `disable` —, `prefer`, `require`, `verify-ca`,
/// `verify-full`), `sslrootcert`, `sslcert` and `sslkey`, or the `PGSSLMODE`-style
/// variables. One rule is libpq's rather than the driver's: `require` with a root
/// certificate checks the server's certificate against it (as `verify-ca`), since
/// an operator who names a CA expects it to be used.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    // The driver names its provider, but `verify-ca` builds its certificate
    // verifier from the process's default one.
    crate::tls::install_crypto_provider();
    let options = PgConnectOptions::from_str(url)?;
    if matches!(options.get_ssl_mode(), PgSslMode::Require) && root_cert(&options).is_some() {
        return Ok(options.ssl_mode(PgSslMode::VerifyCa));
    }
    Ok(options)
}

/// What is wrong with a `postgres://` URL before any connection is tried: a
/// value the driver refuses (an unknown `sslmode`), or an `sslrootcert` that is
/// not a readable file of PEM certificates. Never quotes the URL (it may hold a
/// password).
pub fn check_url(url: &str) -> Result<(), String> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| crate::secret::scrub(&e.to_string()).into_owned())?;
    if let Some(path) = root_cert(&options) {
        crate::tls::read_ca_file(std::path::Path::new(&path))
            .map_err(|e| format!("sslrootcert: {e}"))?;
    }
    Ok(())
}

/// The root certificate file the options name (from the URL or `PGSSLROOTCERT`).
/// The driver keeps it private; its URL form shows it as `file: PATH`.
fn root_cert(options: &PgConnectOptions) -> Option<String> {
    let url = options.to_url_lossy();
    let (_, shown) = url.query_pairs().find(|(key, _)| key == "sslrootcert")?;
    Some(shown.strip_prefix("file: ").unwrap_or(&shown).to_owned())
}
