//! The OpenAI chat wire format, shared by the HTTP API and the provider client.
//!
//! Known fields are typed so that bad input is rejected by name; every other field is
//! kept in `extra` and passed through untouched, so clients can use provider features
//! (`enable_thinking`, `logprobs`, …) that ragway does not model.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// `Deserialize` for a struct with the named fields and `extra: Map<String,
/// Value>` for any other member: what `#[serde(default)]` on each field (or a
/// missing-field error for one marked `required`) plus `#[serde(flatten)] extra`
/// would do, reading the object once — `flatten` buffers every member before
/// reading it again, nested objects included.
macro_rules! known_fields_and_extra {
    ($ty:ident, $expecting:literal, {
        $($($required:ident)? $name:literal => $field:ident),* $(,)?
    }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct FieldsVisitor;

                impl<'de> Visitor<'de> for FieldsVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        $(let mut $field = None;)*
                        let mut extra = Map::new();
                        while let Some(Key(key)) = map.next_key()? {
                            match &*key {
                                $($name => $field = Some(map.next_value()?),)*
                                _ => {
                                    extra.insert(key.into_owned(), map.next_value()?);
                                }
                            }
                        }
                        Ok($ty {
                            $($field: known_fields_and_extra!(@value $field $name $($required)?),)*
                            extra,
                        })
                    }
                }

                deserializer.deserialize_map(FieldsVisitor)
            }
        }
    };
    (@value $field:ident $name:literal) => {
        $field.unwrap_or_default()
    };
    (@value $field:ident $name:literal required) => {
        $field.ok_or_else(|| de::Error::missing_field($name))?
    };
}

/// An object's member name, borrowed from the input when it holds no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

// === requests ===

/// The most choices (`n`) one request may ask for: each is a whole answer's work.
pub const MAX_CHOICES: u32 = 16;

/// A client's `POST /v1/chat/completions` body.
///
/// `model`, `stream` and `stream_options` are not serialised: the provider client
/// writes its own (the upstream model name, and the usage option it needs).
#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest {
    #[serde(skip_serializing)]
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(skip_serializing)]
    pub stream: Option<bool>,
    #[serde(skip_serializing)]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// ragway's own per-request options; never forwarded upstream.
    #[serde(skip_serializing)]
    pub ragway: Option<RagwayOptions>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

known_fields_and_extra!(ChatRequest, "a chat completion request", {
    required "model" => model, required "messages" => messages, "stream" => stream,
    "stream_options" => stream_options, "temperature" => temperature, "top_p" => top_p,
    "max_tokens" => max_tokens, "max_completion_tokens" => max_completion_tokens,
    "stop" => stop, "seed" => seed, "n" => n, "tools" => tools,
    "tool_choice" => tool_choice, "response_format" => response_format, "user" => user,
    "ragway" => ragway,
});

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Checks what the types alone cannot: the rules a field's value must follow.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let invalid = |param: &str, message: &str| {
            Err(GatewayError::invalid(
                format!("invalid `{param}`: {message}"),
                param.to_owned(),
            ))
        };
        if self.model.trim().is_empty() {
            return invalid("model", "must not be empty");
        }
        if self.messages.is_empty() {
            return invalid("messages", "must hold at least one message");
        }
        for (i, message) in self.messages.iter().enumerate() {
            let needs_content = !matches!(message.role, Role::Assistant);
            if needs_content && message.content.is_none() {
                return invalid(
                    &format!("messages[{i}].content"),
                    "is required for this role",
                );
            }
        }
        if self.n.is_some_and(|n| !(1..=MAX_CHOICES).contains(&n)) {
            return invalid("n", &format!("must be between 1 and {MAX_CHOICES}"));
        }
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return invalid("temperature", "must be between 0 and 2");
        }
        if self.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return invalid("top_p", "must be between 0 and 1");
        }
        if self.max_tokens == Some(0) || self.max_completion_tokens == Some(0) {
            return invalid("max_tokens", "must be at least 1");
        }
        Ok(())
    }

    /// Whether the client asked for a usage chunk at the end of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Options a client may send under the `ragway` member of a request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RagwayOptions {
    /// Ground this request in the tenant's documents (default: the alias's setting).
    #[serde(default)]
    pub rag: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

known_fields_and_extra!(Message, "a message", {
    required "role" => role, "content" => content, "name" => name,
    "tool_calls" => tool_calls, "tool_call_id" => tool_call_id,
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

/// A message's content: a plain string or a list of typed parts.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    /// The text of the content, parts joined by newlines; images and files are skipped.
    pub fn text(&self) -> String {
        match self {
            Content::Text(text) => text.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|part| match part {
                    ContentPart::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

// Written by hand rather than `untagged` so that an error inside a part keeps its
// path (`messages[0].content[1].type`) instead of "did not match any variant".
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;

        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }

        deserializer.deserialize_any(ContentVisitor)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
    InputAudio { input_audio: Value },
    File { file: Value },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

// === responses ===

/// A whole (non-streaming) chat completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletion {
    #[serde(default)]
    pub id: String,
    #[serde(default = "completion_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn completion_object() -> String {
    "chat.completion".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: ResponseMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResponseMessage {
    #[serde(default = "assistant_role")]
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    /// DeepSeek-R1's reasoning section, passed through as the provider sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ResponseMessage {
    /// An empty assistant message.
    pub fn assistant() -> Self {
        ResponseMessage {
            role: assistant_role(),
            ..Default::default()
        }
    }
}

fn assistant_role() -> String {
    "assistant".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, deserialize_with = "null_as_zero")]
    pub prompt_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub completion_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub total_tokens: u64,
    /// OpenAI's: `cached_tokens`, the prompt tokens the provider served from its
    /// own cache (cheaper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// DeepSeek's name for the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
}

impl Usage {
    /// Prompt tokens served from the provider's cache, in either provider's words.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(self.prompt_cache_hit_tokens)
            .unwrap_or(0)
            .min(self.prompt_tokens)
    }
}

fn null_as_zero<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(deserializer)?.unwrap_or(0))
}

/// One streamed chunk. Every field has a default: Infini-AI's bare-JSON streams send
/// `object` and `created` only in their last chunk.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatChunk {
    /// Whether any choice carries a finish reason: the answer is complete.
    pub fn is_finish(&self) -> bool {
        self.choices.iter().any(|c| c.finish_reason.is_some())
    }

    /// Whether this chunk carries something of the answer (text, a tool call, a
    /// finish reason), as opposed to an empty role announcement or usage alone.
    pub fn has_payload(&self) -> bool {
        self.choices.iter().any(|c| {
            c.finish_reason.is_some()
                || c.delta.content.as_deref().is_some_and(|s| !s.is_empty())
                || c.delta
                    .reasoning_content
                    .as_deref()
                    .is_some_and(|s| !s.is_empty())
                || c.delta.tool_calls.is_some()
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

// Parsed on every request (and every streamed chunk), so read in one pass.
known_fields_and_extra!(ChatChunk, "a chat completion chunk", {
    "id" => id, "object" => object, "created" => created, "model" => model,
    "choices" => choices, "usage" => usage,
});
known_fields_and_extra!(ChunkChoice, "a chunk's choice", {
    "index" => index, "delta" => delta, "finish_reason" => finish_reason,
});
known_fields_and_extra!(Delta, "a chunk's delta", {
    "role" => role, "content" => content, "reasoning_content" => reasoning_content,
    "tool_calls" => tool_calls,
});

/// The text of an answer's choices as one string, as the audit record keeps it:
/// the text itself for one choice; for several (`n` > 1), a JSON array of their
/// texts in order, so that where each ends stays plain.
pub fn choices_text<'a>(texts: impl IntoIterator<Item = &'a str>) -> String {
    let texts: Vec<&str> = texts.into_iter().collect();
    match texts.as_slice() {
        [] => String::new(),
        [one] => (*one).to_owned(),
        many => serde_json::to_string(many).unwrap_or_default(),
    }
}

// === models and errors ===

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

/// The error envelope is the error module's: `{"error": {...}}`.
pub use crate::error::{ErrorBody, ErrorEnvelope};

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, String> {
        let de = &mut serde_json::Deserializer::from_str(body);
        serde_path_to_error::deserialize(de).map_err(|e| e.path().to_string())
    }

    #[test]
    fn unknown_fields_pass_through_and_ours_stay_home() {
        let req = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],
                "enable_thinking":true,"stream":true,"ragway":{"rag":false}}"#,
        )
        .unwrap();
        let out = serde_json::to_value(&req).unwrap();
        assert_eq!(out["enable_thinking"], true);
        assert!(out.get("model").is_none());
        assert!(out.get("stream").is_none());
        assert!(out.get("ragway").is_none());
        assert_eq!(req.ragway.unwrap().rag, Some(false));
    }

    #[test]
    fn errors_inside_content_parts_keep_their_path() {
        let path = parse(
            r#"{"model":"m","messages":[{"role":"user","content":[
                {"type":"text","text":"a"},{"type":"video","x":1}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(path, "messages[0].content[1].type");
        let path = parse(r#"{"model":"m","messages":[{"role":"bot","content":"x"}]}"#).unwrap_err();
        assert_eq!(path, "messages[0].role");
        let path = parse(r#"{"model":"m","messages":[],"temperature":"hot"}"#).unwrap_err();
        assert_eq!(path, "temperature");
    }

    #[test]
    fn usage_alone_is_not_part_of_the_answer() {
        let chunk: ChatChunk = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}],
                "usage":{"prompt_tokens":1,"completion_tokens":0,"total_tokens":1}}"#,
        )
        .unwrap();
        assert!(!chunk.has_payload());
    }

    #[test]
    fn a_chunk_keeps_unknown_members_at_every_level_and_defaults_missing_ones() {
        let text = r#"{"id":"c1","choices":[{"index":1,"delta":{"content":"hi",
            "reasoning_content":null,"x_delta":[1]},"finish_reason":null,"logprobs":{"a":1}}],
            "system_fingerprint":"fp","esc\u0061ped":true,"usage":null}"#;
        let chunk: ChatChunk = serde_json::from_str(text).unwrap();
        assert_eq!((chunk.id.as_str(), chunk.created), ("c1", 0));
        assert!(chunk.usage.is_none() && chunk.object.is_empty());
        assert_eq!(chunk.extra["system_fingerprint"], "fp");
        assert_eq!(chunk.extra["escaped"], true);
        let choice = &chunk.choices[0];
        assert_eq!((choice.index, choice.finish_reason.as_deref()), (1, None));
        assert_eq!(choice.extra["logprobs"]["a"], 1);
        assert_eq!(choice.delta.content.as_deref(), Some("hi"));
        assert!(choice.delta.reasoning_content.is_none());
        assert_eq!(choice.delta.extra["x_delta"][0], 1);
        // The same through a `Value` (keys owned), and back out whole.
        let value: Value = serde_json::from_str(text).unwrap();
        let again: ChatChunk = serde_json::from_value(value).unwrap();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&chunk).unwrap()
        );
        let out = serde_json::to_value(&chunk).unwrap();
        assert_eq!(out["choices"][0]["delta"]["x_delta"][0], 1);
        assert!(serde_json::from_str::<ChatChunk>(r#"{"created":"soon"}"#).is_err());
        assert!(serde_json::from_str::<ChatChunk>("[]").is_err());
    }

    #[test]
    fn image_parts_round_trip() {
        let req = parse(
            r#"{"model":"m","messages":[{"role":"user","content":[
                {"type":"text","text":"what is this?"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AA","detail":"low"}}]}]}"#,
        )
        .unwrap();
        let out = serde_json::to_value(&req).unwrap();
        assert_eq!(
            out["messages"][0]["content"][1]["image_url"]["detail"],
            "low"
        );
        assert_eq!(
            req.messages[0].content.as_ref().unwrap().text(),
            "what is this?"
        );
    }
}
