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
use crate::pipeline::{PassThrough, RequestCtx};
use crate::state::AppState;

/// The audio formats speech recognition takes.
const AUDIO_FORMATS: &[&str] = &["raw", "wav", "mp3", "ogg"];
/// The longest text one speech synthesis may speak, in characters.
const MAX_SPOKEN_CHARS: usize = 10_000;

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
    let (model, call) =
        match parse_json(headers, body, state.config.server.max_body_bytes).and_then(read) {
            Ok(read) => read,
            Err(error) => return error.into_response(),
        };
    passed(&state, called, model, kind, call, |answer| {
        Json(answer).into_response()
    })
    .await
}

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

/// Passes `call` through to alias `model`'s targets (of `kind`); the answer as
/// `reply` makes it.
async fn passed(
    state: &AppState,
    called: Called,
    model: String,
    kind: ModelKind,
    call: PassThrough,
    reply: impl FnOnce(Value) -> Response,
) -> Response {
    let Called {
        caller,
        request_id,
        origin,
        started,
    } = called;
    let route = match route_of(state, &caller, model, kind) {
        Ok(route) => route,
        Err(error) => return error.into_response(),
    };
    let alias = route.alias.clone();
    let mut ctx = RequestCtx::answered_whole(request_id, caller, route, started);
    if let Some(origin) = origin {
        ctx.origin = origin;
    }
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

fn model(asked: &Map<String, Value>) -> Result<String, GatewayError> {
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

/// `{"model", "audio": {"format", "url"}}`; the answer's `data.result.text`.
fn read_asr(asked: Map<String, Value>) -> Result<(String, PassThrough), GatewayError> {
    only_known(&asked, &["model", "audio"], "a speech recognition request")?;
    let model = model(&asked)?;
    let Some(Value::Object(audio)) = asked.get("audio") else {
        return Err(invalid(
            "audio",
            "`audio` is required: {\"format\", \"url\"}",
        ));
    };
    only_known(audio, &["format", "url"], "`audio`")?;
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
    let url = address("audio.url", audio.get("url"))?;
    let call = PassThrough {
        body: json!({"model": model, "audio": {"format": format, "url": url}}),
        spoken: None,
        // The address may name a person: the record keeps its host only.
        summary: json!({"audio": {"format": format, "host": host(&url)}}),
        text_of: |answer| {
            answer
                .pointer("/data/result/text")?
                .as_str()
                .map(str::to_owned)
        },
        accept: |_| Ok(()),
    };
    Ok((model, call))
}

/// `{"model", "audio": {"voice_type", "encoding", "speed_ratio"}, "request": {"text"}}`.
fn read_tts(asked: Map<String, Value>) -> Result<(String, PassThrough), GatewayError> {
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
fn spoken_audio(answer: &Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let data = answer.get("data")?.as_str().filter(|d| !d.is_empty())?;
    base64::engine::general_purpose::STANDARD.decode(data).ok()
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
