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

use super::record::StreamEnd;
use super::respond::{ChunkShaper, ToClient};
use super::{Pipeline, Reply, ReplyBody, RequestCtx};
use crate::error::GatewayError;
use crate::generate::{Assembler, ChunkStream};

/// Frames buffered between the upstream reader and a slow client.
const CHANNEL_FRAMES: usize = 32;

impl Pipeline {
    pub(super) fn stream(
        &self,
        ctx: RequestCtx,
        target: Arc<str>,
        started: Instant,
        chunks: ChunkStream,
        to_client: ToClient,
    ) -> Reply {
        let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
        let reply = Reply {
            target: Some(target.clone()),
            attempts: ctx.attempts.len(),
            cache: ctx.cache,
            body: ReplyBody::Stream(rx),
        };
        let pipeline = self.clone();
        self.tasks.spawn(
            async move {
                let shaper = ChunkShaper::new(&ctx, &target, &to_client);
                let (end, accumulated, first_token) =
                    forward(&pipeline, &ctx, chunks, shaper, tx).await;
                if !ctx.cache.is_hit() {
                    pipeline.metrics.upstream_stream_ended(
                        &target,
                        end.outcome().as_str(),
                        started.elapsed(),
                    );
                }
                let recorded =
                    pipeline.sanitize_for_record(&ctx, &to_client.vault, accumulated.text());
                pipeline.record_stream(&ctx, &target, end, accumulated, first_token, recorded);
            }
            .instrument(tracing::Span::current()),
        );
        reply
    }
}

async fn forward(
    pipeline: &Pipeline,
    ctx: &RequestCtx,
    mut chunks: ChunkStream,
    mut shaper: ChunkShaper,
    tx: mpsc::Sender<Bytes>,
) -> (StreamEnd, Assembler, Option<Duration>) {
    // The answer as it came from upstream (sanitised), for the cache and the record.
    let mut accumulated = Assembler::default();
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
        accumulated.add(&chunk);
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
            pipeline.metrics.guard_blocked("output");
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
            pipeline.metrics.guard_blocked("output");
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
    (end, accumulated, first_token)
}

/// One SSE event carrying a JSON value.
pub(crate) fn data_frame<T: Serialize>(value: &T) -> Bytes {
    let mut frame = b"data: ".to_vec();
    // Serialising our own wire types cannot fail.
    let _ = serde_json::to_writer(&mut frame, value);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}
