//! Driving one streamed answer to the client. The stream runs in a task of its own,
//! tracked for shutdown, so that its record is written however it ends: finished,
//! cut upstream (an in-band error event, no `[DONE]`), or abandoned by the client
//! (the upstream call is dropped at once, which cancels it).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::record::Finished;
use super::respond::{self, ChunkShaper, Shaping};
use super::{Pipeline, RequestCtx};
use crate::call::Outcome;
use crate::error::GatewayError;
use crate::generate::{Assembler, ChunkStream, UpstreamError};

/// Frames buffered between the upstream reader and a slow client.
const CHANNEL_FRAMES: usize = 32;

/// How a stream ended.
enum StreamEnd {
    Complete,
    /// The upstream failed after the client had begun to receive the answer.
    Interrupted(UpstreamError),
    /// The client went away.
    Abandoned,
    /// The content guard cut the answer.
    Filtered,
}

impl StreamEnd {
    fn outcome(&self) -> Outcome {
        match self {
            StreamEnd::Complete => Outcome::Ok,
            StreamEnd::Interrupted(_) => Outcome::Interrupted,
            StreamEnd::Abandoned => Outcome::Abandoned,
            StreamEnd::Filtered => Outcome::ContentFilter,
        }
    }
}

/// What a stream carried to the client, once it has ended.
struct Carried {
    end: StreamEnd,
    /// The answer as it came from upstream (sanitised), for the cache and the record.
    assembled: Assembler,
    first_token: Option<Duration>,
}

impl Pipeline {
    /// Starts the task that carries `chunks` from `target` to the client; the frames
    /// to write come out of the receiver.
    pub(super) fn stream(
        &self,
        mut ctx: RequestCtx,
        target: Arc<str>,
        started: Instant,
        chunks: ChunkStream,
        shaping: Shaping,
    ) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
        let pipeline = self.clone();
        let trace = ctx.trace.clone();
        self.tasks.spawn(
            trace
                .scope(async move {
                    let shaper = ChunkShaper::new(&ctx, &target, &shaping);
                    let carried = forward(&pipeline, &ctx, chunks, shaper, tx).await;
                    if !ctx.cache.is_hit() {
                        pipeline.metrics.upstream_stream_ended(
                            &target,
                            carried.end.outcome().as_str(),
                            started.elapsed(),
                        );
                    }
                    let finished = pipeline.finished_stream(&ctx, &shaping, target, carried);
                    pipeline.record(&mut ctx, finished); // 6. record
                })
                .instrument(tracing::Span::current()),
        );
        rx
    }

    /// How the stream ended, for the record; its metrics counted.
    fn finished_stream(
        &self,
        ctx: &RequestCtx,
        shaping: &Shaping,
        target: Arc<str>,
        carried: Carried,
    ) -> Finished {
        let Carried {
            end,
            assembled,
            first_token,
        } = carried;
        let outcome = end.outcome();
        self.metrics.stream_finished(
            &ctx.route.alias,
            &target,
            outcome.as_str(),
            ctx.started.elapsed(),
        );
        let mut finished = Finished::answered(target.clone(), outcome);
        finished.first_token = first_token;
        finished.usage = assembled.usage();
        finished.answer_chars = assembled.answer_chars();
        finished.answer = self.sanitize_for_record(ctx, &shaping.vault, assembled.text());
        if let StreamEnd::Interrupted(_) = end {
            finished.error = Some("stream_interrupted");
        }
        // Only an answer that finished is worth serving again, and one produced from
        // raw text may hold raw values.
        if let (StreamEnd::Complete, true, false) = (&end, ctx.cache_key.is_some(), ctx.raw_output)
            && let Some(mut answer) = assembled.finish()
            && respond::cacheable(&answer)
        {
            answer.model = target.to_string();
            respond::attach_citations(ctx, &mut answer);
            finished.to_store = Some(answer);
        }
        finished
    }
}

async fn forward(
    pipeline: &Pipeline,
    ctx: &RequestCtx,
    mut chunks: ChunkStream,
    mut shaper: ChunkShaper,
    tx: mpsc::Sender<Bytes>,
) -> Carried {
    let mut assembled = Assembler::default();
    let mut first_token = None;
    let mut end = loop {
        let item = tokio::select! {
            biased;
            _ = tx.closed() => break StreamEnd::Abandoned,
            item = chunks.next() => item,
        };
        let chunk = match item {
            None => break StreamEnd::Complete,
            Some(Err(error)) => break StreamEnd::Interrupted(error),
            Some(Ok(chunk)) => chunk,
        };
        assembled.add(&chunk);
        let Some(shaped) = shaper.shape(chunk) else {
            continue;
        };
        if first_token.is_none() && shaped.has_payload() {
            let elapsed = ctx.started.elapsed();
            pipeline.metrics.first_token(&ctx.route.alias, elapsed);
            first_token = Some(elapsed);
        }
        if tx.send(data_frame(&shaped)).await.is_err() {
            break StreamEnd::Abandoned;
        }
        if shaper.filtered() {
            break StreamEnd::Filtered;
        }
    };
    // The client is told how it ended; a send error here means it left already.
    if let StreamEnd::Complete = end {
        // What was held back, for a stream that ended without a finish chunk; the
        // guard may still cut it.
        if let Some(rest) = shaper.finish() {
            let _ = tx.send(data_frame(&rest)).await;
        }
        if shaper.filtered() {
            end = StreamEnd::Filtered;
        }
    }
    match &end {
        // A cut answer's last chunk said why (`content_filter`); the stream ends
        // normally either way (and a cut one drops the upstream call).
        StreamEnd::Complete | StreamEnd::Filtered => {
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        }
        StreamEnd::Interrupted(error) => {
            let error = GatewayError::StreamInterrupted(format!(
                "the answer was cut off upstream: {error}"
            ));
            let _ = tx.send(data_frame(&error.body())).await;
        }
        StreamEnd::Abandoned => {}
    }
    Carried {
        end,
        assembled,
        first_token,
    }
}

/// One SSE event carrying a JSON value.
pub fn data_frame<T: Serialize>(value: &T) -> Bytes {
    let mut frame = b"data: ".to_vec();
    // Serialising our own wire types cannot fail.
    let _ = serde_json::to_writer(&mut frame, value);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}
