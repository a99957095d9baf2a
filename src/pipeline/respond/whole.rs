//! A whole answer for the client: from a provider, or from the cache (replayed as
//! chunks when the client asked for a stream).

use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use super::{FILTERED, Shaping, cacheable, citations, now, response_id};
use crate::call::Outcome;
use crate::generate::{Answer, AnswerBody};
use crate::pipeline::RequestCtx;
use crate::pipeline::record::Finished;
use crate::sanitize::Vault;
use crate::wire::{ChatChunk, ChatCompletion, ChunkChoice, Delta};

/// A whole answer shaped for the client, and how the call finished. `recorded` is
/// its text as the audit record keeps it.
pub(in crate::pipeline) fn whole(
    ctx: &RequestCtx,
    target: &Arc<str>,
    completion: ChatCompletion,
    shaping: &Shaping,
    recorded: String,
) -> (ChatCompletion, Finished) {
    // An answer produced from raw text may hold raw values: it is never cached.
    let to_store =
        (ctx.cache_key.is_some() && cacheable(&completion) && !ctx.raw_output).then(|| {
            let mut stored = completion.clone();
            stored.model = target.to_string();
            attach_citations(ctx, &mut stored);
            stored
        });
    let (reply, filtered) = restore_whole(ctx, target, completion, shaping);
    let outcome = if filtered {
        Outcome::ContentFilter
    } else {
        Outcome::Ok
    };
    let mut finished = Finished::answered(target.clone(), outcome);
    finished.usage = reply.usage;
    finished.answer_chars = reply
        .choices
        .iter()
        .filter_map(|c| c.message.content.as_deref())
        .map(|t| t.chars().count())
        .sum();
    finished.answer = recorded;
    // An answer the content guard cut is not served again.
    finished.to_store = to_store.filter(|_| !filtered);
    (reply, finished)
}

/// A hit is served with the passages its answer was grounded in: they are stored
/// with it.
pub(in crate::pipeline) fn attach_citations(ctx: &RequestCtx, answer: &mut ChatCompletion) {
    if let Some(citations) = citations(ctx) {
        answer.extra.insert("ragway".to_owned(), citations);
    }
}

/// The citations a stored answer was answered with.
pub(in crate::pipeline) fn stored_citations(
    answer: &ChatCompletion,
) -> Vec<crate::retrieve::Citation> {
    answer
        .extra
        .get("ragway")
        .and_then(|r| r.get("citations"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

/// A cached (sanitised) answer, as if it had come from upstream: replayed as chunks
/// when the client asked for a stream.
pub(in crate::pipeline) fn from_cache(ctx: &RequestCtx, stored: ChatCompletion) -> Answer {
    let target: Arc<str> = stored.model.as_str().into();
    let body = if ctx.stream {
        AnswerBody::Stream(Box::pin(futures_util::stream::iter(
            replay_chunks(stored).into_iter().map(Ok),
        )))
    } else {
        AnswerBody::Whole(Box::new(stored))
    };
    Answer {
        target,
        started: Instant::now(),
        body,
        raw_output: false,
    }
}

/// The text of an answer's choices, as the audit record keeps it.
pub(in crate::pipeline) fn answer_text(completion: &ChatCompletion) -> String {
    crate::wire::choices_text(
        completion
            .choices
            .iter()
            .map(|c| c.message.content.as_deref().unwrap_or_default()),
    )
}

fn restore_whole(
    ctx: &RequestCtx,
    target: &str,
    mut completion: ChatCompletion,
    shaping: &Shaping,
) -> (ChatCompletion, bool) {
    completion.id = response_id(ctx);
    completion.object = "chat.completion".to_owned();
    completion.created = now();
    completion.model = target.to_owned();
    let mut filtered = false;
    for choice in &mut completion.choices {
        let message = &mut choice.message;
        let mut cut = false;
        for field in [&mut message.content, &mut message.reasoning_content] {
            if let Some(text) = field.as_deref() {
                let (text, blocked) = shaping.text(text);
                *field = Some(text);
                cut |= blocked;
            }
        }
        if cut {
            choice.finish_reason = Some(FILTERED.to_owned());
            filtered = true;
        }
        if let Some(calls) = &mut message.tool_calls {
            restore_arguments(&shaping.vault, calls);
        }
    }
    attach_citations(ctx, &mut completion);
    (completion, filtered)
}

/// Restores the `arguments` of tool calls: the client's application runs the tool
/// with its user's own values. (The content guard does not cut arguments: they are
/// JSON for a program, not text for a reader.)
fn restore_arguments(vault: &Vault, calls: &mut Value) {
    match calls {
        Value::Array(items) => items.iter_mut().for_each(|v| restore_arguments(vault, v)),
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(text) if key == "arguments" => *text = vault.restore_json(text),
                    other => restore_arguments(vault, other),
                }
            }
        }
        _ => {}
    }
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
