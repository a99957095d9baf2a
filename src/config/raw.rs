//! The config file as written: every section and key the file may hold, nothing
//! checked yet beyond its type. `deny_unknown_fields` turns a typo into an error that
//! names the key instead of a silently ignored setting.

use std::collections::BTreeMap;

use serde::Deserialize;

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPii {
    /// Kind → `placeholder` | `mask` | `hash` | `block` | `allow`.
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
    /// The environment variable holding the key of the `hash` action.
    pub hash_key_env: Option<String>,
    /// What the local model is given: `sanitised` (the default) or `raw`.
    pub local_input: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub file: String,
    pub action: Option<String>,
    pub check_every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbeddings {
    /// The name clients ask for in `POST /v1/embeddings`.
    pub name: Option<String>,
    /// A directory with config.json, model.safetensors and tokenizer.json.
    pub model: String,
    pub device: Option<String>,
    /// tiktoken's `cl100k_base.tiktoken` (default: beside the model directory,
    /// when there).
    pub token_vocabulary: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub header_read_timeout_secs: Option<u64>,
    pub body_read_timeout_secs: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_connections_per_peer: Option<u64>,
    pub metrics_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub keys: Vec<RawClientKey>,
    /// The environment variable holding the key for `/admin/…` endpoints.
    pub admin_key_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientKey {
    pub id: String,
    pub tenant: String,
    /// The environment variable that holds the key.
    pub key_env: Option<String>,
    /// Or the key's SHA-256 in hex, so the file never holds the key itself.
    pub sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub request_usage: Option<bool>,
    /// Ask for a stream even when the client wants a whole answer, and assemble it:
    /// then the first-token and idle deadlines can tell a silent provider from a
    /// slow answer.
    pub stream_upstream: Option<bool>,
    pub connect_timeout: Option<String>,
    pub first_token_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub breaker: RawBreaker,
    // kind = "local" only:
    /// The GGUF file.
    pub model: Option<String>,
    pub device: Option<String>,
    pub threads: Option<usize>,
    pub queue: Option<usize>,
    pub system_prompt: Option<String>,
    pub max_tokens: Option<usize>,
    pub repeat_penalty: Option<f32>,
    pub requantize: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub base: Option<String>,
    pub cap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<u32>,
    pub open_for: Option<String>,
    pub max_open_for: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub targets: Vec<String>,
    pub description: Option<String>,
    /// The whole request's deadline, across every target and retry.
    pub request_timeout: Option<String>,
    /// Try the next target when a provider refuses on content grounds.
    pub failover_on_content_filter: Option<bool>,
    /// End the route with the local model (default: true when one is configured).
    pub local_fallback: Option<bool>,
    /// Ground answers in the tenant's documents: `false`, or settings overriding
    /// `[retrieval]`'s.
    pub rag: Option<super::retrieval::RawRag>,
    /// Which requests the answer cache serves: `deterministic` (the default),
    /// `always` or `off`.
    pub cache: Option<String>,
}
