//! `[audit]`: where the audit trail goes (Postgres, or a SQLite file by default),
//! how much text it keeps, how long, and what each target's tokens cost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Env;
use super::validate::Problems;
use crate::audit::row::{Price, TextMode};

pub use crate::audit::{AuditConfig, AuditDatabase};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `postgres://…` (without a password: see `database_env`) or `sqlite://PATH`.
    pub database: Option<String>,
    /// An environment variable holding the database URL.
    pub database_env: Option<String>,
    pub instance: Option<String>,
    pub text: Option<String>,
    pub retention_days: Option<u32>,
    pub spool_dir: Option<PathBuf>,
    pub queue: Option<usize>,
    pub batch_rows: Option<usize>,
    pub flush_every: Option<String>,
    pub write_timeout: Option<String>,
    pub shutdown_deadline: Option<String>,
    pub client_ip_header: Option<String>,
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

pub use super::database::DEFAULT_DATABASE;

pub(super) fn audit(raw: RawAudit, env: &Env, problems: &mut Problems) -> AuditConfig {
    let database = super::database::database(
        "audit",
        raw.database.as_deref(),
        raw.database_env.as_deref(),
        env,
        problems,
    )
    .unwrap_or_else(|| AuditDatabase::Sqlite(DEFAULT_DATABASE.to_owned()));
    let text = match raw.text.as_deref().unwrap_or("full") {
        "full" => TextMode::Full,
        "hash" => TextMode::Hash,
        "none" => TextMode::None,
        other => {
            problems.add("audit.text", format!("`{other}` is not full, hash or none"));
            TextMode::Full
        }
    };
    let instance = raw.instance.unwrap_or_else(host_name);
    if instance.is_empty() || instance.len() > 128 {
        problems.add("audit.instance", "must be 1 to 128 characters");
    }
    for (target, price) in &raw.prices {
        let parts = [price.input, price.output, price.cached_input.unwrap_or(0.0)];
        if !parts.iter().all(|p| p.is_finite() && *p >= 0.0) {
            problems.add(
                format!("audit.prices.{target}"),
                "input, cached_input and output must be prices ≥ 0",
            );
        }
    }
    let positive = |problems: &mut Problems, key: &str, value: Option<usize>, default: usize| {
        let value = value.unwrap_or(default);
        if value == 0 {
            problems.add(key, "must be at least 1");
        }
        value
    };
    AuditConfig {
        database,
        instance,
        text,
        retention: match raw.retention_days.unwrap_or(90) {
            0 => None,
            days => Some(Duration::from_secs(u64::from(days) * 86_400)),
        },
        spool_dir: raw
            .spool_dir
            .unwrap_or_else(|| PathBuf::from("data/audit-spool")),
        queue: positive(problems, "audit.queue", raw.queue, 10_000),
        batch_rows: positive(problems, "audit.batch_rows", raw.batch_rows, 1_000),
        flush_every: problems.duration(
            "audit.flush_every",
            raw.flush_every.as_deref(),
            Duration::from_millis(100),
        ),
        write_timeout: problems.duration(
            "audit.write_timeout",
            raw.write_timeout.as_deref(),
            Duration::from_secs(5),
        ),
        shutdown_deadline: problems.duration(
            "audit.shutdown_deadline",
            raw.shutdown_deadline.as_deref(),
            Duration::from_secs(10),
        ),
        client_ip_header: raw.client_ip_header.map(|h| h.to_ascii_lowercase()),
        prices: raw.prices,
    }
}

/// The machine's name (a pod's name under Kubernetes), or `ragway`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ragway".to_owned())
}
