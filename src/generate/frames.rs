//! Splits a provider's streamed body into JSON payloads.
//!
//! Accepts what providers really send: SSE `data:` lines (with or without the space),
//! comments, `event:`/`id:`/`retry:` fields and multi-line events; Infini-AI's bare
//! JSON objects separated by blank lines with no `data:` prefix; `\r\n` line ends;
//! and events not separated by blank lines at all. A payload is released as soon as
//! it is complete JSON, so a provider that forgets the blank line does not make the
//! client wait for the end of the stream.

use std::borrow::Cow;

use serde::de::IgnoredAny;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One payload: a JSON text, possibly several concatenated values.
    Payload(String),
    /// `[DONE]`: the provider says the stream is over.
    Done,
    /// One event grew past [`MAX_EVENT`]: nothing more is read.
    Oversized,
}

/// The largest single event ragway buffers; a whole answer is capped likewise.
pub const MAX_EVENT: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Bytes after the last newline, waiting for the rest of their line.
    partial: Vec<u8>,
    /// The payload being assembled from `data:` lines or bare lines.
    pending: String,
    /// `pending`'s last line ended a JSON value (or said [DONE]): it may be whole.
    may_be_whole: bool,
    oversized: bool,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; complete frames are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        if self.oversized {
            return;
        }
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(newline);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.line(head, out);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.line(&line, out);
            }
        }
        self.partial.extend_from_slice(rest);
        // Nothing more has arrived: a payload that is whole goes now, whether or not
        // its blank line follows later.
        self.release_if_whole(out);
        if self.partial.len() + self.pending.len() > MAX_EVENT {
            self.oversized = true;
            out.push(Frame::Oversized);
        }
    }

    /// The body has ended: releases whatever is left.
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, out);
        }
        self.dispatch(out);
    }

    fn line(&mut self, raw: &[u8], out: &mut Vec<Frame>) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match std::str::from_utf8(raw) {
            Ok(line) => Cow::Borrowed(line),
            Err(_) => String::from_utf8_lossy(raw),
        };
        if line.trim().is_empty() {
            self.dispatch(out);
            return;
        }
        let data = if let Some(data) = line.strip_prefix("data:") {
            data.strip_prefix(' ').unwrap_or(data)
        } else if line.starts_with(':')
            || line.starts_with("event:")
            || line.starts_with("id:")
            || line.starts_with("retry:")
        {
            return; // SSE fields that carry no payload
        } else {
            &line // a bare JSON line
        };
        // Events not separated by blank lines: a new line after a whole payload
        // starts the next one.
        self.release_if_whole(out);
        self.append(data);
        // Only a line that ends a JSON value (or says [DONE]) can complete the
        // payload; checking just those keeps a long multi-line event linear, and
        // checking only when no blank line came to end it (see `push`) keeps the
        // usual event to one parse.
        self.may_be_whole = line.trim_end().ends_with(['}', ']']);
    }

    fn release_if_whole(&mut self, out: &mut Vec<Frame>) {
        if self.may_be_whole && self.pending_is_complete() {
            self.dispatch(out);
        }
        self.may_be_whole = false;
    }

    fn append(&mut self, text: &str) {
        if !self.pending.is_empty() {
            self.pending.push('\n');
        }
        self.pending.push_str(text);
    }

    fn pending_is_complete(&self) -> bool {
        if self.pending.len() > MAX_EVENT {
            return false; // reported as oversized by `push`
        }
        let text = self.pending.trim();
        if text == "[DONE]" {
            return true;
        }
        let mut values = serde_json::Deserializer::from_str(text).into_iter::<IgnoredAny>();
        let mut any = false;
        for value in values.by_ref() {
            if value.is_err() {
                return false;
            }
            any = true;
        }
        any
    }

    fn dispatch(&mut self, out: &mut Vec<Frame>) {
        let text = self.pending.trim();
        if text == "[DONE]" {
            out.push(Frame::Done);
        } else if !text.is_empty() {
            out.push(Frame::Payload(text.to_owned()));
        }
        self.pending.clear();
        self.may_be_whole = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(body: &str, piece: usize) -> Vec<Frame> {
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        for chunk in body.as_bytes().chunks(piece) {
            decoder.push(chunk, &mut out);
        }
        decoder.finish(&mut out);
        out
    }

    fn payloads(frames: &[Frame]) -> Vec<&str> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Payload(p) => Some(p.as_str()),
                Frame::Done | Frame::Oversized => None,
            })
            .collect()
    }

    #[test]
    fn sse_with_comments_fields_and_crlf() {
        let body = ": keep-alive\r\nevent: message\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\ndata:{\"a\":2}\n\ndata: [DONE]\n\n";
        for piece in 1..body.len() {
            let frames = decode_in_pieces(body, piece);
            assert_eq!(
                payloads(&frames),
                ["{\"a\":1}", "{\"a\":2}"],
                "piece {piece}"
            );
            assert_eq!(frames.last(), Some(&Frame::Done));
        }
    }

    #[test]
    fn multi_line_data_is_joined() {
        let frames = decode_in_pieces("data: {\"a\":\ndata: 1}\n\n", 3);
        assert_eq!(payloads(&frames), ["{\"a\":\n1}"]);
    }

    #[test]
    fn bare_json_objects_separated_by_blank_lines() {
        let body =
            "{\"choices\":[]}\n\n{\"choices\":[],\n \"object\":\"chat.completion.chunk\"}\n\n";
        let frames = decode_in_pieces(body, 5);
        assert_eq!(frames.len(), 2);
        assert!(!frames.contains(&Frame::Done));
    }

    #[test]
    fn events_without_blank_lines_are_released_at_once() {
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        decoder.push(b"data: {\"a\":1}\ndata: {\"a\":2}\n", &mut out);
        assert_eq!(out.len(), 2, "released before the stream ends");
    }

    #[test]
    fn an_endless_event_stops_the_stream() {
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        let line = vec![b'x'; 1024 * 1024];
        for _ in 0..17 {
            decoder.push(&line, &mut out);
        }
        assert_eq!(out, [Frame::Oversized]);
    }

    #[test]
    fn a_last_line_without_newline_is_kept() {
        let frames = decode_in_pieces("data: {\"a\":1}", 4);
        assert_eq!(payloads(&frames), ["{\"a\":1}"]);
    }

    #[test]
    fn malformed_payload_is_passed_on_for_the_caller_to_judge() {
        let frames = decode_in_pieces("data: {\"a\":\n\ndata: [DONE]\n\n", 2);
        assert_eq!(frames, [Frame::Payload("{\"a\":".into()), Frame::Done]);
    }
}
