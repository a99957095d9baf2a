//! Builds a whole answer from streamed chunks: for clients that asked for a whole
//! answer when the provider was asked to stream, and for the cache and the record of
//! a streamed answer.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::{ChunkStream, UpstreamError};
use crate::wire::{ChatChunk, ChatCompletion, Choice, ResponseMessage, Usage};

/// A whole answer from a stream. Any error on the way fails it: nothing has been
/// sent to the client, so the attempt can be retried or failed over.
pub async fn collect(chunks: ChunkStream) -> Result<ChatCompletion, UpstreamError> {
    collect_into(&mut Assembler::default(), chunks).await
}

/// [`collect`] onto what `answer` holds already; after an error, `answer` holds
/// what had arrived (for another target to continue).
pub async fn collect_into(
    answer: &mut Assembler,
    mut chunks: ChunkStream,
) -> Result<ChatCompletion, UpstreamError> {
    while let Some(chunk) = chunks.next().await {
        answer.add(&chunk?);
    }
    std::mem::take(answer)
        .finish()
        .ok_or_else(|| UpstreamError::Protocol("the stream held no answer".to_owned()))
}

#[derive(Debug, Default)]
pub struct Assembler {
    id: String,
    created: u64,
    model: String,
    choices: BTreeMap<u32, ChoiceParts>,
    usage: Option<Usage>,
    extra: Map<String, Value>,
}

#[derive(Debug, Default)]
struct ChoiceParts {
    content: String,
    reasoning: String,
    /// Tool calls by their `index`; argument fragments are appended in order.
    tool_calls: BTreeMap<u64, Value>,
    finish_reason: Option<String>,
    logprobs: Option<Value>,
    extra: Map<String, Value>,
}

impl Assembler {
    /// The answer's text so far, when another target could continue it: one
    /// choice, unfinished, with no tool calls.
    pub fn resumable_text(&self) -> Option<&str> {
        let mut choices = self.choices.iter();
        let (index, only) = choices.next()?;
        let resumable = *index == 0
            && choices.next().is_none()
            && only.tool_calls.is_empty()
            && only.finish_reason.is_none();
        resumable.then_some(only.content.as_str())
    }

    pub fn add(&mut self, chunk: &ChatChunk) {
        if self.id.is_empty() {
            self.id.clone_from(&chunk.id);
        }
        self.created = self.created.max(chunk.created);
        if self.model.is_empty() {
            self.model.clone_from(&chunk.model);
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for (key, value) in &chunk.extra {
            self.extra.insert(key.clone(), value.clone());
        }
        for choice in &chunk.choices {
            let parts = self.choices.entry(choice.index).or_default();
            let delta = &choice.delta;
            if let Some(text) = &delta.content {
                parts.content.push_str(text);
            }
            if let Some(text) = &delta.reasoning_content {
                parts.reasoning.push_str(text);
            }
            if let Some(Value::Array(calls)) = &delta.tool_calls {
                for call in calls {
                    merge_tool_call(&mut parts.tool_calls, call);
                }
            }
            if let Some(logprobs) = choice.extra.get("logprobs").filter(|v| !v.is_null()) {
                merge_logprobs(&mut parts.logprobs, logprobs);
            }
            if choice.finish_reason.is_some() {
                parts.finish_reason.clone_from(&choice.finish_reason);
            }
            for (key, value) in choice.extra.iter().filter(|(k, _)| *k != "logprobs") {
                parts.extra.insert(key.clone(), value.clone());
            }
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Characters of answer text so far (content and reasoning).
    pub fn answer_chars(&self) -> usize {
        self.choices
            .values()
            .map(|c| c.content.chars().count() + c.reasoning.chars().count())
            .sum()
    }

    /// The answer text so far, as the audit record keeps it
    /// ([`crate::wire::choices_text`]).
    pub fn text(&self) -> String {
        crate::wire::choices_text(self.choices.values().map(|c| c.content.as_str()))
    }

    /// The whole answer; `None` if no choice ever arrived.
    pub fn finish(self) -> Option<ChatCompletion> {
        if self.choices.is_empty() {
            return None;
        }
        let choices = self
            .choices
            .into_iter()
            .map(|(index, parts)| {
                let tool_calls: Vec<Value> = parts.tool_calls.into_values().collect();
                let content =
                    (!parts.content.is_empty() || tool_calls.is_empty()).then_some(parts.content);
                let mut extra = parts.extra;
                if let Some(logprobs) = parts.logprobs {
                    extra.insert("logprobs".to_owned(), logprobs);
                }
                Choice {
                    index,
                    message: ResponseMessage {
                        content,
                        reasoning_content: (!parts.reasoning.is_empty()).then_some(parts.reasoning),
                        tool_calls: (!tool_calls.is_empty()).then_some(Value::Array(tool_calls)),
                        ..ResponseMessage::assistant()
                    },
                    finish_reason: parts.finish_reason,
                    extra,
                }
            })
            .collect();
        Some(ChatCompletion {
            id: self.id,
            object: "chat.completion".to_owned(),
            created: self.created,
            model: self.model,
            choices,
            usage: self.usage,
            extra: self.extra,
        })
    }
}

/// Streamed tool calls arrive in pieces keyed by `index`: the first piece carries
/// the id, type and function name, later ones more of the arguments.
fn merge_tool_call(calls: &mut BTreeMap<u64, Value>, piece: &Value) {
    let index = piece.get("index").and_then(Value::as_u64).unwrap_or(0);
    let call = calls.entry(index).or_insert_with(|| {
        serde_json::json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    });
    for key in ["id", "type"] {
        if let Some(value) = piece.get(key).filter(|v| v.is_string()) {
            call[key] = value.clone();
        }
    }
    if let Some(function) = piece.get("function") {
        if let Some(name) = function.get("name").and_then(Value::as_str) {
            call["function"]["name"] = Value::String(name.to_owned());
        }
        if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
            let so_far = call["function"]["arguments"].as_str().unwrap_or_default();
            call["function"]["arguments"] = Value::String(format!("{so_far}{arguments}"));
        }
    }
}

/// Per-token log probabilities arrive as `{"content": [...]}` per chunk.
fn merge_logprobs(into: &mut Option<Value>, piece: &Value) {
    let target = into.get_or_insert_with(|| serde_json::json!({"content": []}));
    for key in ["content", "refusal"] {
        if let (Some(Value::Array(have)), Some(Value::Array(more))) =
            (target.get_mut(key), piece.get(key))
        {
            have.extend(more.iter().cloned());
        } else if let Some(more) = piece.get(key).filter(|v| v.is_array()) {
            target[key] = more.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(value: Value) -> ChatChunk {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn text_reasoning_usage_and_extras() {
        let mut a = Assembler::default();
        a.add(&chunk(json!({"id": "x", "model": "m", "created": 5,
            "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "hm"}}]})));
        a.add(&chunk(
            json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
        ));
        a.add(&chunk(
            json!({"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}],
            "system_fingerprint": "fp"}),
        ));
        a.add(&chunk(json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})));
        assert_eq!(a.answer_chars(), 7);
        let c = a.finish().unwrap();
        assert_eq!(c.choices[0].message.content.as_deref(), Some("Hello"));
        assert_eq!(
            c.choices[0].message.reasoning_content.as_deref(),
            Some("hm")
        );
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(c.usage.unwrap().total_tokens, 3);
        assert_eq!(c.extra["system_fingerprint"], "fp");
        assert_eq!((c.id.as_str(), c.model.as_str(), c.created), ("x", "m", 5));
    }

    #[test]
    fn tool_call_fragments_are_joined() {
        let mut a = Assembler::default();
        a.add(&chunk(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\""}}]}}]})));
        a.add(&chunk(
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": ": 1}"}}]}}]}),
        ));
        a.add(&chunk(
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        ));
        let c = a.finish().unwrap();
        let calls = c.choices[0].message.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0]["id"], "call_1");
        assert_eq!(calls[0]["function"]["name"], "lookup");
        assert_eq!(calls[0]["function"]["arguments"], "{\"q\": 1}");
        assert!(c.choices[0].message.content.is_none());
    }

    #[test]
    fn logprobs_are_concatenated_and_empty_streams_yield_nothing() {
        let mut a = Assembler::default();
        for token in ["a", "b"] {
            a.add(&chunk(
                json!({"choices": [{"index": 0, "delta": {"content": token},
                "logprobs": {"content": [{"token": token, "logprob": -0.1}]}}]}),
            ));
        }
        let c = a.finish().unwrap();
        assert_eq!(
            c.choices[0].extra["logprobs"]["content"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(Assembler::default().finish().is_none());
    }
}
