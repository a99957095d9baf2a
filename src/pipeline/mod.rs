//! The request path. [`Pipeline::run`] calls the stages in order — sanitize, cache,
//! retrieve, generate, respond, record — and does nothing else; each stage lives in
//! its own module behind a small trait.

mod ctx;
mod record;
mod respond;
mod stream;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

pub use ctx::{Caller, RequestCtx};

use crate::audit::AuditSink;
use crate::cache::{AnswerCache, CacheKey, CacheLookup, CacheStatus};
use crate::error::GatewayError;
use crate::generate::{ChunkStream, Generate, Output};
use crate::retrieve::Retriever;
use crate::sanitize::{Restorer, Sanitizer};
use crate::telemetry::Metrics;
use crate::wire::{ChatCompletion, ChatRequest};

/// The stages, each behind its trait, plus what they share.
#[derive(Clone)]
pub struct Pipeline {
    pub sanitizer: Arc<dyn Sanitizer>,
    pub cache: Arc<dyn AnswerCache>,
    pub retriever: Arc<dyn Retriever>,
    pub generator: Arc<dyn Generate>,
    pub audit: Arc<dyn AuditSink>,
    pub metrics: Arc<Metrics>,
    /// Streams and cache stores outlive their handler; they are tracked so that
    /// shutdown waits for them.
    pub tasks: TaskTracker,
}

/// The answer as the HTTP layer sends it.
pub struct Reply {
    pub target: Option<Arc<str>>,
    pub attempts: usize,
    pub cache: CacheStatus,
    pub body: ReplyBody,
}

pub enum ReplyBody {
    Complete(ChatCompletion),
    /// Server-sent event frames, ready to write.
    Stream(mpsc::Receiver<Bytes>),
}

/// An answer on its way to the client.
enum Answer {
    Whole {
        target: Arc<str>,
        reply: ChatCompletion,
        /// The sanitised answer and its key, when it should be cached.
        to_store: Option<Box<(CacheKey, ChatCompletion)>>,
    },
    Stream {
        target: Arc<str>,
        started: tokio::time::Instant,
        chunks: ChunkStream,
        restorer: Box<dyn Restorer>,
    },
}

impl Pipeline {
    pub async fn run(
        &self,
        mut ctx: RequestCtx,
        request: ChatRequest,
    ) -> Result<Reply, GatewayError> {
        match self.answer(&mut ctx, request).await {
            Ok(Answer::Whole {
                target,
                reply,
                to_store,
            }) => {
                self.record_whole(&ctx, &target, &reply, to_store); // 6. record
                Ok(Reply {
                    target: Some(target),
                    attempts: ctx.attempts.len(),
                    cache: ctx.cache,
                    body: ReplyBody::Complete(reply),
                })
            }
            // A stream is shaped chunk by chunk, and recorded when it ends.
            Ok(Answer::Stream {
                target,
                started,
                chunks,
                restorer,
            }) => Ok(self.stream(ctx, target, started, chunks, restorer)),
            Err(error) => {
                self.record_error(&ctx, &error); // 6. record
                Err(error)
            }
        }
    }

    /// Stages 1–5.
    async fn answer(
        &self,
        ctx: &mut RequestCtx,
        mut prompt: ChatRequest,
    ) -> Result<Answer, GatewayError> {
        let restorer = self.sanitizer.sanitize(&mut prompt)?; // 1. sanitize
        match self.cache.lookup(ctx, &prompt).await {
            // 2. cache
            CacheLookup::Hit(answer, tier) => {
                ctx.cache = tier;
                return Ok(respond::cached(ctx, answer, restorer));
            }
            CacheLookup::Miss(key) => {
                ctx.cache = CacheStatus::Miss;
                ctx.cache_key = Some(key);
            }
            CacheLookup::Bypass => ctx.cache = CacheStatus::Bypass,
        }
        ctx.citations = self.retriever.ground(ctx, &mut prompt).await?; // 3. retrieve
        let generation = self.generator.generate(ctx, &prompt).await?; // 4. generate
        Ok(match generation.output {
            // 5. respond (a stream is shaped as it flows, in `stream`)
            Output::Complete(completion) => {
                respond::whole(ctx, generation.target, completion, restorer.as_ref())
            }
            Output::Stream(chunks) => Answer::Stream {
                target: generation.target,
                started: generation.started,
                chunks,
                restorer,
            },
        })
    }
}
