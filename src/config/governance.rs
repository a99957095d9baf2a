//! `[governance]`: client keys and tenants as data, managed while the gateway runs.

use std::time::Duration;

use serde::Deserialize;

use super::Env;
use super::validate::Problems;
use crate::db::Database;

pub use crate::admit::{GovernanceConfig, SharedCounters};
use crate::quota::redis::OnDown;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGovernance {
    /// `postgres://…` or `sqlite://PATH`; the audit database when unset.
    pub database: Option<String>,
    pub database_env: Option<String>,
    pub refresh_every: Option<String>,
    pub reserve_output_tokens: Option<u64>,
    /// Where the counters are shared: the cache's Redis when unset.
    pub redis_url: Option<String>,
    pub redis_ca_file: Option<std::path::PathBuf>,
    pub redis_key_prefix: Option<String>,
    pub redis_timeout: Option<String>,
    /// `local`, `open` or `closed`.
    pub on_redis_down: Option<String>,
    pub currency: Option<String>,
    pub soft_budget: Option<f64>,
    pub budget_utc_offset: Option<String>,
}

/// The slowest refresh allowed: a revoked key must be refused on every replica
/// within about a second.
const MAX_REFRESH: Duration = Duration::from_secs(1);

pub(super) fn governance(
    raw: RawGovernance,
    audit: Option<&Database>,
    cache_redis: Option<&super::RedisConfig>,
    env: &Env,
    problems: &mut Problems,
) -> GovernanceConfig {
    let database = super::database::database(
        "governance",
        raw.database.as_deref(),
        raw.database_env.as_deref(),
        env,
        problems,
    )
    .or_else(|| audit.cloned())
    .unwrap_or_else(|| Database::Sqlite(super::database::DEFAULT_DATABASE.to_owned()));
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
    let on_down = match raw.on_redis_down.as_deref().unwrap_or("local") {
        "local" => OnDown::Local,
        "open" => OnDown::Open,
        "closed" => OnDown::Closed,
        other => {
            problems.add(
                "governance.on_redis_down",
                format!("`{other}` is not local, open or closed"),
            );
            OnDown::Local
        }
    };
    let url = raw
        .redis_url
        .clone()
        .or_else(|| cache_redis.map(|r| r.url.clone()));
    let redis = url.map(|url| {
        let ca_file = match &raw.redis_url {
            Some(_) => raw.redis_ca_file.clone(),
            None => cache_redis.and_then(|r| r.ca_file.clone()),
        };
        super::cache::check_redis_tls("governance", &url, ca_file.as_deref(), problems);
        let key_prefix = raw
            .redis_key_prefix
            .clone()
            .unwrap_or_else(|| "ragway:limits:".to_owned());
        if key_prefix.is_empty() {
            problems.add("governance.redis_key_prefix", "must not be empty");
        }
        SharedCounters {
            url,
            ca_file,
            key_prefix,
            timeout: problems.duration(
                "governance.redis_timeout",
                raw.redis_timeout.as_deref(),
                Duration::from_millis(100),
            ),
            on_down,
        }
    });
    let currency = raw.currency.unwrap_or_else(|| "CNY".to_owned());
    if currency.is_empty()
        || currency.len() > 8
        || !currency.chars().all(|c| c.is_ascii_alphabetic())
    {
        problems.add(
            "governance.currency",
            "must be a currency code of letters, such as CNY",
        );
    }
    let soft_budget = raw.soft_budget.unwrap_or(0.8);
    if !(soft_budget > 0.0 && soft_budget <= 1.0) {
        problems.add(
            "governance.soft_budget",
            "must be a share above 0 and at most 1 (0.8: 80 %)",
        );
    }
    let offset_text = raw.budget_utc_offset.as_deref().unwrap_or("+00:00");
    let budget_utc_offset = crate::admit::period::parse_offset(offset_text).unwrap_or_else(|| {
        problems.add(
            "governance.budget_utc_offset",
            "must be an offset from UTC such as +08:00 or -05:00",
        );
        time::UtcOffset::UTC
    });
    GovernanceConfig {
        database,
        refresh_every,
        reserve_output_tokens,
        redis,
        currency,
        soft_budget,
        budget_utc_offset,
    }
}
