//! The seed provider's speech and OCR endpoints, in its own shapes:
//! `POST /v1/voice/asr` (speech to text), `POST /v1/voice/tts` (text to speech)
//! and `POST /v1/images/ocr` (text in an image or PDF). Each names an alias of
//! that kind (`[models.X] kind = "asr" | "tts" | "ocr"`) and is passed through to
//! its targets ([`crate::pipeline::Pipeline::pass_through`]); the answer is the
//! provider's own.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::body::{invalid, only_known, parse_json};
use super::chat::{Called, recorded};
use crate::error::GatewayError;
use crate::generate::ModelKind;
use crate::pipeline::PassThrough;
use crate::state::AppState;

/// The audio formats speech recognition takes.
const AUDIO_FORMATS: &[&str] = &["raw", "wav", "mp3", "ogg"];
/// The longest text one speech synthesis may speak, in characters.
pub(super) const MAX_SPOKEN_CHARS: usize = 10_000;

pub async fn asr(
    state: State<AppState>,
    called: Called,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    relay(state, called, &headers, body, ModelKind::Asr, read_asr).await
}

pub async fn tts(
    state: State<AppState>,
    called: Called,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    relay(state, called, &headers, body, ModelKind::Tts, read_tts).await
}

pub async fn ocr(
    state: State<AppState>,
    called: Called,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    relay(state, called, &headers, body, ModelKind::Ocr, read_ocr).await
}

/// A request checked: its alias, and the call to pass through.
type Read = fn(Map<String, Value>) -> Result<(String, PassThrough), GatewayError>;

async fn relay(
    State(state): State<AppState>,
    called: Called,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    kind: ModelKind,
    read: Read,
) -> Response {
    // Recognition may carry its audio inline.
    let limit = match kind {
        ModelKind::Asr => audio_body_limit(state.config.server.max_body_bytes),
        _ => state.config.server.max_body_bytes,
    };
    let (model, call) = match parse_json(headers, body, limit).and_then(read) {
        Ok(read) => read,
        Err(error) => return error.into_response(),
    };
    passed(&state, called, model, kind, call, |answer| {
        Json(answer).into_response()
    })
    .await
}

/// Passes `call` through to alias `model`'s targets (of `kind`); the answer as
/// `reply` makes it.
pub(super) async fn passed(
    state: &AppState,
    called: Called,
    model: String,
    kind: ModelKind,
    call: PassThrough,
    reply: impl FnOnce(Value) -> Response,
) -> Response {
    let route = match route_of(state, &called.caller, model, kind) {
        Ok(route) => route,
        Err(error) => return error.into_response(),
    };
    let alias = route.alias.clone();
    let ctx = called.context(route);
    match state.pipeline.pass_through(ctx, call).await {
        Ok((target, answer, headroom)) => {
            let mut response = reply(answer);
            super::error::put_headroom(response.headers_mut(), &headroom);
            recorded(response, alias, Some((target, 1)))
        }
        Err(error) => recorded(error.into_response(), alias, None),
    }
}

/// The route of alias `model`, which the caller may use and which is of `kind`.
pub(super) fn route_of(
    state: &AppState,
    caller: &crate::call::Caller,
    model: String,
    kind: ModelKind,
) -> Result<std::sync::Arc<crate::generate::Route>, GatewayError> {
    let Some(route) = state
        .routes
        .get(&model)
        .filter(|_| caller.models.allows(&model))
    else {
        return Err(GatewayError::ModelNotFound(model));
    };
    if route.kind != kind {
        let message = format!(
            "`{}` is a {} model, not {}",
            route.alias,
            route.kind.name(),
            kind.name()
        );
        return Err(GatewayError::invalid(message, Some("model".to_owned())));
    }
    Ok(route)
}

pub(super) fn model(asked: &Map<String, Value>) -> Result<String, GatewayError> {
    asked
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| invalid("model", "`model` is required: an alias"))
}

/// A public http(s) address the provider fetches (ragway never does).
fn address(param: &str, value: Option<&Value>) -> Result<String, GatewayError> {
    let text = value
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(param, format!("`{param}` is required: an http(s) URL")))?;
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(text.to_owned())
        }
        _ => Err(invalid(param, format!("`{param}` must be an http(s) URL"))),
    }
}

/// `{"model", "audio": {"format", "url" | "data"}}` (`data`: the audio in
/// base64, at most [`MAX_INLINE_AUDIO`] bytes once decoded); the answer's
/// `data.result.text`.
pub(super) fn read_asr(asked: Map<String, Value>) -> Result<(String, PassThrough), GatewayError> {
    only_known(&asked, &["model", "audio"], "a speech recognition request")?;
    let model = model(&asked)?;
    let Some(Value::Object(audio)) = asked.get("audio") else {
        return Err(invalid(
            "audio",
            "`audio` is required: {\"format\", \"url\" or \"data\"}",
        ));
    };
    only_known(audio, &["format", "url", "data"], "`audio`")?;
    let format = audio
        .get("format")
        .and_then(Value::as_str)
        .filter(|f| AUDIO_FORMATS.contains(f))
        .ok_or_else(|| {
            invalid(
                "audio.format",
                format!("`audio.format` is one of {}", AUDIO_FORMATS.join(", ")),
            )
        })?;
    let (source, summary) = match (audio.get("url"), audio.get("data")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "audio.data",
                "`audio` has a `url` or `data`, not both",
            ));
        }
        (_, Some(data)) => {
            let bytes = inline_audio(data)?;
            (
                json!({"format": format, "data": data}),
                json!({"audio": {"format": format, "bytes": bytes}}),
            )
        }
        (url, None) => {
            let url = address("audio.url", url)?;
            // The address may name a person: the record keeps its host only.
            let summary = json!({"audio": {"format": format, "host": host(&url)}});
            (json!({"format": format, "url": url}), summary)
        }
    };
    Ok((model.clone(), recognition(&model, source, summary)))
}

/// The recognition of `audio` (`{"format", "url" | "data"}`, checked) by alias
/// `model`'s targets; `summary` is what the record keeps of it.
pub(super) fn recognition(model: &str, audio: Value, summary: Value) -> PassThrough {
    PassThrough {
        body: json!({"model": model, "audio": audio}),
        spoken: None,
        summary,
        text_of: |answer| recognised(answer).map(str::to_owned),
        accept: |_| Ok(()),
    }
}

/// The most audio one recognition may carry inline (decoded): ten minutes of
/// 16 kHz, 16-bit mono is 19.2 MB; compress longer recordings or pass a URL.
pub(super) const MAX_INLINE_AUDIO: usize = 16 << 20;

/// The body a request carrying that much audio needs: base64's four bytes per
/// three, and room for the rest.
const AUDIO_BODY_LIMIT: usize = MAX_INLINE_AUDIO / 3 * 4 + (64 << 10);

/// The body limit of a route that takes audio inline: that, or the server's
/// own where it is larger (the router and the handler both hold to it).
pub(super) fn audio_body_limit(max_body_bytes: usize) -> usize {
    AUDIO_BODY_LIMIT.max(max_body_bytes)
}

/// Inline audio: base64 of at most [`MAX_INLINE_AUDIO`] bytes; its size.
fn inline_audio(data: &Value) -> Result<usize, GatewayError> {
    use base64::Engine as _;
    let text = data
        .as_str()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| invalid("audio.data", "`audio.data` is the audio in base64"))?;
    if text.len() > MAX_INLINE_AUDIO / 3 * 4 + 4 {
        return Err(invalid(
            "audio.data",
            format!("`audio.data` holds at most {MAX_INLINE_AUDIO} bytes of audio"),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(|audio| audio.len())
        .map_err(|_| invalid("audio.data", "`audio.data` is not base64"))
}

/// The text a recognition answer holds (`data.result.text`).
pub(super) fn recognised(answer: &Value) -> Option<&str> {
    answer.pointer("/data/result/text")?.as_str()
}

/// `{"model", "audio": {"voice_type", "encoding", "speed_ratio"}, "request": {"text"}}`.
pub(super) fn read_tts(asked: Map<String, Value>) -> Result<(String, PassThrough), GatewayError> {
    only_known(
        &asked,
        &["model", "audio", "request"],
        "a speech synthesis request",
    )?;
    let model = model(&asked)?;
    let Some(Value::Object(audio)) = asked.get("audio") else {
        return Err(invalid(
            "audio",
            "`audio` is required: {\"voice_type\", \"encoding\"}",
        ));
    };
    only_known(audio, &["voice_type", "encoding", "speed_ratio"], "`audio`")?;
    let voice = audio
        .get("voice_type")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            invalid(
                "audio.voice_type",
                "`audio.voice_type` is required (GET /v1/voice/list at the provider)",
            )
        })?;
    let encoding = audio
        .get("encoding")
        .and_then(Value::as_str)
        .filter(|e| ["mp3", "wav", "pcm", "ogg_opus"].contains(e))
        .ok_or_else(|| {
            invalid(
                "audio.encoding",
                "`audio.encoding` is mp3, wav, pcm or ogg_opus",
            )
        })?;
    let speed = match audio.get("speed_ratio") {
        None | Some(Value::Null) => 1.0,
        Some(value) => value
            .as_f64()
            .filter(|s| (0.2..=3.0).contains(s))
            .ok_or_else(|| {
                invalid(
                    "audio.speed_ratio",
                    "`audio.speed_ratio` is a number from 0.2 to 3",
                )
            })?,
    };
    let Some(Value::Object(request)) = asked.get("request") else {
        return Err(invalid("request", "`request` is required: {\"text\"}"));
    };
    only_known(request, &["text"], "`request`")?;
    let text = request
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            invalid(
                "request.text",
                "`request.text` is required: the text to speak",
            )
        })?;
    if text.chars().count() > MAX_SPOKEN_CHARS {
        return Err(invalid(
            "request.text",
            format!("`request.text` is at most {MAX_SPOKEN_CHARS} characters"),
        ));
    }
    let call = PassThrough {
        body: json!({"audio": {"voice_type": voice, "encoding": encoding, "speed_ratio": speed},
            "request": {"text": text}}),
        spoken: Some("/request/text"),
        summary: json!({"audio": {"voice_type": voice, "encoding": encoding, "speed_ratio": speed},
            "chars": text.chars().count()}),
        text_of: |_| None,
        // An answer without audio is a failed attempt: the next target speaks.
        accept: |answer| match spoken_audio(answer) {
            Some(_) => Ok(()),
            None => Err("a speech answer without audio (`data`, base64)".to_owned()),
        },
    };
    Ok((model, call))
}

/// The audio of a speech synthesis answer (`data`, base64).
pub(super) fn spoken_audio(answer: &Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let data = answer.get("data")?.as_str().filter(|d| !d.is_empty())?;
    base64::engine::general_purpose::STANDARD.decode(data).ok()
}

/// `{"model", "url"}`; the answer's `text`.
fn read_ocr(asked: Map<String, Value>) -> Result<(String, PassThrough), GatewayError> {
    only_known(&asked, &["model", "url"], "an OCR request")?;
    let model = model(&asked)?;
    let url = address("url", asked.get("url"))?;
    let call = PassThrough {
        body: json!({"model": model, "url": url}),
        spoken: None,
        summary: json!({"image": {"host": host(&url)}}),
        text_of: |answer| answer.get("text")?.as_str().map(str::to_owned),
        accept: |_| Ok(()),
    };
    Ok((model, call))
}

fn host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}
