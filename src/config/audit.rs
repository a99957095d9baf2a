//! `[audit]`: where the audit trail goes (Postgres, or a SQLite file by default),
//! how much text it keeps, how long, and what each target's tokens cost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::Problems;
use super::{Env, Secret};
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

pub const DEFAULT_DATABASE: &str = "sqlite://data/audit.db";

pub(super) fn audit(raw: RawAudit, env: &Env, problems: &mut Problems) -> AuditConfig {
    let database = database(
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

/// The database `[section]` names by `database` or `database_env` (`None` when
/// neither is set, or what is set is wrong: the problem is recorded).
pub(super) fn database(
    section: &str,
    url: Option<&str>,
    url_env: Option<&str>,
    env: &Env,
    problems: &mut Problems,
) -> Option<AuditDatabase> {
    let url = match (url, url_env) {
        (Some(_), Some(_)) => {
            problems.add(
                format!("{section}.database"),
                "set database or database_env, not both",
            );
            return None;
        }
        (None, Some(var)) => problems
            .secret(&format!("{section}.database_env"), var, env)?
            .expose()
            .to_owned(),
        (Some(url), None) => {
            if has_password(url) {
                problems.add(
                    format!("{section}.database"),
                    "a URL with a password belongs in database_env, not in the file",
                );
            }
            url.to_owned()
        }
        (None, None) => return None,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Err(error) = crate::db::check_url(&url) {
            let key = match url_env.is_some() {
                true => "database_env",
                false => "database",
            };
            problems.add(format!("{section}.{key}"), error);
        }
        return Some(AuditDatabase::Postgres(Secret::new(url)));
    }
    if url.starts_with("sqlite:") {
        return Some(AuditDatabase::Sqlite(url));
    }
    problems.add(
        format!("{section}.database"),
        "must be a postgres:// or sqlite:// URL",
    );
    None
}

/// `postgres://user:secret@host/db` holds a password.
fn has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_noticed() {
        assert!(has_password("postgres://u:p@db/audit"));
        assert!(!has_password("postgres://u@db/audit"));
        assert!(!has_password("postgres://db:5432/audit?user=u"));
        assert!(!has_password("sqlite://data/audit.db"));
    }
}
