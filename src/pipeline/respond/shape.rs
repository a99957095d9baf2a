//! A stream for the client, chunk by chunk: each choice's text restored and
//! guarded with only the tail the next piece could change held back.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{FILTERED, Shaping, citations, now, response_id};
use crate::pipeline::RequestCtx;
use crate::sanitize::guard::GuardStream;
use crate::sanitize::{StreamRestorer, Vault};
use crate::wire::{ChatChunk, ChunkChoice, Delta};

/// Shapes the chunks of one stream for the client.
pub(in crate::pipeline) struct ChunkShaper {
    id: String,
    created: u64,
    model: String,
    wants_usage: bool,
    citations: Option<Value>,
    /// Who resumed the answer, if one did: named on its last chunk.
    resumed: crate::generate::resume::ResumeLog,
    shaping: Shaping,
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
    fn new(shaping: &Shaping) -> Self {
        FieldFilter {
            restorer: StreamRestorer::new(Arc::clone(&shaping.vault)),
            guard: shaping.guard.stream(),
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
    fn new(shaping: &Shaping) -> Self {
        ChoiceFilter {
            content: FieldFilter::new(shaping),
            reasoning: FieldFilter::new(shaping),
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
    pub(in crate::pipeline) fn new(ctx: &RequestCtx, target: &str, shaping: &Shaping) -> Self {
        ChunkShaper {
            id: response_id(ctx),
            created: now(),
            model: target.to_owned(),
            wants_usage: ctx.wants_stream_usage,
            citations: citations(ctx),
            resumed: ctx.resumed.clone(),
            shaping: shaping.clone(),
            choices: BTreeMap::new(),
            filtered: false,
        }
    }

    /// The guard cut the answer: the last chunk sent said so, the stream ends.
    pub(in crate::pipeline) fn filtered(&self) -> bool {
        self.filtered
    }

    /// The chunk as the client sees it, or `None` when nothing of it is for them.
    pub(in crate::pipeline) fn shape(&mut self, mut chunk: ChatChunk) -> Option<ChatChunk> {
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
                .or_insert_with(|| ChoiceFilter::new(&self.shaping));
            let end = choice.finish_reason.is_some();
            if filter.delta(&mut choice.delta, &self.shaping.vault, end) {
                choice.finish_reason = Some(FILTERED.to_owned());
                self.filtered = true;
            }
        }
        if finish || self.filtered {
            // The passages used, and the target that finished an answer another
            // began (a stream's headers went before it broke).
            let mut ragway = self.citations.clone().unwrap_or_else(|| json!({}));
            if let Some(target) = self.resumed.continued_by() {
                ragway["continued"] = json!(&*target);
            }
            if ragway.as_object().is_some_and(|o| !o.is_empty()) {
                chunk.extra.insert("ragway".to_owned(), ragway);
            }
        }
        Some(self.stamp(chunk))
    }

    /// Text still held back when the stream ended without every choice's finish
    /// chunk.
    pub(in crate::pipeline) fn finish(&mut self) -> Option<ChatChunk> {
        let mut choices = Vec::new();
        let vault = Arc::clone(&self.shaping.vault);
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
