//! The generate stage: call the route's targets in order until one answers.
//!
//! [`ChatProvider`] is one upstream API; [`Routes`] maps a client's model alias to
//! its ordered targets; [`Router`] walks them, failing over while nothing has been
//! sent to the client.

mod assemble;
pub mod endpoint;
pub mod error;
mod frames;
mod hedge;
pub mod live;
mod local;
pub mod openai;
mod relay;
mod rerank;
pub mod resume;
mod retry;
mod route;
mod router;
mod settings;
pub mod stream;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;

pub use assemble::Assembler;
pub use error::{ProviderError, TimeoutPhase, UpstreamError};
pub use local::LocalProvider;
pub use openai::OpenAiProvider;
pub use relay::{Asking, Relayed, relay, relay_with};
pub use rerank::{Ranked, Ranker, Ranking};
pub use route::{LOCAL_ALIAS, LoadError, ModelKind, Route, Routes, Target};
pub use router::Router;
pub use settings::{LocalModelConfig, ProviderConfig, ProviderKind};
pub use stream::ChunkStream;

pub use crate::call::Attempt;
use crate::call::Call;
use crate::error::GatewayError;
use crate::wire::{ChatCompletion, ChatRequest};

/// One upstream chat API.
#[async_trait]
pub trait ChatProvider: Send + Sync {
    /// A whole answer.
    async fn complete(
        &self,
        model: &str,
        request: &ChatRequest,
    ) -> Result<ChatCompletion, UpstreamError>;

    /// A streamed answer. `Ok` means the provider accepted the request; the stream
    /// itself reports how it ended.
    async fn stream(
        &self,
        model: &str,
        request: &ChatRequest,
    ) -> Result<ChunkStream, UpstreamError>;

    /// How it continues an answer another target began ([`resume`]).
    fn prefill(&self) -> resume::Prefill {
        resume::Prefill::None
    }

    /// POSTs `body` to another endpoint of its API, `path` below its base
    /// (`/rerank`), for `model`: the answer's JSON ([`relay`]). Only a remote
    /// OpenAI-compatible API has such endpoints.
    async fn post_json(
        &self,
        _model: &str,
        _path: &str,
        _body: &serde_json::Value,
    ) -> Result<serde_json::Value, UpstreamError> {
        Err(chat_only())
    }

    /// Opens a WebSocket to another endpoint of its API, `path` below its base
    /// (`/voice/asr`, the realtime recogniser), for `model` ([`live`]).
    async fn open_socket(
        &self,
        _model: &str,
        _path: &str,
    ) -> Result<live::ProviderSocket, UpstreamError> {
        Err(chat_only())
    }
}

/// What a provider that serves only chat answers to anything else.
fn chat_only() -> UpstreamError {
    UpstreamError::Status {
        status: 404,
        detail: ProviderError {
            message: "this provider serves chat only".to_owned(),
            ..Default::default()
        },
        retry_after: None,
    }
}

/// The generate stage, as the pipeline sees it.
#[async_trait]
pub trait Generate: Send + Sync {
    /// Answers `prompt` from `route`'s targets within the call's deadline.
    async fn generate(&self, call: &Call<'_>, route: &Route, prompt: &Prompt) -> Generated;
}

/// The request as targets are given it.
/// Shared, so that a stream resuming after a break holds it without a copy.
pub struct Prompt {
    /// With placeholders: what every remote provider gets.
    pub sanitised: Arc<ChatRequest>,
    /// The user's own text, restored for a target that reads it (`raw_input`).
    pub raw: Option<Arc<ChatRequest>>,
}

impl Prompt {
    pub fn for_target(&self, target: &Target) -> &Arc<ChatRequest> {
        match &self.raw {
            Some(raw) if target.raw_input => raw,
            _ => &self.sanitised,
        }
    }
}

/// An answer as it came from upstream: from the target that served it (or, in the
/// pipeline, from the cache). It names this request's personal data by placeholders
/// unless `raw_output` says the target read the user's own text.
pub struct Answer {
    pub target: Arc<str>,
    /// When the serving attempt began (for the upstream duration of a stream).
    pub started: Instant,
    pub body: AnswerBody,
    /// The target read the user's own text, so its answer may hold raw values.
    pub raw_output: bool,
}

pub enum AnswerBody {
    Whole(Box<ChatCompletion>),
    /// A stream whose first chunk with content has arrived: it is committed.
    Stream(ChunkStream),
}

/// How long a target may take, per phase of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Deadlines {
    /// To establish a connection.
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub connect: Duration,
    /// From sending the request to the first token of the answer.
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub first_token: Duration,
    /// The longest gap between two chunks of a stream.
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub idle: Duration,
}

impl Deadlines {
    /// For a model on this machine: a CPU may take a while over a long prompt.
    pub fn local() -> Self {
        Deadlines {
            connect: Duration::from_secs(2),
            first_token: Duration::from_secs(60),
            idle: Duration::from_secs(30),
        }
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            connect: Duration::from_secs(2),
            first_token: Duration::from_secs(10),
            idle: Duration::from_secs(10),
        }
    }
}

/// What the stage did for one request: every attempt, in order (for headers, logs
/// and the record), and how it ended.
pub struct Generated {
    pub attempts: Vec<Attempt>,
    pub result: Result<Answer, GatewayError>,
    /// The attempts a streamed answer makes later, resuming after a break.
    pub resumed: resume::ResumeLog,
}
