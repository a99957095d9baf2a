//! A provider's streamed body as a stream of chunks that tells a finished answer
//! from a cut one.
//!
//! The stream ends cleanly after `[DONE]`, or when the body closes after a chunk
//! with a finish reason for every choice asked for (Infini-AI never sends `[DONE]`). A body that closes with
//! neither yields [`UpstreamError::Truncated`]; a malformed chunk or an error object
//! yields an error and ends the stream. `"blocked": true` (moderation) becomes
//! `finish_reason: "content_filter"`, and nothing after it is read.

use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::error::UpstreamError;
use super::frames::{Frame, FrameDecoder};
use crate::wire::{ChatChunk, ChunkChoice};

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, UpstreamError>> + Send>>;

/// Wraps a body's byte stream; `choices` is the request's `n`.
pub fn chunk_stream<S, E>(body: S, choices: u32) -> ChunkStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let reader = ChunkReader {
        body: Box::pin(body),
        decoder: FrameDecoder::new(),
        ready: VecDeque::new(),
        choices: choices.max(1) as usize,
        finished: BTreeSet::new(),
        closed: false,
    };
    Box::pin(futures_util::stream::unfold(
        reader,
        |mut reader| async move {
            let item = reader.next_item().await?;
            Some((item, reader))
        },
    ))
}

struct ChunkReader<S> {
    body: Pin<Box<S>>,
    decoder: FrameDecoder,
    ready: VecDeque<Result<ChatChunk, UpstreamError>>,
    /// Choices the answer holds.
    choices: usize,
    /// The choices whose finish reason has been seen.
    finished: BTreeSet<u32>,
    /// Nothing more is read from the body.
    closed: bool,
}

impl<S, E> ChunkReader<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    async fn next_item(&mut self) -> Option<Result<ChatChunk, UpstreamError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.closed {
                return None;
            }
            let mut frames = Vec::new();
            match self.body.next().await {
                Some(Ok(bytes)) => self.decoder.push(&bytes, &mut frames),
                Some(Err(e)) => {
                    self.fail(UpstreamError::Interrupted(e.to_string()));
                    continue;
                }
                None => {
                    self.decoder.finish(&mut frames);
                    self.take_frames(frames);
                    if !self.closed && !self.finished() {
                        self.ready.push_back(Err(UpstreamError::Truncated));
                    }
                    self.closed = true;
                    continue;
                }
            }
            self.take_frames(frames);
        }
    }

    fn take_frames(&mut self, frames: Vec<Frame>) {
        for frame in frames {
            if self.closed {
                return;
            }
            match frame {
                Frame::Done => self.closed = true,
                Frame::Oversized => self.fail(UpstreamError::Protocol(format!(
                    "a stream event larger than {} bytes",
                    super::frames::MAX_EVENT
                ))),
                Frame::Payload(text) => {
                    for value in serde_json::Deserializer::from_str(&text).into_iter::<ChatChunk>()
                    {
                        match value {
                            Ok(chunk) => self.take_chunk(chunk),
                            Err(e) => self.fail(UpstreamError::Protocol(format!(
                                "malformed stream chunk: {e}"
                            ))),
                        }
                        if self.closed {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn take_chunk(&mut self, mut chunk: ChatChunk) {
        whole_answer_as_delta(&mut chunk);
        if let Some(error) = chunk.extra.remove("error").filter(|e| !e.is_null()) {
            return self.fail(UpstreamError::in_body(200, error));
        }
        if take_blocked(&mut chunk) {
            mark_content_filter(&mut chunk);
            self.ready.push_back(Ok(chunk));
            self.closed = true;
            return;
        }
        for choice in chunk.choices.iter().filter(|c| c.finish_reason.is_some()) {
            self.finished.insert(choice.index);
        }
        self.ready.push_back(Ok(chunk));
    }

    /// Every choice has its finish reason: the answer is whole.
    fn finished(&self) -> bool {
        self.finished.len() >= self.choices
    }

    /// Ends the stream with `error` — unless the answer already finished, in which
    /// case what follows (a broken connection while waiting for `[DONE]`, a bad
    /// trailing chunk) cannot unfinish it.
    fn fail(&mut self, error: UpstreamError) {
        if !self.finished() {
            self.ready.push_back(Err(error));
        }
        self.closed = true;
    }
}

/// Some servers answer a stream request with one whole `chat.completion`: its
/// `message` becomes the chunk's delta (tool calls numbered, as deltas carry them).
fn whole_answer_as_delta(chunk: &mut ChatChunk) {
    for choice in &mut chunk.choices {
        let Some(mut message) = choice.extra.remove("message") else {
            continue;
        };
        if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
            for (index, call) in calls.iter_mut().enumerate() {
                if let Some(call) = call.as_object_mut() {
                    call.entry("index").or_insert(Value::from(index));
                }
            }
        }
        choice.delta = serde_json::from_value(message).unwrap_or_default();
    }
}

/// Removes Infini-AI's moderation flag (top level or per choice); true if it was set.
pub fn take_blocked(chunk: &mut ChatChunk) -> bool {
    let mut blocked = is_true(chunk.extra.remove("blocked"));
    for choice in &mut chunk.choices {
        blocked |= is_true(choice.extra.remove("blocked"));
    }
    blocked
}

pub(super) fn is_true(value: Option<Value>) -> bool {
    matches!(value, Some(Value::Bool(true)))
}

fn mark_content_filter(chunk: &mut ChatChunk) {
    if chunk.choices.is_empty() {
        chunk.choices.push(ChunkChoice::default());
    }
    for choice in &mut chunk.choices {
        choice.finish_reason = Some("content_filter".to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: &'static str) -> Vec<Result<ChatChunk, UpstreamError>> {
        let pieces: Vec<Result<Bytes, std::io::Error>> = body
            .as_bytes()
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        chunk_stream(futures_util::stream::iter(pieces), 1)
            .collect()
            .await
    }

    fn text(items: &[Result<ChatChunk, UpstreamError>]) -> String {
        items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .flat_map(|c| c.choices.iter())
            .filter_map(|c| c.delta.content.clone())
            .collect()
    }

    #[tokio::test]
    async fn done_ends_cleanly_and_later_bytes_are_ignored() {
        let items = collect(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\ndata: junk\n\n",
        )
        .await;
        assert_eq!(items.len(), 1);
        assert_eq!(text(&items), "Hi");
    }

    #[tokio::test]
    async fn finish_without_done_is_complete() {
        let items = collect(
            "{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"object\":\"chat.completion.chunk\",\"created\":1}\n\n",
        )
        .await;
        assert!(items.iter().all(Result::is_ok));
        assert_eq!(items.len(), 2);
    }

    #[tokio::test]
    async fn a_cut_stream_is_truncated() {
        let items = collect("data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n").await;
        assert!(matches!(items.last(), Some(Err(UpstreamError::Truncated))));
    }

    #[tokio::test]
    async fn trouble_after_the_finish_chunk_does_not_unfinish_the_answer() {
        let items = collect(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: {oops}\n\n",
        )
        .await;
        assert_eq!(items.len(), 1);
        assert!(items[0].is_ok());
    }

    #[tokio::test]
    async fn malformed_chunk_fails_and_ends() {
        let items = collect(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {oops}\n\ndata: {\"choices\":[]}\n\n",
        )
        .await;
        assert_eq!(items.len(), 2);
        assert!(matches!(items[1], Err(UpstreamError::Protocol(_))));
    }

    #[tokio::test]
    async fn blocked_becomes_content_filter() {
        let items = collect(
            "{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n{\"choices\":[{\"delta\":{}}],\"blocked\":true}\n\n{\"choices\":[{\"delta\":{\"content\":\"more\"}}]}\n\n",
        )
        .await;
        assert_eq!(items.len(), 2);
        let last = items[1].as_ref().unwrap();
        assert_eq!(
            last.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
        assert!(!last.extra.contains_key("blocked"));
        assert_eq!(text(&items), "Hi");
    }

    #[tokio::test]
    async fn a_whole_completion_in_answer_to_a_stream_request_is_read() {
        let items = collect(
            "{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hi there\"},\"finish_reason\":\"stop\"}]}",
        )
        .await;
        assert_eq!(items.len(), 1);
        assert_eq!(text(&items), "Hi there");
    }

    #[tokio::test]
    async fn an_error_object_mid_stream_is_typed() {
        let items =
            collect("data: {\"error\":{\"message\":\"model timeout\",\"code\":50003}}\n\n").await;
        match &items[0] {
            Err(UpstreamError::Status { detail, .. }) => {
                assert_eq!(detail.code.as_deref(), Some("50003"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
