//! The local model as a provider: a GGUF model on this machine (`kind = "local"`),
//! behind the same [`ChatProvider`] as any remote API, so the router treats it like
//! any other target — by default the last one of every route.

use std::sync::Arc;

use async_trait::async_trait;
use ragway_engine::{
    ChatModel, EngineError, Event, Finish, GenerateParams, Job, LocalLlm, Message,
};
use serde_json::json;
use tokio::sync::mpsc;

use super::ChatProvider;
use super::LocalModelConfig;
use super::assemble::collect;
use super::error::{ProviderError, UpstreamError};
use super::stream::ChunkStream;
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

    /// The conversation for the model, and the start of the answer when the
    /// request ends with an assistant message: the model continues it.
    fn messages(&self, request: &ChatRequest) -> (Vec<Message>, String) {
        let (prefix, conversation) = match request.messages.split_last() {
            Some((last, before)) if last.role == Role::Assistant => {
                let text = last.content.as_ref().map(|c| c.text()).unwrap_or_default();
                (text, before)
            }
            _ => (String::new(), &request.messages[..]),
        };
        let mut messages: Vec<Message> = conversation
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
        (messages, prefix)
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

    /// A final assistant message is the start of the answer: the model goes on
    /// from it, in the same turn.
    fn prefill(&self) -> super::resume::Prefill {
        super::resume::Prefill::Assistant
    }

    async fn stream(
        &self,
        _model: &str,
        request: &ChatRequest,
    ) -> Result<ChunkStream, UpstreamError> {
        let (messages, prefix) = self.messages(request);
        let jobs = Jobs {
            llm: Arc::clone(&self.llm),
            metrics: Arc::clone(&self.metrics),
            messages,
            prefix,
            params: self.params(request),
        };
        // A full queue is refused before anything is streamed (so the router may
        // try another target); later choices wait their turn like any job.
        let first = jobs.submit(0)?;
        let choices = request.n.unwrap_or(1);
        let (chunks, receiver) = mpsc::channel(EVENTS);
        // The choices are generated one after another, each a job of its own; a
        // closed channel (the caller left) ends this task and, with it, the
        // generation under way.
        tokio::spawn(async move {
            let mut usage = Usage::default();
            let mut events = first;
            for index in 0..choices {
                if index > 0 {
                    // The caller left during the last choice: queue no more work.
                    if chunks.is_closed() {
                        return;
                    }
                    match jobs.submit(index) {
                        Ok(next) => events = next,
                        Err(error) => {
                            let _ = chunks.send(Err(error)).await;
                            return;
                        }
                    }
                }
                while let Some(event) = events.recv().await {
                    if let Event::Started { .. } | Event::Done(_) = &event {
                        jobs.metrics.local_queue(jobs.llm.waiting());
                    }
                    if let Event::Done(generated) = &event {
                        jobs.metrics
                            .local_tokens(generated.prompt_tokens, generated.completion_tokens);
                        // The prompt is read once per choice but billed once, as
                        // OpenAI counts it.
                        usage.prompt_tokens = generated.prompt_tokens as u64;
                        usage.completion_tokens += generated.completion_tokens as u64;
                    }
                    // A failed or cancelled choice ends the answer.
                    let last = match &event {
                        Event::Failed(_) => true,
                        Event::Done(generated) => generated.finish == Finish::Cancelled,
                        _ => false,
                    };
                    for chunk in chunks_for(event, index) {
                        if chunks.send(chunk).await.is_err() {
                            return;
                        }
                    }
                    if last {
                        return;
                    }
                }
            }
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
            let _ = chunks
                .send(Ok(ChatChunk {
                    usage: Some(usage),
                    ..Default::default()
                }))
                .await;
        });
        Ok(Box::pin(futures_util::stream::unfold(
            receiver,
            |mut receiver| async move {
                let chunk = receiver.recv().await?;
                Some((chunk, receiver))
            },
        )))
    }
}

/// What each choice's job is made of.
struct Jobs {
    llm: Arc<LocalLlm>,
    metrics: Arc<Metrics>,
    messages: Vec<Message>,
    /// The start of the answer, to continue.
    prefix: String,
    params: GenerateParams,
}

impl Jobs {
    /// Queues the generation of choice `index`; its events arrive on the receiver.
    fn submit(&self, index: u32) -> Result<mpsc::Receiver<Event>, UpstreamError> {
        let (events, receiver) = mpsc::channel(EVENTS);
        let mut params = self.params.clone();
        // Each choice samples its own way (the same with greedy decoding).
        params.seed = params.seed.wrapping_add(u64::from(index));
        let job = Job {
            messages: self.messages.clone(),
            prefix: self.prefix.clone(),
            params,
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
        Ok(receiver)
    }
}

/// The chunks one model event becomes, for choice `index` (usage is sent once, at
/// the end of all choices).
fn chunks_for(event: Event, index: u32) -> Vec<Result<ChatChunk, UpstreamError>> {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| -> ChatChunk {
        serde_json::from_value(json!({
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]
        }))
        .unwrap_or_default()
    };
    match event {
        Event::Started { .. } => vec![Ok(chunk(json!({"role": "assistant", "content": ""}), None))],
        Event::Text(text) => vec![Ok(chunk(json!({"content": text}), None))],
        Event::Done(generated) if generated.finish == Finish::Cancelled => Vec::new(),
        Event::Done(generated) => vec![Ok(chunk(json!({}), Some(generated.finish.as_str())))],
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
