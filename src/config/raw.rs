//! The config file as written: every section and key the file may hold, nothing
//! checked yet beyond its type. `deny_unknown_fields` turns a typo into an error that
//! names the key instead of a silently ignored setting.

use std::collections::BTreeMap;

use serde::Deserialize;

pub use super::auth::RawAuth;
pub use super::embeddings::RawEmbeddings;
pub use super::models::RawModel;
pub use super::pii::{RawGuard, RawPii};
pub use super::providers::RawProvider;
pub use super::server::{RawLog, RawServer};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    pub embeddings: Option<RawEmbeddings>,
    #[serde(default)]
    pub pii: RawPii,
    pub guard: Option<RawGuard>,
    pub retrieval: Option<super::retrieval::RawRetrieval>,
    pub cache: Option<super::cache::RawCache>,
    pub audit: Option<super::audit::RawAudit>,
    pub governance: Option<super::governance::RawGovernance>,
    pub tracing: Option<super::traces::RawTracing>,
}
