//! The realtime speech recogniser: a WebSocket upgrade on `GET /v1/voice/asr`,
//! in Qiniu's binary framing ([`crate::generate::live::frame`]). The key is
//! checked as for any call; the client's opening frame (gzip'd JSON: `user`,
//! `audio`, `request.model_name` naming an alias of kind `asr`) is read and
//! checked here; the session is then the pipeline's
//! ([`crate::pipeline::Pipeline::recognise_live`]). Errors reach the client as
//! an error frame (its code the HTTP status, its payload the OpenAI error
//! object) and a close.

use std::time::Duration;

use async_trait::async_trait;
use axum::Extension;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::body::{invalid, only_known};
use super::chat::Called;
use super::observe::{Recorded, refusal};
use super::server::ConnectionHold;
use crate::error::GatewayError;
use crate::generate::ModelKind;
use crate::generate::live::MAX_MESSAGE;
use crate::generate::live::frame::{Frame, Kind};
use crate::pipeline::{LiveCall, LiveClient, MAX_JSON};
use crate::state::AppState;

/// How long a client has to send its opening frame after the upgrade.
const OPENING_WAIT: Duration = Duration::from_secs(10);
/// The audio formats the recogniser takes.
const FORMATS: &[&str] = &["pcm", "raw", "wav", "mp3", "ogg"];

pub async fn asr(
    State(state): State<AppState>,
    called: Called,
    hold: Option<Extension<ConnectionHold>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return GatewayError::invalid(
            "GET /v1/voice/asr is the realtime recogniser: open it as a WebSocket \
             (POST /v1/voice/asr recognises audio by URL)",
            None,
        )
        .into_response();
    };
    let mut response = upgrade
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| {
            // Shutdown waits for the session's record (it ends the session).
            let tasks = state.tasks().clone();
            tasks.track_future(async move {
                // The connection stays counted against the server's caps while
                // the session lasts.
                let _hold = hold;
                session(state, called, Client { socket }).await;
            })
        });
    // The session records itself.
    response.extensions_mut().insert(Recorded);
    response
}

async fn session(state: AppState, called: Called, mut client: Client) {
    let opening = match tokio::time::timeout(OPENING_WAIT, client.next()).await {
        Ok(Some(Ok(message))) => read_opening(&message),
        Ok(Some(Err(what))) => Err(GatewayError::invalid(what, None)),
        Ok(None) => return refused(&state, &called, 499, None),
        Err(_) => Err(GatewayError::RequestTimeout),
    };
    let routed = opening.and_then(|(model, call)| {
        super::voice::route_of(&state, &called.caller, model, ModelKind::Asr)
            .map(|route| (route, call))
    });
    let (route, call) = match routed {
        Ok(routed) => routed,
        Err(error) => {
            client.end(Some(&error)).await;
            return refused(&state, &called, error.status(), Some(error.code()));
        }
    };
    let mut ctx = called.context(route);
    ctx.stream = true;
    state
        .pipeline
        .recognise_live(ctx, call, &mut client, &state.shutdown)
        .await;
}

/// The record of a session refused before it had a model to go to.
fn refused(state: &AppState, called: &Called, status: u16, error: Option<&'static str>) {
    let origin = called
        .origin
        .clone()
        .unwrap_or_else(|| crate::audit::Origin::internal("/v1/voice/asr"));
    let (id, latency) = (&called.request_id, called.started.elapsed());
    let mut record = refusal(id, origin, (status, error), Some(&called.caller), latency);
    record.stream = true;
    state.pipeline.audit.record(record);
}

/// The opening frame: `{"user": {"uid"}, "audio": {"format", "sample_rate",
/// "bits", "channel", "codec"}, "request": {"model_name", …}}`. The alias it
/// names, and the call: the opening as targets are sent it — the client's user
/// id is not passed on (it may name a person) — and what the record keeps.
fn read_opening(message: &[u8]) -> Result<(String, LiveCall), GatewayError> {
    let frame = Frame::parse(message)
        .map_err(|e| GatewayError::invalid(format!("the opening frame: {e}"), None))?;
    if frame.kind != Kind::Request {
        return Err(GatewayError::invalid(
            "the first frame is the request (message type 1), gzip'd JSON",
            None,
        ));
    }
    let Ok(Value::Object(asked)) = frame.json(MAX_JSON) else {
        return Err(GatewayError::invalid(
            format!("the opening request is a JSON object (gzip'd, at most {MAX_JSON} bytes)"),
            None,
        ));
    };
    only_known(&asked, &["user", "audio", "request"], "the opening request")?;
    let Some(Value::Object(request)) = asked.get("request") else {
        return Err(invalid(
            "request",
            "`request` is required: {\"model_name\", …}",
        ));
    };
    let model = request
        .get("model_name")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            invalid(
                "request.model_name",
                "`request.model_name` is required: an alias",
            )
        })?
        .to_owned();
    let audio = audio(asked.get("audio"))?;
    let opening = json!({
        "user": {"uid": "ragway"},
        "audio": audio,
        "request": request,
    });
    let call = LiveCall {
        opening,
        sequence: frame.sequence,
        summary: json!({"audio": audio, "realtime": true}),
    };
    Ok((model, call))
}

/// `audio`: its format one the recogniser takes, its numbers whole and in range.
fn audio(value: Option<&Value>) -> Result<Map<String, Value>, GatewayError> {
    let Some(Value::Object(audio)) = value else {
        return Err(invalid(
            "audio",
            "`audio` is required: {\"format\", \"sample_rate\", …}",
        ));
    };
    only_known(
        audio,
        &["format", "sample_rate", "bits", "channel", "codec"],
        "`audio`",
    )?;
    audio
        .get("format")
        .and_then(Value::as_str)
        .filter(|f| FORMATS.contains(f))
        .ok_or_else(|| {
            invalid(
                "audio.format",
                format!("`audio.format` is one of {}", FORMATS.join(", ")),
            )
        })?;
    for (field, range) in [
        ("sample_rate", 8_000..=48_000),
        ("bits", 8..=32),
        ("channel", 1..=2),
    ] {
        match audio.get(field) {
            None => {}
            Some(value) if value.as_u64().is_some_and(|n| range.contains(&n)) => {}
            Some(_) => {
                let param = format!("audio.{field}");
                let message = format!(
                    "`{param}` is a whole number from {} to {}",
                    range.start(),
                    range.end()
                );
                return Err(invalid(&param, message));
            }
        }
    }
    if audio.get("codec").is_some_and(|c| !c.is_string()) {
        return Err(invalid(
            "audio.codec",
            "`audio.codec` is a string (\"raw\")",
        ));
    }
    Ok(audio.clone())
}

/// The client's socket, as the pipeline takes it.
struct Client {
    socket: WebSocket,
}

#[async_trait]
impl LiveClient for Client {
    async fn next(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            return match self.socket.recv().await? {
                Ok(Message::Binary(message)) => Some(Ok(message)),
                Ok(Message::Close(_)) | Err(_) => None,
                // Answered by the socket as it reads.
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Text(_)) => {
                    Some(Err("frames are binary messages, not text".to_owned()))
                }
            };
        }
    }

    async fn send(&mut self, message: Bytes) -> bool {
        self.socket.send(Message::Binary(message)).await.is_ok()
    }

    async fn end(&mut self, error: Option<&GatewayError>) {
        let close = match error {
            None => CloseFrame {
                code: 1000,
                reason: "done".into(),
            },
            Some(error) => {
                let body = serde_json::to_value(error.body()).unwrap_or_default();
                let code = Some(u32::from(error.status()));
                let frame = Frame::encode_json(Kind::Error, 0, None, code, &body);
                let _ = self.socket.send(Message::Binary(frame)).await;
                CloseFrame {
                    // Policy (the client's to fix) or internal error.
                    code: if error.status() < 500 { 1008 } else { 1011 },
                    reason: error.code().into(),
                }
            }
        };
        let _ = self.socket.send(Message::Close(Some(close))).await;
    }
}
