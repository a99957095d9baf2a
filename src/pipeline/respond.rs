//! The respond stage: shape an answer for the client. ragway's own id and timestamp,
//! the serving target as `model`, placeholders restored, citations attached, and
//! the usage chunk only for clients that asked for it.
//!
//! Unlike the other stages this is the pipeline's own logic with nothing to switch
//! or replace, so it is plain functions rather than a trait.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{Answer, RequestCtx};
use crate::generate::ChunkStream;
use crate::sanitize::guard::{GuardList, GuardStream, Verdict};
use crate::sanitize::{StreamRestorer, Vault};
use crate::wire::{ChatChunk, ChatCompletion, ChunkChoice, Delta};

/// The finish reason of an answer the content guard cut.
const FILTERED: &str = "content_filter";

/// What turns an upstream (sanitised) answer into the client's: this request's own
/// values restored, then the content guard.
#[derive(Clone)]
pub(super) struct ToClient {
    pub vault: Arc<Vault>,
    pub guard: Arc<GuardList>,
}

impl ToClient {
    pub(super) fn new(vault: Vault, guard: Arc<GuardList>) -> Self {
        ToClient {
            vault: Arc::new(vault),
            guard,
        }
    }

    /// One whole text; `true` when the guard cut it.
    fn text(&self, text: &str) -> (String, bool) {
        let restored = self.vault.restore(text);
        match self.guard.check(&restored) {
            Verdict::Pass => (restored, false),
            Verdict::Masked(masked) => (masked, false),
            Verdict::Blocked(before) => (before, true),
        }
    }
}

/// A whole answer from a provider.
pub(super) fn whole(
    ctx: &RequestCtx,
    target: Arc<str>,
    completion: ChatCompletion,
    to_client: &ToClient,
    recorded: String,
) -> Answer {
    // An answer produced from raw text may hold raw values: it is never cached.
    let mut to_store = ctx
        .cache_key
        .clone()
        .filter(|_| cacheable(&completion) && !ctx.raw_output)
        .map(|key| {
            let mut stored = completion.clone();
            stored.model = target.to_string();
            attach_citations(ctx, &mut stored);
            Box::new((key, stored))
        });
    let (reply, filtered) = restore_whole(ctx, &target, completion, to_client);
    // An answer the content guard cut is not served again.
    if filtered {
        to_store = None;
    }
    Answer::Whole {
        target,
        reply,
        to_store,
        recorded,
        filtered,
    }
}

/// A hit is served with the passages its answer was grounded in: they are stored
/// with it.
pub(super) fn attach_citations(ctx: &RequestCtx, answer: &mut ChatCompletion) {
    if let Some(citations) = citations(ctx) {
        answer.extra.insert("ragway".to_owned(), citations);
    }
}

/// The citations a stored answer was answered with.
pub(super) fn stored_citations(answer: &ChatCompletion) -> Vec<crate::retrieve::Citation> {
    answer
        .extra
        .get("ragway")
        .and_then(|r| r.get("citations"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

/// A cached (sanitised) answer, restored with this request's own values; replayed as
/// chunks when the client asked for a stream.
pub(super) fn cached(ctx: &RequestCtx, answer: ChatCompletion, to_client: ToClient) -> Answer {
    let target: Arc<str> = answer.model.as_str().into();
    if ctx.stream {
        let chunks: ChunkStream = Box::pin(futures_util::stream::iter(
            replay_chunks(answer).into_iter().map(Ok),
        ));
        return Answer::Stream {
            target,
            started: tokio::time::Instant::now(),
            chunks,
            to_client,
        };
    }
    let recorded = answer_text(&answer);
    let (reply, filtered) = restore_whole(ctx, &target, answer, &to_client);
    Answer::Whole {
        target,
        reply,
        to_store: None,
        recorded,
        filtered,
    }
}

/// The text of an answer's choices, as the audit record keeps it.
pub(super) fn answer_text(completion: &ChatCompletion) -> String {
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
    to_client: &ToClient,
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
                let (text, blocked) = to_client.text(text);
                *field = Some(text);
                cut |= blocked;
            }
        }
        if cut {
            choice.finish_reason = Some(FILTERED.to_owned());
            filtered = true;
        }
        if let Some(calls) = &mut message.tool_calls {
            restore_arguments(&to_client.vault, calls);
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

/// Shapes the chunks of one stream for the client.
pub(super) struct ChunkShaper {
    id: String,
    created: u64,
    model: String,
    wants_usage: bool,
    citations: Option<Value>,
    to_client: ToClient,
    /// Per choice (`n` > 1 interleaves them): what each field holds back.
    choices: BTreeMap<u32, ChoiceFilter>,
    /// The content guard cut the answer: nothing more is sent.
    filtered: bool,
}

/// One choice's streamed fields.
struct ChoiceFilter {
    content: FieldFilter,
    reasoning: FieldFilter,
    /// Per tool call index: its streamed `arguments`.
    arguments: BTreeMap<u64, StreamRestorer>,
    /// Its finish chunk has been shaped: nothing is held back any more.
    ended: bool,
}

/// One streamed text field: placeholders restored, then the content guard. Each
/// holds back only the tail that the next piece could still change.
struct FieldFilter {
    restorer: StreamRestorer,
    guard: GuardStream,
}

impl FieldFilter {
    fn new(to_client: &ToClient) -> Self {
        FieldFilter {
            restorer: StreamRestorer::new(Arc::clone(&to_client.vault)),
            guard: to_client.guard.stream(),
        }
    }

    /// The text to send for `piece` (and, at the end, what was held); `true` when
    /// the guard cut the answer here.
    fn piece(&mut self, piece: Option<String>, end: bool) -> (Option<String>, bool) {
        let had_piece = piece.is_some();
        let mut text = piece.map(|p| self.restorer.push(&p));
        if end {
            let rest = self.restorer.finish();
            text.get_or_insert_with(String::new).push_str(&rest);
        }
        let Some(restored) = text else {
            return (None, false);
        };
        let (mut out, mut cut) = self.guard.push(&restored);
        if end && !cut {
            let (rest, blocked) = self.guard.finish();
            out.push_str(&rest);
            cut = blocked;
        }
        // A finish chunk with no text of its own gains no empty field.
        let out = (had_piece || !out.is_empty()).then_some(out);
        (out, cut)
    }
}

impl ChoiceFilter {
    fn new(to_client: &ToClient) -> Self {
        ChoiceFilter {
            content: FieldFilter::new(to_client),
            reasoning: FieldFilter::new(to_client),
            arguments: BTreeMap::new(),
            ended: false,
        }
    }

    /// Shapes one choice's delta in place; `true` when the guard cut it.
    fn delta(&mut self, delta: &mut Delta, vault: &Arc<Vault>, end: bool) -> bool {
        let (content, cut_content) = self.content.piece(delta.content.take(), end);
        let (reasoning, cut_reasoning) = self.reasoning.piece(delta.reasoning_content.take(), end);
        delta.content = content;
        delta.reasoning_content = reasoning;
        self.tool_calls(delta, vault, end);
        self.ended |= end;
        cut_content || cut_reasoning
    }

    /// Restores the argument fragments of a delta's tool calls; at the end, adds
    /// what each call still held back.
    fn tool_calls(&mut self, delta: &mut Delta, vault: &Arc<Vault>, end: bool) {
        if vault.is_empty() {
            return;
        }
        if let Some(Value::Array(calls)) = &mut delta.tool_calls {
            for call in calls {
                let index = call["index"].as_u64().unwrap_or(0);
                if let Some(Value::String(fragment)) = call.pointer_mut("/function/arguments") {
                    let restorer = self
                        .arguments
                        .entry(index)
                        .or_insert_with(|| StreamRestorer::for_json(Arc::clone(vault)));
                    *fragment = restorer.push(fragment);
                }
            }
        }
        if !end {
            return;
        }
        for (index, restorer) in &mut self.arguments {
            let rest = restorer.finish();
            if rest.is_empty() {
                continue;
            }
            let calls = delta
                .tool_calls
                .get_or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(calls) = calls {
                calls.push(json!({"index": index, "function": {"arguments": rest}}));
            }
        }
    }
}

impl ChunkShaper {
    pub(super) fn new(ctx: &RequestCtx, target: &str, to_client: &ToClient) -> Self {
        ChunkShaper {
            id: response_id(ctx),
            created: now(),
            model: target.to_owned(),
            wants_usage: ctx.wants_stream_usage,
            citations: citations(ctx),
            to_client: to_client.clone(),
            choices: BTreeMap::new(),
            filtered: false,
        }
    }

    /// The guard cut the answer: the last chunk sent said so, the stream ends.
    pub(super) fn filtered(&self) -> bool {
        self.filtered
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
            let filter = self
                .choices
                .entry(choice.index)
                .or_insert_with(|| ChoiceFilter::new(&self.to_client));
            let end = choice.finish_reason.is_some();
            if filter.delta(&mut choice.delta, &self.to_client.vault, end) {
                choice.finish_reason = Some(FILTERED.to_owned());
                self.filtered = true;
            }
        }
        if (finish || self.filtered)
            && let Some(citations) = &self.citations
        {
            chunk.extra.insert("ragway".to_owned(), citations.clone());
        }
        Some(self.stamp(chunk))
    }

    /// Text still held back when the stream ended without every choice's finish
    /// chunk.
    pub(super) fn finish(&mut self) -> Option<ChatChunk> {
        let mut choices = Vec::new();
        let vault = Arc::clone(&self.to_client.vault);
        for (&index, filter) in self.choices.iter_mut().filter(|(_, f)| !f.ended) {
            let mut delta = Delta::default();
            let cut = filter.delta(&mut delta, &vault, true);
            delta.content = delta.content.filter(|t| !t.is_empty());
            delta.reasoning_content = delta.reasoning_content.filter(|t| !t.is_empty());
            self.filtered |= cut;
            let empty = delta.content.is_none()
                && delta.reasoning_content.is_none()
                && delta.tool_calls.is_none();
            if empty && !cut {
                continue;
            }
            choices.push(ChunkChoice {
                index,
                delta,
                finish_reason: cut.then(|| FILTERED.to_owned()),
                ..Default::default()
            });
        }
        if choices.is_empty() {
            return None;
        }
        Some(self.stamp(ChatChunk {
            choices,
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

/// Whether an answer may be served again: finished by the model or at the
/// request's own `max_tokens` (part of the key), with no tool calls (a tool call's
/// result belongs to the conversation that made it).
pub(super) fn cacheable(answer: &ChatCompletion) -> bool {
    answer.choices.iter().all(|c| {
        matches!(c.finish_reason.as_deref(), Some("stop" | "length"))
            && c.message.tool_calls.is_none()
    })
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
