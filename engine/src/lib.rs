//! Local models for ragway on candle: GGUF chat models ([`ChatModel`], served by a
//! [`LocalLlm`] worker) and BERT-family sentence embeddings ([`Embedder`]). Nothing
//! here reaches the network: model files come from disk.

mod bert;
mod centering;
mod chat;
mod decoder;
mod e5;
mod embed;
mod runtime;
mod template;
mod text;
mod tokenizer;
mod worker;

pub use centering::{ideograph_share, is_ideograph};
pub use chat::{ChatModel, Finish, GenerateParams, Generated};
pub use e5::{E5, Precision, Role};
pub use embed::Embedder;
pub use runtime::Runtime;
pub use worker::{Event, Job, LocalLlm, QueueFull};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("inference failed: {0}")]
    Inference(String),
    /// The request cannot be served as given (e.g. a prompt longer than the context).
    #[error("{0}")]
    Input(String),
}

/// One chat message, as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// Retrieved text the model can answer without: when a prompt must be cut to
    /// fit the context, passages go first (the last one first), before any turn.
    #[serde(skip)]
    pub passage: bool,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            passage: false,
        }
    }

    /// A retrieved passage, in a message of its own.
    pub fn passage(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            passage: true,
            ..Message::new(role, content)
        }
    }
}

/// `auto` (CUDA when built with it and present, else CPU), `cpu`, or `cuda:N`.
pub fn device(spec: &str) -> Result<candle_core::Device, EngineError> {
    let cuda = |n: usize| {
        candle_core::Device::new_cuda(n).map_err(|e| EngineError::Load(format!("cuda:{n}: {e}")))
    };
    match spec.trim() {
        "cpu" => Ok(candle_core::Device::Cpu),
        "auto" if candle_core::utils::cuda_is_available() => cuda(0),
        "auto" => Ok(candle_core::Device::Cpu),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => cuda(n),
            None => Err(EngineError::Load(format!(
                "`{other}` is not a device: use auto, cpu or cuda:N"
            ))),
        },
    }
}
