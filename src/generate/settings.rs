//! The generate stage's own settings: each provider's kind, address, key, headers,
//! deadlines, retry and breaker, and the local model's (`config` reads them from
//! `[providers.NAME]`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::Deadlines;
use super::endpoint::ChatEndpoint;
use crate::resilience::{BreakerPolicy, RetryPolicy};
use crate::secret::Secret;

#[derive(Debug, Clone, Serialize)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// For `openai` providers.
    pub base_url: Option<ChatEndpoint>,
    /// For `local` providers.
    pub local: Option<LocalModelConfig>,
    pub api_key_env: Option<String>,
    pub api_key: Option<Secret>,
    pub headers: BTreeMap<String, String>,
    /// Ask the provider for a usage chunk on every stream, so audit and metrics know
    /// the token counts even when the client did not ask for them.
    pub request_usage: bool,
    pub stream_upstream: bool,
    /// How it continues an answer another target began (`openai` providers; the
    /// local model does natively).
    pub prefill: super::resume::Prefill,
    /// Where a DeepSeek-style prefix completion goes (its beta base URL).
    pub prefill_base_url: Option<ChatEndpoint>,
    pub deadlines: Deadlines,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    /// The provider's quota over all its models, and each model's own.
    pub limits: Option<crate::quota::Limits>,
    pub model_limits: BTreeMap<String, crate::quota::Limits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible chat completions API.
    Openai,
    /// A GGUF model run in process on candle.
    Local,
}

/// A model served in process (`kind = "local"`).
#[derive(Debug, Clone, Serialize)]
pub struct LocalModelConfig {
    pub model: PathBuf,
    pub device: String,
    /// Compute threads for the model.
    pub threads: usize,
    /// Requests that may wait for the model; more are refused with 503.
    pub queue: usize,
    /// Put first when a conversation has no system message (small models answer
    /// sensibly only with one).
    pub system_prompt: Option<String>,
    /// The answer length when a request sets none.
    pub max_tokens: usize,
    pub repeat_penalty: f32,
    /// Convert weight types with no fast CPU kernel to Q8_0 at load (see
    /// `ragway_engine::ChatModel::load`).
    pub requantize: bool,
}
