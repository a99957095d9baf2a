//! The chat pipeline's stream frames, read back by the dialects that retell them
//! (`/v1/responses`, `/v1/messages`): typed and borrowed from the frame, so that
//! reading one builds no JSON tree (the retelling is on every streamed chunk).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::wire::Usage;

/// One frame of the pipeline's stream.
pub(super) enum Frame<'a> {
    Chunk(Box<Chunk<'a>>),
    /// `data: [DONE]`: the answer is whole.
    Done,
    /// Not a chunk (no such frame is written; skipped if one were).
    Other,
}

impl<'a> Frame<'a> {
    pub(super) fn read(frame: &'a [u8]) -> Frame<'a> {
        let data = frame
            .strip_prefix(b"data: ")
            .and_then(|d| d.strip_suffix(b"\n\n"))
            .unwrap_or_default();
        if data == b"[DONE]" {
            return Frame::Done;
        }
        match serde_json::from_slice(data) {
            Ok(chunk) => Frame::Chunk(Box::new(chunk)),
            Err(_) => Frame::Other,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Chunk<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// ragway's own: the citations, on the last chunk.
    #[serde(borrow, default)]
    pub ragway: Option<&'a RawValue>,
    /// An answer broken off upstream, told in band.
    #[serde(borrow, default)]
    pub error: Option<Broken<'a>>,
}

impl<'a> Chunk<'a> {
    /// The first choice (the dialects that retell streams have one).
    pub fn choice(&self) -> Option<&Choice<'a>> {
        self.choices.as_ref()?.first()
    }
}

#[derive(Deserialize)]
pub(super) struct Choice<'a> {
    #[serde(borrow, default)]
    pub delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    pub finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct Delta<'a> {
    #[serde(borrow, default)]
    pub content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize)]
pub(super) struct ToolCall<'a> {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub function: Option<Function<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Function<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct Broken<'a> {
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
}

impl Delta<'_> {
    /// Its text, when it holds some.
    pub fn text(&self) -> Option<&str> {
        self.content.as_deref().filter(|t| !t.is_empty())
    }
}

impl ToolCall<'_> {
    pub fn name(&self) -> &str {
        self.function
            .as_ref()
            .and_then(|f| f.name.as_deref())
            .unwrap_or_default()
    }

    pub fn arguments(&self) -> Option<&str> {
        self.function
            .as_ref()
            .and_then(|f| f.arguments.as_deref())
            .filter(|a| !a.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_as_the_pipeline_writes_them() {
        let text = br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"a\"b","tool_calls":[{"index":1,"id":"c","function":{"name":"f","arguments":"{}"}}]},"finish_reason":null}],"usage":null,"ragway":{"citations":[]}}

"#;
        let Frame::Chunk(chunk) = Frame::read(text) else {
            panic!("not read")
        };
        let delta = chunk.choice().unwrap().delta.as_ref().unwrap();
        assert_eq!(delta.text(), Some("a\"b"));
        let call = &delta.tool_calls.as_ref().unwrap()[0];
        assert_eq!(
            (call.index, call.name(), call.arguments()),
            (Some(1), "f", Some("{}"))
        );
        assert_eq!(chunk.ragway.unwrap().get(), r#"{"citations":[]}"#);
        assert!(matches!(Frame::read(b"data: [DONE]\n\n"), Frame::Done));
        let broken = br#"data: {"error":{"message":"cut","type":"server_error"}}

"#;
        let Frame::Chunk(chunk) = Frame::read(broken) else {
            panic!("not read")
        };
        assert_eq!(chunk.error.unwrap().message.as_deref(), Some("cut"));
    }
}
