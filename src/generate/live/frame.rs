//! The frames of Qiniu's realtime speech recogniser (the binary protocol of its
//! WebSocket on `/v1/voice/asr`): a 4-byte header — version and header size
//! (`0x11`), message type and its flags, serialisation and compression, a
//! reserved byte —, then a signed sequence number where the flags say so, an
//! error code on an error frame, the payload's size and the payload (gzip'd JSON
//! for requests and answers, gzip'd audio for audio frames).

use std::io::Read as _;

use bytes::{BufMut as _, Bytes, BytesMut};
use serde_json::Value;

/// Protocol version 1, a header of one 4-byte word.
const VERSION_AND_SIZE: u8 = 0x11;
/// Flags: a sequence number follows the header.
const HAS_SEQUENCE: u8 = 0b0001;
/// Flags: the last frame of its side.
const LAST: u8 = 0b0010;
const JSON: u8 = 0b0001;
const GZIP: u8 = 0b0001;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The client's opening request (JSON).
    Request,
    /// Audio from the client.
    Audio,
    /// The recogniser's answer so far (JSON).
    Answer,
    /// The recogniser acknowledging audio.
    Ack,
    /// The recogniser's error: a code and a message.
    Error,
}

impl Kind {
    fn bits(self) -> u8 {
        match self {
            Kind::Request => 0b0001,
            Kind::Audio => 0b0010,
            Kind::Answer => 0b1001,
            Kind::Ack => 0b1011,
            Kind::Error => 0b1111,
        }
    }

    fn from_bits(bits: u8) -> Option<Kind> {
        [
            Kind::Request,
            Kind::Audio,
            Kind::Answer,
            Kind::Ack,
            Kind::Error,
        ]
        .into_iter()
        .find(|k| k.bits() == bits)
    }
}

/// One frame, its payload borrowed from the message that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: Kind,
    /// The low four bits of the second byte (sequence present, last frame).
    pub flags: u8,
    pub json: bool,
    pub gzip: bool,
    pub sequence: Option<i32>,
    /// An error frame's code.
    pub code: Option<u32>,
    pub payload: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("the frame is shorter than its header says")]
    Short,
    #[error("not a version 1 frame")]
    Version,
    #[error("unknown message type {0}")]
    Kind(u8),
    #[error("the payload size does not match the frame")]
    Size,
    #[error("the payload is not gzip'd JSON within {0} bytes")]
    Payload(usize),
}

impl<'a> Frame<'a> {
    /// Reads one WebSocket message as a frame; the payload must fill the rest.
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let header = bytes.get(..4).ok_or(FrameError::Short)?;
        if header[0] >> 4 != 1 {
            return Err(FrameError::Version);
        }
        let header_len = usize::from(header[0] & 0x0f) * 4;
        let kind = Kind::from_bits(header[1] >> 4).ok_or(FrameError::Kind(header[1] >> 4))?;
        let flags = header[1] & 0x0f;
        let mut rest = bytes.get(header_len.max(4)..).ok_or(FrameError::Short)?;
        let mut word = || -> Result<[u8; 4], FrameError> {
            let (head, tail) = rest.split_first_chunk::<4>().ok_or(FrameError::Short)?;
            rest = tail;
            Ok(*head)
        };
        let sequence = match flags & HAS_SEQUENCE != 0 {
            true => Some(i32::from_be_bytes(word()?)),
            false => None,
        };
        let code = match kind {
            Kind::Error => Some(u32::from_be_bytes(word()?)),
            _ => None,
        };
        let size = u32::from_be_bytes(word()?);
        if usize::try_from(size).ok() != Some(rest.len()) {
            return Err(FrameError::Size);
        }
        Ok(Frame {
            kind,
            flags,
            json: header[2] >> 4 == JSON,
            gzip: header[2] & 0x0f == GZIP,
            sequence,
            code,
            payload: rest,
        })
    }

    /// The last frame its side sends.
    pub fn is_last(&self) -> bool {
        self.flags & LAST != 0
    }

    /// The payload as JSON, unzipped where the header says gzip; at most `limit`
    /// bytes once unzipped (a small frame may unzip to a great deal).
    pub fn json(&self, limit: usize) -> Result<Value, FrameError> {
        let text = match self.gzip {
            true => gunzip(self.payload, limit)?,
            false if self.payload.len() <= limit => self.payload.to_vec(),
            false => return Err(FrameError::Payload(limit)),
        };
        serde_json::from_slice(&text).map_err(|_| FrameError::Payload(limit))
    }

    /// A frame of gzip'd JSON.
    pub fn encode_json(
        kind: Kind,
        flags: u8,
        sequence: Option<i32>,
        code: Option<u32>,
        value: &Value,
    ) -> Bytes {
        let payload = gzip(value.to_string().as_bytes());
        Frame {
            kind,
            flags,
            json: true,
            gzip: true,
            sequence,
            code,
            payload: &payload,
        }
        .encode()
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(16 + self.payload.len());
        out.put_u8(VERSION_AND_SIZE);
        let flags = match self.sequence {
            Some(_) => self.flags | HAS_SEQUENCE,
            None => self.flags & !HAS_SEQUENCE,
        };
        out.put_u8((self.kind.bits() << 4) | flags);
        out.put_u8((u8::from(self.json) << 4) | u8::from(self.gzip));
        out.put_u8(0);
        if let Some(sequence) = self.sequence {
            out.put_i32(sequence);
        }
        if let Some(code) = self.code {
            out.put_u32(code);
        }
        // A WebSocket message is capped well below 4 GiB.
        out.put_u32(u32::try_from(self.payload.len()).unwrap_or(u32::MAX));
        out.put_slice(self.payload);
        out.freeze()
    }
}

/// The recognised text in an answer's JSON: `result.text`, or the first
/// result's where `result` is a list.
pub fn answer_text(answer: &Value) -> Option<&str> {
    let result = answer.get("result")?;
    let result = match result {
        Value::Array(results) => results.first()?,
        one => one,
    };
    result.get("text")?.as_str()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// `bytes` unzipped, refused past `limit`.
pub fn gunzip(bytes: &[u8], limit: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::GzDecoder::new(bytes)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|_| FrameError::Payload(limit))?;
    match out.len() > limit {
        true => Err(FrameError::Payload(limit)),
        false => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_frame_reads_back_as_written() {
        let request = json!({"request": {"model_name": "asr"}});
        let bytes = Frame::encode_json(Kind::Request, 0, Some(1), None, &request);
        assert_eq!(&bytes[..4], &[0x11, 0x11, 0x11, 0x00]);
        let frame = Frame::parse(&bytes).unwrap();
        assert_eq!(
            (frame.kind, frame.sequence, frame.is_last()),
            (Kind::Request, Some(1), false)
        );
        assert_eq!(frame.json(1024).unwrap(), request);
    }

    #[test]
    fn the_last_audio_frame_carries_a_negative_sequence() {
        let audio = gzip(&[0u8; 640]);
        let bytes = Frame {
            kind: Kind::Audio,
            flags: LAST,
            json: false,
            gzip: true,
            sequence: Some(-7),
            code: None,
            payload: &audio,
        }
        .encode();
        assert_eq!(bytes[1], 0x23);
        let frame = Frame::parse(&bytes).unwrap();
        assert_eq!(
            (frame.kind, frame.sequence, frame.is_last()),
            (Kind::Audio, Some(-7), true)
        );
        assert_eq!(frame.payload, audio.as_slice());
    }

    #[test]
    fn an_error_frame_has_its_code_before_the_size() {
        let bytes = Frame::encode_json(Kind::Error, 0, None, Some(45_000_001), &json!({"m": 1}));
        let frame = Frame::parse(&bytes).unwrap();
        assert_eq!(
            (frame.kind, frame.code, frame.sequence),
            (Kind::Error, Some(45_000_001), None)
        );
    }

    #[test]
    fn broken_frames_are_named() {
        assert_eq!(Frame::parse(&[0x11, 0x20]), Err(FrameError::Short));
        assert_eq!(
            Frame::parse(&[0x21, 0x20, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::Version)
        );
        assert_eq!(
            Frame::parse(&[0x11, 0x50, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::Kind(5))
        );
        // Says 9 bytes, carries 2.
        assert_eq!(
            Frame::parse(&[0x11, 0x20, 0, 0, 0, 0, 0, 9, 1, 2]),
            Err(FrameError::Size)
        );
    }

    #[test]
    fn a_payload_that_unzips_past_the_limit_is_refused() {
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        let bytes = Frame {
            kind: Kind::Request,
            flags: 0,
            json: true,
            gzip: true,
            sequence: None,
            code: None,
            payload: &bomb,
        }
        .encode();
        let frame = Frame::parse(&bytes).unwrap();
        assert_eq!(frame.json(64 * 1024), Err(FrameError::Payload(64 * 1024)));
    }

    #[test]
    fn the_text_is_read_from_either_shape_of_result() {
        assert_eq!(answer_text(&json!({"result": {"text": "a"}})), Some("a"));
        assert_eq!(answer_text(&json!({"result": [{"text": "b"}]})), Some("b"));
        assert_eq!(answer_text(&json!({"audio_info": {}})), None);
    }
}
