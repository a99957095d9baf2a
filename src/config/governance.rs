//! `[governance]`: client keys and tenants as data, managed while the gateway runs.

use std::time::Duration;

use serde::Deserialize;

use super::Env;
use super::validate::Problems;
use crate::db::Database;

pub use crate::admit::GovernanceConfig;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGovernance {
    /// `postgres://…` or `sqlite://PATH`; the audit database when unset.
    pub database: Option<String>,
    pub database_env: Option<String>,
    pub refresh_every: Option<String>,
    pub reserve_output_tokens: Option<u64>,
}

/// The slowest refresh allowed: a revoked key must be refused on every replica
/// within about a second.
const MAX_REFRESH: Duration = Duration::from_secs(1);

pub(super) fn governance(
    raw: RawGovernance,
    audit: Option<&Database>,
    env: &Env,
    problems: &mut Problems,
) -> GovernanceConfig {
    let database = super::audit::database(
        "governance",
        raw.database.as_deref(),
        raw.database_env.as_deref(),
        env,
        problems,
    )
    .or_else(|| audit.cloned())
    .unwrap_or_else(|| Database::Sqlite(super::audit::DEFAULT_DATABASE.to_owned()));
    let refresh_every = problems.duration(
        "governance.refresh_every",
        raw.refresh_every.as_deref(),
        Duration::from_millis(500),
    );
    if refresh_every > MAX_REFRESH {
        problems.add(
            "governance.refresh_every",
            "must be at most 1s (a revoked key is refused everywhere within it)",
        );
    }
    let reserve_output_tokens = raw.reserve_output_tokens.unwrap_or(512);
    if reserve_output_tokens == 0 {
        problems.add("governance.reserve_output_tokens", "must be at least 1");
    }
    GovernanceConfig {
        database,
        refresh_every,
        reserve_output_tokens,
    }
}
