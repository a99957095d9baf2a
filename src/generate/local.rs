//! The local model as a provider: a GGUF model on this machine (`kind = "local"`),
//! behind the same [`ChatProvider`] as any remote API, so the router treats it like
//! any other target — by default the last one of every route.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use ragway_engine::{
    ChatModel, EngineError, Event, Finish, GenerateParams, Job, LocalLlm, Message,
};
use serde_json::json;
use tokio::sync::mpsc;

use super::ChatProvider;
use super::assemble::collect;
use super::error::{ProviderError, UpstreamError};
use super::stream::ChunkStream;
use crate::config::LocalModelConfig;
use crate::telemetry::Metrics;
use crate::wire::{ChatChunk, ChatCompletion, ChatRequest, Role, Stop, Usage};

/// Events buffered between the model's thread and the request.
const EVENTS: usize = 256;

pub struct LocalProvider {
    llm: Arc<LocalLlm>,
    config: LocalModelConfig,
    metrics: Arc<Metrics>,
}

impl LocalProvider {
    /// Loads the model and starts its worker.
    pub fn load(config: &LocalModelConfig, metrics: Arc<Metrics>) -> Result<Self, EngineError> {
        let device = ragway_engine::device(&config.device)?;
        let model = ChatModel::load(&config.model, &device, config.requantize)?;
        let llm = Arc::new(LocalLlm::start(model, config.threads, config.queue)?);
        Ok(LocalProvider {
            llm,
            config: config.clone(),
            metrics,
        })
    }

    fn messages(&self, request: &ChatRequest) -> Vec<Message> {
        let mut messages: Vec<Message> = request
            .messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System | Role::Developer => "system",
                    Role::Assistant => "assistant",
                    Role::User | Role::Tool | Role::Function => "user",
                };
                Message::new(
                    role,
                    m.content.as_ref().map(|c| c.text()).unwrap_or_default(),
                )
            })
            .collect();
        if let Some(system) = &self.config.system_prompt
            && messages.first().is_none_or(|m| m.role != "system")
        {
            messages.insert(0, Message::new("system", system.clone()));
        }
        messages
    }

    fn params(&self, request: &ChatRequest) -> GenerateParams {
        let stop = match &request.stop {
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(list)) => list.clone(),
            None => Vec::new(),
        };
        GenerateParams {
            max_tokens: request
                .max_completion_tokens
                .or(request.max_tokens)
                .map_or(self.config.max_tokens, |n| n as usize),
            // A small local model answers best greedily; clients may ask otherwise.
            temperature: request.temperature.unwrap_or(0.0),
            top_p: request.top_p,
            top_k: None,
            seed: request.seed.map_or_else(|| fastrand::u64(..), |s| s as u64),
            stop,
            repeat_penalty: self.config.repeat_penalty,
            repeat_last_n: 64,
        }
    }
}

#[async_trait]
impl ChatProvider for LocalProvider {
    async fn complete(
        &self,
        model: &str,
        request: &ChatRequest,
    ) -> Result<ChatCompletion, UpstreamError> {
        collect(self.stream(model, request).await?).await
    }

    async fn stream(
        &self,
        _model: &str,
        request: &ChatRequest,
    ) -> Result<ChunkStream, UpstreamError> {
        let (events, receiver) = mpsc::channel(EVENTS);
        let job = Job {
            messages: self.messages(request),
            params: self.params(request),
            // Runs on the model's thread; a closed channel (the caller left)
            // stops the generation.
            sink: Box::new(move |event| events.blocking_send(event).is_ok()),
        };
        self.llm.submit(job).map_err(|_| UpstreamError::Status {
            status: 503,
            detail: ProviderError {
                message: "the local model is busy: its queue is full".into(),
                kind: Some("server_error".into()),
                code: Some("queue_full".into()),
            },
            retry_after: Some(std::time::Duration::from_secs(1)),
        })?;
        self.metrics.local_queue(self.llm.waiting());
        let events = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let event = receiver.recv().await?;
            Some((event, receiver))
        });
        let (metrics, llm) = (Arc::clone(&self.metrics), Arc::clone(&self.llm));
        Ok(Box::pin(events.flat_map(move |event| {
            if let Event::Started { .. } | Event::Done(_) = &event {
                metrics.local_queue(llm.waiting());
            }
            if let Event::Done(generated) = &event {
                metrics.local_tokens(generated.prompt_tokens, generated.completion_tokens);
            }
            futures_util::stream::iter(chunks_for(event))
        })))
    }
}

/// The chunks one model event becomes.
fn chunks_for(event: Event) -> Vec<Result<ChatChunk, UpstreamError>> {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| -> ChatChunk {
        serde_json::from_value(json!({
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        }))
        .unwrap_or_default()
    };
    match event {
        Event::Started { .. } => vec![Ok(chunk(json!({"role": "assistant", "content": ""}), None))],
        Event::Text(text) => vec![Ok(chunk(json!({"content": text}), None))],
        Event::Done(generated) if generated.finish == Finish::Cancelled => Vec::new(),
        Event::Done(generated) => {
            let usage = Usage {
                prompt_tokens: generated.prompt_tokens as u64,
                completion_tokens: generated.completion_tokens as u64,
                total_tokens: (generated.prompt_tokens + generated.completion_tokens) as u64,
            };
            vec![
                Ok(chunk(json!({}), Some(generated.finish.as_str()))),
                Ok(ChatChunk {
                    usage: Some(usage),
                    ..Default::default()
                }),
            ]
        }
        Event::Failed(EngineError::Input(message)) => vec![Err(UpstreamError::Status {
            status: 400,
            detail: ProviderError {
                message,
                kind: Some("invalid_request_error".into()),
                code: Some("context_length_exceeded".into()),
            },
            retry_after: None,
        })],
        Event::Failed(error) => vec![Err(UpstreamError::Status {
            status: 500,
            detail: ProviderError {
                message: error.to_string(),
                ..Default::default()
            },
            retry_after: None,
        })],
    }
}
