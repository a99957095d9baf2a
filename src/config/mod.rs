//! Configuration in two phases: the file (plus `RAGWAY__…` overrides) is parsed into
//! the raw structs of [`raw`], then [`validate`] checks everything at once and builds
//! the typed [`Config`] the rest of the gateway uses. Secrets are read from the
//! environment variables the file names, never from the file.
//!
//! One file per section (`server`, `auth`, `providers`, `models`, `pii`,
//! `embeddings`, `retrieval`, `cache`, `audit`, `governance`), each with its raw type, its check,
//! and its checked type — or, where the settings are a stage's own, the stage's
//! type it fills.

mod audit;
mod auth;
mod cache;
mod database;
mod embeddings;
mod env;
mod governance;
mod models;
mod pii;
mod providers;
mod raw;
mod retrieval;
mod server;
mod traces;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// Each provider's settings are the generate stage's own.
pub use crate::generate::{LocalModelConfig, ProviderConfig, ProviderKind};
/// The log settings are telemetry's own.
pub use crate::telemetry::{LogConfig, LogFormat};
pub use audit::{AuditConfig, AuditDatabase};
pub use auth::{AuthConfig, ClientKey};
pub use cache::{CacheConfig, RedisConfig};
pub use embeddings::EmbeddingsConfig;
pub use env::Env;
pub use governance::GovernanceConfig;
pub use models::{ModelConfig, ModelKind, TargetRef};
pub use pii::{GuardConfig, LocalInput, PiiConfig};
use raw::RawConfig;
pub use retrieval::{PromptLanguage, RagSettings, RetrievalConfig, StoreConfig};
pub use server::ServerConfig;

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    pub embeddings: Option<EmbeddingsConfig>,
    pub pii: PiiConfig,
    pub guard: Option<GuardConfig>,
    pub retrieval: Option<RetrievalConfig>,
    pub cache: Option<CacheConfig>,
    /// The audit trail; off when the section is absent.
    pub audit: Option<AuditConfig>,
    /// Keys and tenants as data; off (keys from `[auth]` only) when absent.
    pub governance: Option<GovernanceConfig>,
    /// Traces to an OTLP collector; off when the section is absent.
    pub tracing: Option<traces::TraceSettings>,
}

pub use crate::secret::Secret;

pub(crate) use crate::encode::as_duration;

/// Reads `200ms`, `2s`, `1.5s`, `5m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` needs a unit: ms, s, m or h"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("`{other}` is not a unit: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

/// The configuration with no file: the local model answers (`make run` fetches it),
/// the local embedder serves `/v1/embeddings`, answers are grounded in the
/// documents of the embedded store under `data/`, and repeated deterministic
/// questions are answered from memory.
pub const DEFAULT_CONFIG: &str = r#"
[providers.local]
kind = "local"
model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
system_prompt = "You are a helpful assistant."

[embeddings]
name = "multilingual-e5-small"
model = "models/e5-small-q4.bin"

[retrieval]
store = "embedded"
path = "data/qdrant"

[cache]

[audit]
"#;

/// The sections of the configuration a command reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Serving, and `check-config`: everything.
    Everything,
    /// `migrate` and `audit …`: the audit database.
    Audit,
    /// `keys …`: the key table.
    Keys,
    /// `ingest`: the embedder and the document store (and who the tenants are).
    Documents,
}

impl Part {
    /// Whether a problem at `key` (`providers.echo.api_key_env`) is in this part.
    fn covers(self, key: &str) -> bool {
        let section = key.split(['.', '[']).next().unwrap_or(key);
        match self {
            Part::Everything => true,
            Part::Audit => section == "audit",
            Part::Keys => matches!(section, "audit" | "governance"),
            Part::Documents => matches!(section, "embeddings" | "retrieval"),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file is not valid TOML: {0}")]
    Syntax(String),
    #[error("invalid configuration:\n{}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {}: {}", p.key, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Loads the file at `path` (or [`DEFAULT_CONFIG`] when there is none) with
    /// overrides and secrets from `env`.
    pub fn load(path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
        Config::load_part(path, env, Part::Everything)
    }

    /// Like [`Config::load`], checking only the sections `part` reads: the rest is
    /// parsed but its problems (an unset provider key, say) are not this
    /// command's.
    pub fn load_part(path: Option<&Path>, env: &Env, part: Part) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => DEFAULT_CONFIG.to_owned(),
        };
        Config::from_toml_part(&text, env, part)
    }

    pub fn from_toml(text: &str, env: &Env) -> Result<Config, ConfigError> {
        Config::from_toml_part(text, env, Part::Everything)
    }

    pub fn from_toml_part(text: &str, env: &Env, part: Part) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let override_problems: Vec<Problem> = env
            .apply_overrides(&mut table)
            .into_iter()
            .map(|(key, message)| Problem { key, message })
            .filter(|p| part.covers(&p.key))
            .collect();
        if !override_problems.is_empty() {
            return Err(ConfigError::Invalid(override_problems));
        }
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigError::Invalid(vec![Problem {
                    key: e.path().to_string(),
                    message: e.inner().to_string(),
                }])
            })?;
        let (config, problems) = validate::validate(raw, env);
        let problems: Vec<Problem> = problems
            .into_iter()
            .filter(|p| part.covers(&p.key))
            .collect();
        match problems.is_empty() {
            true => Ok(config),
            false => Err(ConfigError::Invalid(problems)),
        }
    }

    /// The config as TOML, secrets redacted: what `ragway check-config` prints.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}
