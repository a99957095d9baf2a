//! The audit trail's own settings: where it goes, how much text it keeps, how
//! long, and what each target's tokens cost (`config` reads them from `[audit]`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::row::{Price, TextMode};

#[derive(Debug, Clone, Serialize)]
pub struct AuditConfig {
    pub database: AuditDatabase,
    /// This gateway's name on its hash chain: one chain per instance.
    pub instance: String,
    pub text: TextMode,
    /// `None`: rows are kept for ever.
    #[serde(serialize_with = "crate::encode::as_optional_days")]
    pub retention: Option<Duration>,
    pub spool_dir: PathBuf,
    pub queue: usize,
    pub batch_rows: usize,
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub flush_every: Duration,
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub write_timeout: Duration,
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub shutdown_deadline: Duration,
    /// A header that names the client's address (set by a proxy in front, e.g.
    /// `x-forwarded-for`: its first address is taken); the peer's address otherwise.
    pub client_ip_header: Option<String>,
    /// Per target (`provider:model`), per million tokens.
    pub prices: BTreeMap<String, Price>,
}

/// The gateway's database, where the trail is kept.
pub type AuditDatabase = crate::db::Database;
