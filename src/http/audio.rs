//! OpenAI's audio endpoints, mapped onto the seed provider's speech targets where
//! the shapes allow: `POST /v1/audio/speech` onto an alias of kind `tts`
//! (answered with the audio itself), `POST /v1/audio/transcriptions` (an upload)
//! onto an alias of kind `asr`, the file sent inline. What the targets cannot
//! honour is refused by name.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::body::{invalid, only_known, parse_json};
use super::chat::Called;
use super::voice::{
    MAX_INLINE_AUDIO, MAX_SPOKEN_CHARS, model, passed, read_tts, recognised, recognition,
    spoken_audio,
};
use crate::error::GatewayError;
use crate::generate::ModelKind;
use crate::pipeline::PassThrough;
use crate::state::AppState;

/// `POST /v1/audio/speech` (OpenAI's): `input` spoken in `voice` by a tts
/// alias's targets, in Qiniu's shape (`voice` is the provider's voice type);
/// the answer is the audio itself, as `response_format` names it.
pub async fn speech(
    State(state): State<AppState>,
    called: Called,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let asked = parse_json(&headers, body, state.config.server.max_body_bytes);
    let ((model, call), mime) = match asked.and_then(read_speech) {
        Ok(read) => read,
        Err(error) => return error.into_response(),
    };
    passed(&state, called, model, ModelKind::Tts, call, |answer| {
        let audio = spoken_audio(&answer).unwrap_or_default();
        ([(axum::http::header::CONTENT_TYPE, mime)], audio).into_response()
    })
    .await
}

/// OpenAI's speech request as Qiniu's: `voice` its voice type, `response_format`
/// its encoding, `speed` its speed ratio. Also the answer's content type.
fn read_speech(
    asked: Map<String, Value>,
) -> Result<((String, PassThrough), &'static str), GatewayError> {
    only_known(
        &asked,
        &[
            "model",
            "input",
            "voice",
            "response_format",
            "speed",
            "instructions",
            "stream_format",
        ],
        "a speech request",
    )?;
    if asked.get("instructions").is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            "instructions",
            "`instructions` is not taken: the voice type sets the voice",
        ));
    }
    if asked
        .get("stream_format")
        .is_some_and(|f| !f.is_null() && f != "audio")
    {
        return Err(invalid(
            "stream_format",
            "`stream_format` is \"audio\": the answer is the audio file",
        ));
    }
    let model = model(&asked)?;
    let input = asked
        .get("input")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| invalid("input", "`input` is required: the text to speak"))?;
    if input.chars().count() > MAX_SPOKEN_CHARS {
        return Err(invalid(
            "input",
            format!("`input` is at most {MAX_SPOKEN_CHARS} characters"),
        ));
    }
    let voice = match asked.get("voice") {
        Some(Value::String(voice)) => Some(voice.as_str()),
        Some(Value::Object(custom)) => custom.get("id").and_then(Value::as_str),
        _ => None,
    }
    .filter(|v| !v.is_empty())
    .ok_or_else(|| invalid("voice", "`voice` is required: the provider's voice type"))?;
    let (encoding, mime) = match asked.get("response_format").and_then(Value::as_str) {
        None | Some("mp3") => ("mp3", "audio/mpeg"),
        Some("wav") => ("wav", "audio/wav"),
        Some("pcm") => ("pcm", "audio/pcm"),
        Some("opus") => ("ogg_opus", "audio/ogg"),
        Some(_) => {
            return Err(invalid(
                "response_format",
                "`response_format` is mp3, wav, pcm or opus here",
            ));
        }
    };
    let speed = match asked.get("speed") {
        None | Some(Value::Null) => 1.0,
        Some(speed) => speed
            .as_f64()
            .filter(|s| (0.25..=3.0).contains(s))
            .ok_or_else(|| invalid("speed", "`speed` is a number from 0.25 to 3 here"))?,
    };
    let qiniu = [
        ("model", json!(model)),
        (
            "audio",
            json!({"voice_type": voice, "encoding": encoding, "speed_ratio": speed}),
        ),
        ("request", json!({"text": input})),
    ];
    let qiniu = qiniu.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Ok((read_tts(qiniu)?, mime))
}

/// `POST /v1/audio/transcriptions` (OpenAI's): the uploaded `file` recognised by
/// an asr alias's targets, sent inline in Qiniu's shape; `{"text"}` (with the
/// audio's duration as usage) or, for `response_format=text`, the text alone.
pub async fn transcriptions(
    State(state): State<AppState>,
    called: Called,
    upload: Result<Multipart, MultipartRejection>,
) -> Response {
    let asked = match upload {
        Ok(upload) => read_transcription(upload).await,
        Err(error) => Err(GatewayError::invalid(
            format!(
                "a transcription is multipart/form-data: {}",
                error.body_text()
            ),
            None,
        )),
    };
    let (model, call, as_text) = match asked {
        Ok(asked) => asked,
        Err(error) => return error.into_response(),
    };
    passed(&state, called, model, ModelKind::Asr, call, move |answer| {
        let text = recognised(&answer).unwrap_or_default().to_owned();
        if as_text {
            return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
        }
        let mut body = json!({"text": text});
        if let Some(ms) = answer
            .pointer("/data/audio_info/duration")
            .and_then(Value::as_f64)
        {
            body["usage"] = json!({"type": "duration", "seconds": (ms / 1000.0).ceil()});
        }
        axum::Json(body).into_response()
    })
    .await
}

/// The upload's parts: `file` (its name's extension gives the format), `model`,
/// `response_format` (`json` or `text`); the rest OpenAI defines is refused by
/// name, as the recogniser cannot honour it.
async fn read_transcription(
    mut upload: Multipart,
) -> Result<(String, PassThrough, bool), GatewayError> {
    let unreadable = |e: MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => GatewayError::PayloadTooLarge {
            limit: MAX_INLINE_AUDIO,
        },
        _ if super::limits::timed_out(&e) => GatewayError::RequestTimeout,
        _ => GatewayError::invalid(format!("cannot read the upload: {}", e.body_text()), None),
    };
    let mut asked = Map::new();
    let mut file = None;
    let mut as_text = false;
    while let Some(part) = upload.next_field().await.map_err(unreadable)? {
        let name = part.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                let format = audio_format(part.file_name().unwrap_or_default())?;
                let audio = part.bytes().await.map_err(unreadable)?;
                file = Some((format, audio));
            }
            "model" => {
                asked.insert(name, Value::String(part.text().await.map_err(unreadable)?));
            }
            "response_format" => match part.text().await.map_err(unreadable)?.as_str() {
                "json" => as_text = false,
                "text" => as_text = true,
                _ => {
                    return Err(invalid(
                        "response_format",
                        "`response_format` is json or text here: the recogniser gives no timings",
                    ));
                }
            },
            "stream" => {
                if part.text().await.map_err(unreadable)? != "false" {
                    return Err(invalid(
                        "stream",
                        "`stream` is false here: the text comes whole",
                    ));
                }
            }
            other => {
                return Err(invalid(
                    other,
                    format!("`{other}` is not taken: the recogniser has no such setting"),
                ));
            }
        }
    }
    let Some((format, audio)) = file else {
        return Err(invalid("file", "the upload has no `file` part"));
    };
    if audio.len() > MAX_INLINE_AUDIO {
        return Err(GatewayError::PayloadTooLarge {
            limit: MAX_INLINE_AUDIO,
        });
    }
    let model = model(&asked)?;
    // Encoded here from the upload: base64 by construction, its size known.
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(&audio);
    let summary = json!({"audio": {"format": format, "bytes": audio.len()}});
    let mut call = recognition(&model, json!({"format": format, "data": data}), summary);
    // OpenAI's answer is the text: an answer without one is a failed attempt.
    call.accept = |answer| match recognised(answer) {
        Some(_) => Ok(()),
        None => Err("a recognition answer without text (`data.result.text`)".to_owned()),
    };
    Ok((model, call, as_text))
}

/// The recogniser's format for an uploaded file, by its extension.
fn audio_format(file_name: &str) -> Result<&'static str, GatewayError> {
    let extension = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "wav" => Ok("wav"),
        "mp3" => Ok("mp3"),
        "ogg" | "opus" => Ok("ogg"),
        "pcm" | "raw" => Ok("raw"),
        _ => Err(invalid(
            "file",
            "the file's name ends in .wav, .mp3, .ogg, .opus, .pcm or .raw: the formats the recogniser takes",
        )),
    }
}
