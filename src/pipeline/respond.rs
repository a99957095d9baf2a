//! The respond stage: shape an answer for the client. ragway's own id and timestamp,
//! the serving target as `model`, placeholders restored, citations attached, and
//! the usage chunk only for clients that asked for it.
//!
//! Unlike the other stages this is the pipeline's own logic with nothing to switch
//! or replace, so it is plain functions rather than a trait.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{Answer, RequestCtx};
use crate::generate::ChunkStream;
use crate::sanitize::{Restorer, StreamRestorer};
use crate::wire::{ChatChunk, ChatCompletion, ChunkChoice, Delta};

/// A whole answer from a provider.
pub(super) fn whole(
    ctx: &RequestCtx,
    target: Arc<str>,
    completion: ChatCompletion,
    restorer: &dyn Restorer,
) -> Answer {
    let to_store = ctx
        .cache_key
        .filter(|_| cacheable(&completion))
        .map(|key| Box::new((key, completion.clone())));
    let reply = restore_whole(ctx, &target, completion, restorer);
    Answer::Whole {
        target,
        reply,
        to_store,
    }
}

/// A cached (sanitised) answer, restored with this request's own values; replayed as
/// chunks when the client asked for a stream.
pub(super) fn cached(
    ctx: &RequestCtx,
    answer: ChatCompletion,
    restorer: Box<dyn Restorer>,
) -> Answer {
    let target: Arc<str> = answer.model.as_str().into();
    if ctx.stream {
        let chunks: ChunkStream = Box::pin(futures_util::stream::iter(
            replay_chunks(answer).into_iter().map(Ok),
        ));
        return Answer::Stream {
            target,
            started: tokio::time::Instant::now(),
            chunks,
            restorer,
        };
    }
    let reply = restore_whole(ctx, &target, answer, restorer.as_ref());
    Answer::Whole {
        target,
        reply,
        to_store: None,
    }
}

fn restore_whole(
    ctx: &RequestCtx,
    target: &str,
    mut completion: ChatCompletion,
    restorer: &dyn Restorer,
) -> ChatCompletion {
    completion.id = response_id(ctx);
    completion.object = "chat.completion".to_owned();
    completion.created = now();
    completion.model = target.to_owned();
    for choice in &mut completion.choices {
        let message = &mut choice.message;
        message.content = message.content.as_deref().map(|t| restorer.restore(t));
        message.reasoning_content = message
            .reasoning_content
            .as_deref()
            .map(|t| restorer.restore(t));
    }
    if let Some(citations) = citations(ctx) {
        completion.extra.insert("ragway".to_owned(), citations);
    }
    completion
}

/// Splits a whole answer into the chunks a stream would have carried.
fn replay_chunks(answer: ChatCompletion) -> Vec<ChatChunk> {
    let mut chunks = Vec::new();
    for choice in answer.choices {
        let message = choice.message;
        chunks.push(ChatChunk {
            choices: vec![ChunkChoice {
                index: choice.index,
                delta: Delta {
                    role: Some(message.role),
                    content: message.content,
                    reasoning_content: message.reasoning_content,
                    tool_calls: message.tool_calls,
                    extra: Default::default(),
                },
                ..Default::default()
            }],
            ..Default::default()
        });
        chunks.push(ChatChunk {
            choices: vec![ChunkChoice {
                index: choice.index,
                finish_reason: choice.finish_reason.or_else(|| Some("stop".to_owned())),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    if let Some(usage) = answer.usage {
        chunks.push(ChatChunk {
            usage: Some(usage),
            ..Default::default()
        });
    }
    chunks
}

/// Shapes the chunks of one stream for the client.
pub(super) struct ChunkShaper {
    id: String,
    created: u64,
    model: String,
    wants_usage: bool,
    citations: Option<Value>,
    content: Box<dyn StreamRestorer>,
    reasoning: Box<dyn StreamRestorer>,
}

impl ChunkShaper {
    pub(super) fn new(ctx: &RequestCtx, target: &str, restorer: &dyn Restorer) -> Self {
        ChunkShaper {
            id: response_id(ctx),
            created: now(),
            model: target.to_owned(),
            wants_usage: ctx.wants_stream_usage,
            citations: citations(ctx),
            content: restorer.stream(),
            reasoning: restorer.stream(),
        }
    }

    /// The chunk as the client sees it, or `None` when nothing of it is for them.
    pub(super) fn shape(&mut self, mut chunk: ChatChunk) -> Option<ChatChunk> {
        if !self.wants_usage {
            chunk.usage = None;
            if chunk.choices.is_empty() {
                return None; // a usage-only chunk the client did not ask for
            }
        }
        let finish = chunk.is_finish();
        for choice in &mut chunk.choices {
            let delta = &mut choice.delta;
            delta.content = restore_piece(self.content.as_mut(), delta.content.take(), finish);
            delta.reasoning_content = restore_piece(
                self.reasoning.as_mut(),
                delta.reasoning_content.take(),
                finish,
            );
        }
        if finish && let Some(citations) = &self.citations {
            chunk.extra.insert("ragway".to_owned(), citations.clone());
        }
        Some(self.stamp(chunk))
    }

    /// Text still held back when the stream ended without a finish chunk.
    pub(super) fn finish(&mut self) -> Option<ChatChunk> {
        let content = self.content.finish();
        let reasoning = self.reasoning.finish();
        if content.is_empty() && reasoning.is_empty() {
            return None;
        }
        let delta = Delta {
            content: (!content.is_empty()).then_some(content),
            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
            ..Default::default()
        };
        Some(self.stamp(ChatChunk {
            choices: vec![ChunkChoice {
                delta,
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    fn stamp(&self, mut chunk: ChatChunk) -> ChatChunk {
        chunk.id.clone_from(&self.id);
        chunk.object = "chat.completion.chunk".to_owned();
        chunk.created = self.created;
        chunk.model.clone_from(&self.model);
        chunk
    }
}

/// Restores one streamed piece; at the finish chunk, also releases what was held.
fn restore_piece(
    restorer: &mut dyn StreamRestorer,
    piece: Option<String>,
    finish: bool,
) -> Option<String> {
    let mut text = piece.map(|p| restorer.push(&p));
    if finish {
        let rest = restorer.finish();
        if !rest.is_empty() {
            text.get_or_insert_with(String::new).push_str(&rest);
        }
    }
    text
}

/// Whether an answer may be served again: finished normally, with no tool calls
/// (a tool call's result belongs to the conversation that made it).
pub(super) fn cacheable(answer: &ChatCompletion) -> bool {
    answer
        .choices
        .iter()
        .all(|c| c.finish_reason.as_deref() == Some("stop") && c.message.tool_calls.is_none())
}

fn response_id(ctx: &RequestCtx) -> String {
    format!("chatcmpl-{}", ctx.request_id)
}

fn citations(ctx: &RequestCtx) -> Option<Value> {
    (!ctx.citations.is_empty()).then(|| json!({ "citations": ctx.citations }))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
