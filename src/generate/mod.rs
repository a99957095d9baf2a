//! The generate stage: call the route's targets in order until one answers.
//!
//! [`ChatProvider`] is one upstream API; [`Routes`] maps a client's model alias to
//! its ordered targets; [`Router`] walks them, failing over while nothing has been
//! sent to the client.

pub mod endpoint;
pub mod error;
mod frames;
pub mod openai;
mod route;
mod router;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

pub use error::{ProviderError, UpstreamError};
pub use route::{Route, Routes, Target};
pub use router::Router;
pub use stream::ChunkStream;

use crate::error::GatewayError;
use crate::pipeline::RequestCtx;
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
}

/// The generate stage, as the pipeline sees it.
#[async_trait]
pub trait Generate: Send + Sync {
    /// Answers `prompt` from the context's route, recording each attempt in `ctx`.
    async fn generate(
        &self,
        ctx: &mut RequestCtx,
        prompt: &ChatRequest,
    ) -> Result<Generation, GatewayError>;
}

/// An answer from the target that served it.
pub struct Generation {
    pub target: Arc<str>,
    /// When the serving attempt began (for the upstream duration of a stream).
    pub started: Instant,
    pub output: Output,
}

pub enum Output {
    Complete(ChatCompletion),
    /// A stream whose first chunk with content has arrived: it is committed.
    Stream(ChunkStream),
}

/// One call to one target, kept for headers, logs and the audit record.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub target: Arc<str>,
    pub latency: Duration,
    pub error: Option<UpstreamError>,
}
