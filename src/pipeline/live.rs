//! The realtime speech recogniser (Qiniu's WebSocket on `/v1/voice/asr`): the
//! session is admitted against the caller's limits, its opening request sent to
//! the alias's first target that takes the socket (breakers, retries and
//! failover as chat's), and then every frame is relayed as it comes, each way,
//! within deadlines and caps. One audit record per session: how long it ran,
//! what it carried, and the final text, sanitised.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::admit::admission::Ask;
use crate::call::Outcome;
use crate::error::GatewayError;
use crate::generate::live::ProviderSocket;
use crate::generate::live::frame::{self, Frame, Kind};
use crate::generate::{Asking, Target, UpstreamError, relay_with};
use crate::sanitize::Vault;

use super::record::Finished;
use super::{Pipeline, RequestCtx};

/// The longest session: a long meeting's recording, well past any dictation.
pub const MAX_SESSION: Duration = Duration::from_secs(30 * 60);
/// The most audio one session may send (30 minutes of 16 kHz, 16-bit mono is
/// 57.6 MB before gzip).
pub const MAX_AUDIO_BYTES: u64 = 64 << 20;
/// The most an opening or an answer may unzip to.
pub const MAX_JSON: usize = 64 * 1024;

/// One realtime session to relay.
pub struct LiveCall {
    /// The opening request's JSON; `request.model_name` becomes each target's
    /// model.
    pub opening: Value,
    /// The opening frame's sequence number, sent on as it came.
    pub sequence: Option<i32>,
    /// What the record keeps of the request (formats, no personal data).
    pub summary: Value,
}

/// The client's side of a session, as the HTTP layer adapts its socket.
#[async_trait]
pub trait LiveClient: Send {
    /// The next binary message; `None` once the client has closed or gone, an
    /// error for a message that is not binary.
    async fn next(&mut self) -> Option<Result<Bytes, String>>;

    /// Sends a message on; false once the client is gone.
    async fn send(&mut self, message: Bytes) -> bool;

    /// Ends the session: normally, or with the error the client is told.
    async fn end(&mut self, error: Option<&GatewayError>);
}

/// How a relayed session went.
#[derive(Default)]
struct Carried {
    frames: u64,
    bytes: u64,
    /// The latest text the recogniser gave.
    text: Option<String>,
    first_answer: Option<Duration>,
}

impl Pipeline {
    /// Runs one session until it ends, or until `stop` (shutdown) ends it.
    pub async fn recognise_live(
        &self,
        mut ctx: RequestCtx,
        call: LiveCall,
        client: &mut dyn LiveClient,
        stop: &CancellationToken,
    ) {
        let ask = Ask {
            prompt_tokens: 0,
            max_output: Some(0),
        };
        // Admitted for as long as a session may last: a place held under
        // `concurrency` is kept that long.
        let ends = ctx.started + MAX_SESSION;
        let mut session = ctx.call();
        session.deadline = ends;
        match self.admission.admit(&session, ask).await {
            Ok(permit) => ctx.permit = Some(permit),
            Err(error) => {
                return self
                    .end_live(&mut ctx, client, Finished::failed(&error), error)
                    .await;
            }
        }
        let path = ctx.route.kind.route().trim_start_matches("/v1");
        let opener = Opener { call: &call, path };
        let opening = relay_with(&self.metrics, &ctx.route, &opener, ctx.call().deadline);
        let relayed = ctx.trace.stage("generate", opening).await;
        ctx.attempts = relayed.attempts;
        let (target, mut socket) = match relayed.result {
            Ok(opened) => opened,
            Err(error) => {
                return self
                    .end_live(&mut ctx, client, Finished::failed(&error), error)
                    .await;
            }
        };
        // The target's own longest gap between two messages bounds a silent side.
        let idle = ctx
            .route
            .targets
            .iter()
            .find(|t| t.id == target)
            .map_or(Duration::from_secs(30), |t| t.deadlines.idle);
        let started = Instant::now();
        let mut carried = Carried::default();
        let ended = tokio::select! {
            ended = relay_frames(&mut socket, client, &mut carried, idle, (started, ends)) => ended,
            () = stop.cancelled() => Err((
                Outcome::Interrupted,
                GatewayError::StreamInterrupted(
                    "the gateway is shutting down; open a new session".to_owned(),
                ),
            )),
        };
        socket.close().await;
        let (outcome, error) = match ended {
            Ok(outcome) => (outcome, None),
            Err((outcome, error)) => (outcome, Some(error)),
        };
        client.end(error.as_ref()).await;
        let mut summary = call.summary;
        summary["frames"] = json!(carried.frames);
        summary["bytes"] = json!(carried.bytes);
        summary["seconds"] = json!(started.elapsed().as_secs_f64());
        if self.audit.keeps_text() {
            ctx.prompt_text = summary.to_string();
        }
        let mut finished = Finished::answered(target, outcome);
        finished.error = error.as_ref().map(GatewayError::code);
        finished.first_token = carried.first_answer;
        if let Some(text) = carried.text {
            finished.answer_chars = text.chars().count();
            if self.audit.keeps_text() {
                finished.answer = self
                    .sanitizer
                    .sanitize_text(&text, &mut Vault::new())
                    .unwrap_or_default();
            }
        }
        self.record(&mut ctx, finished);
    }

    /// A session that ended before it began: the client is told why.
    async fn end_live(
        &self,
        ctx: &mut RequestCtx,
        client: &mut dyn LiveClient,
        finished: Finished,
        error: GatewayError,
    ) {
        client.end(Some(&error)).await;
        self.record(ctx, finished);
    }
}

/// Opens a target's socket and sends it the opening, naming its model.
struct Opener<'c> {
    call: &'c LiveCall,
    path: &'c str,
}

impl Asking<ProviderSocket> for Opener<'_> {
    fn ask<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<ProviderSocket, UpstreamError>> {
        Box::pin(async move {
            let mut socket = target
                .provider
                .open_socket(&target.model, self.path)
                .await?;
            let mut opening = self.call.opening.clone();
            opening["request"]["model_name"] = Value::String(target.model.clone());
            let message = Frame::encode_json(Kind::Request, 0, self.call.sequence, None, &opening);
            socket.send(message).await?;
            Ok(socket)
        })
    }
}

/// Relays frames each way until the recogniser gives its last answer, either
/// side leaves, or a deadline or cap is passed (the session's end, as it was
/// admitted); how the session ended. `started` is when relaying began.
async fn relay_frames(
    socket: &mut ProviderSocket,
    client: &mut dyn LiveClient,
    carried: &mut Carried,
    idle: Duration,
    (started, session_ends): (Instant, Instant),
) -> Result<Outcome, (Outcome, GatewayError)> {
    let mut client_done = false;
    loop {
        let quiet_until = (Instant::now() + idle).min(session_ends);
        tokio::select! {
            message = client.next(), if !client_done => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(what)) => {
                        return Err((Outcome::Error, GatewayError::invalid(what, None)));
                    }
                    None => return Ok(Outcome::Abandoned),
                };
                let frame = Frame::parse(&message).map_err(|e| {
                    (Outcome::Error, GatewayError::invalid(format!("an audio frame: {e}"), None))
                })?;
                if frame.kind != Kind::Audio {
                    let message = "after the opening request, only audio frames (message type 2) are taken";
                    return Err((Outcome::Error, GatewayError::invalid(message, None)));
                }
                carried.frames += 1;
                carried.bytes += message.len() as u64;
                if carried.bytes > MAX_AUDIO_BYTES {
                    return Err((Outcome::Error, GatewayError::PayloadTooLarge {
                        limit: usize::try_from(MAX_AUDIO_BYTES).unwrap_or(usize::MAX),
                    }));
                }
                client_done = frame.is_last();
                socket.send(message).await.map_err(|_| lost())?;
            }
            message = socket.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    // Closed after the client's last frame, with what it heard.
                    None if client_done && carried.text.is_some() => return Ok(Outcome::Ok),
                    None | Some(Err(_)) => return Err(lost()),
                };
                let frame = Frame::parse(&message).map_err(|_| lost())?;
                match frame.kind {
                    Kind::Answer => {
                        if let Ok(answer) = frame.json(MAX_JSON)
                            && let Some(text) = frame::answer_text(&answer)
                        {
                            carried.text = Some(text.to_owned());
                        }
                        carried.first_answer.get_or_insert_with(|| started.elapsed());
                    }
                    Kind::Ack => {}
                    // Its message is the provider's words: the client is told
                    // the session failed, not what the provider said.
                    Kind::Error => return Err(lost()),
                    Kind::Request | Kind::Audio => return Err(lost()),
                }
                let last = frame.is_last();
                if !client.send(message).await {
                    return Ok(Outcome::Abandoned);
                }
                if last {
                    return Ok(Outcome::Ok);
                }
            }
            () = sleep_until(quiet_until) => {
                return Err(match quiet_until >= session_ends {
                    true => (Outcome::Error, GatewayError::invalid(
                        format!("a session lasts at most {} minutes", MAX_SESSION.as_secs() / 60),
                        None,
                    )),
                    false => (Outcome::Interrupted, GatewayError::StreamInterrupted(format!(
                        "nothing was heard for {} ms; start a new session",
                        idle.as_millis()
                    ))),
                });
            }
        }
    }
}

/// The recogniser failed mid-session: the client starts again.
fn lost() -> (Outcome, GatewayError) {
    (
        Outcome::Interrupted,
        GatewayError::StreamInterrupted(
            "the recogniser ended the session early; start a new one".to_owned(),
        ),
    )
}
