//! Configuration in two phases: the file (plus `RAGWAY__…` overrides) is parsed into
//! the raw structs of [`raw`], then [`validate`] checks everything at once and builds
//! the typed [`Config`] the rest of the gateway uses. Secrets are read from the
//! environment variables the file names, never from the file.

mod audit;
mod cache;
mod env;
mod raw;
mod retrieval;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// Each provider's settings are the generate stage's own.
pub use crate::generate::{LocalModelConfig, ProviderConfig, ProviderKind};
/// The log settings are telemetry's own.
pub use crate::telemetry::{LogConfig, LogFormat};
pub use audit::{AuditConfig, AuditDatabase};
pub use cache::{CacheConfig, RedisConfig};
pub use env::Env;
use raw::RawConfig;
pub use retrieval::{PromptLanguage, RagSettings, RetrievalConfig, StoreConfig};

use crate::sanitize::Policy;
use crate::sanitize::guard::GuardAction;

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
}

/// What happens to personal data (see `sanitize`).
#[derive(Debug, Clone, Serialize)]
pub struct PiiConfig {
    pub actions: Policy,
    pub hash_key_env: Option<String>,
    /// The key of the `hash` action; without one, a random key per process (hashes
    /// then match only within one run).
    pub hash_key: Option<Secret>,
    pub local_input: LocalInput,
}

/// What the in-process model is given. Remote providers always get sanitised text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalInput {
    /// Placeholders, as remote providers see them.
    Sanitised,
    /// The user's own text: the data never leaves the process anyway, and a small
    /// model answers better about a number it can read.
    Raw,
}

/// The content guard's list and what a match does.
#[derive(Debug, Clone, Serialize)]
pub struct GuardConfig {
    pub file: PathBuf,
    pub action: GuardAction,
    #[serde(serialize_with = "as_duration")]
    pub check_every: Duration,
}

/// The sentence embedder served at `POST /v1/embeddings`.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingsConfig {
    pub name: String,
    pub model: PathBuf,
    pub device: String,
    /// tiktoken's `cl100k_base` file, for token-id input; without one, only text
    /// is taken.
    pub token_vocabulary: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// How long the whole exit may take after SIGTERM: draining open requests and
    /// streams, background work, and the audit trail's last writes.
    #[serde(serialize_with = "as_secs")]
    pub shutdown_grace: Duration,
    /// A connection that has not sent a whole request head within this is closed
    /// (idle keep-alive connections too).
    #[serde(serialize_with = "as_secs")]
    pub header_read_timeout: Duration,
    /// A request body not received in full within this (from its head) is refused
    /// with 408, however steadily it trickles.
    #[serde(serialize_with = "as_secs")]
    pub body_read_timeout: Duration,
    /// Open connections in total, and from one client address; past either, a new
    /// connection gets 503 and is closed.
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// `/metrics` on its own address instead of the public one.
    pub metrics_listen: Option<SocketAddr>,
}

/// Client authentication. With no keys configured, every caller is the `default`
/// tenant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthConfig {
    pub keys: Vec<ClientKey>,
    /// The tenants the client keys name (whether or not their secrets are here):
    /// empty when authentication is off.
    pub tenants: BTreeSet<String>,
    pub admin_key_env: Option<String>,
    /// Without one, the `/admin/…` endpoints are off.
    pub admin_key: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientKey {
    pub id: String,
    pub tenant: String,
    #[serde(skip)]
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    pub targets: Vec<TargetRef>,
    pub description: Option<String>,
    #[serde(serialize_with = "as_duration")]
    pub request_timeout: Duration,
    pub failover_on_content_filter: bool,
    pub local_fallback: bool,
    /// How the alias grounds answers; `None` without `[retrieval]`.
    pub rag: Option<RagSettings>,
    pub cache: crate::cache::CachePolicy,
}

/// `provider:upstream-model`, as written in a route's `targets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct TargetRef {
    pub provider: String,
    pub model: String,
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.model.is_empty() {
            true => f.write_str(&self.provider), // a local model: `local`
            false => write!(f, "{}:{}", self.provider, self.model),
        }
    }
}

impl From<TargetRef> for String {
    fn from(target: TargetRef) -> String {
        target.to_string()
    }
}

pub use crate::secret::Secret;

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

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
name = "all-minilm-l6-v2"
model = "models/all-MiniLM-L6-v2"

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
