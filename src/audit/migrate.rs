//! The schema migrations under `migrations/`, built into the binary and applied
//! with sqlx's migrator (which records them in `_sqlx_migrations` and refuses a
//! database whose applied migrations were edited since).

use std::borrow::Cow;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// (version, description, SQL), oldest first.
type Steps = &'static [(i64, &'static str, &'static str)];

pub const POSTGRES: Steps = &[(
    1,
    "audit",
    include_str!("../../migrations/postgres/0001_audit.sql"),
)];

pub const SQLITE: Steps = &[(
    1,
    "audit",
    include_str!("../../migrations/sqlite/0001_audit.sql"),
)];

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
