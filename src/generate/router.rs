//! Walks a route's targets in order. A target that fails before anything reaches
//! the client is recorded and the next one is tried; for a stream, "anything" means
//! the first chunk with content, so a provider that accepts and then dies silently
//! still fails over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{Attempt, ChunkStream, Generate, Generation, Output, Target, UpstreamError};
use crate::error::GatewayError;
use crate::pipeline::RequestCtx;
use crate::telemetry::Metrics;
use crate::wire::ChatRequest;

/// What a client is told to wait when no upstream said how long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);

pub struct Router {
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Router { metrics }
    }

    async fn attempt(
        &self,
        target: &Target,
        prompt: &ChatRequest,
        stream: bool,
    ) -> Result<Output, UpstreamError> {
        if stream {
            open_stream(target, prompt).await.map(Output::Stream)
        } else {
            let completion = target.provider.complete(&target.model, prompt).await?;
            Ok(Output::Complete(completion))
        }
    }
}

#[async_trait]
impl Generate for Router {
    async fn generate(
        &self,
        ctx: &mut RequestCtx,
        prompt: &ChatRequest,
    ) -> Result<Generation, GatewayError> {
        let route = ctx.route.clone();
        let mut last_error = None;
        for target in &route.targets {
            let started = Instant::now();
            let result = self.attempt(target, prompt, ctx.stream).await;
            let latency = started.elapsed();
            match result {
                Ok(output) => {
                    if matches!(output, Output::Complete(_)) {
                        self.metrics
                            .upstream_attempt(&target.id, "ok", latency, None);
                    }
                    ctx.attempts.push(Attempt {
                        target: target.id.clone(),
                        latency,
                        error: None,
                    });
                    return Ok(Generation {
                        target: target.id.clone(),
                        started,
                        output,
                    });
                }
                Err(error) => {
                    let message = error.to_string();
                    self.metrics.upstream_attempt(
                        &target.id,
                        error.class(),
                        latency,
                        Some(&message),
                    );
                    ctx.attempts.push(Attempt {
                        target: target.id.clone(),
                        latency,
                        error: Some(error.clone()),
                    });
                    if error.is_content_filter() {
                        return Err(GatewayError::ContentFilter(provider_reason(&error)));
                    }
                    last_error = Some((target.id.clone(), error));
                }
            }
        }
        Err(unavailable(&route.alias, &ctx.attempts, last_error))
    }
}

/// Opens a stream and waits for its first chunk with content, holding back empty
/// role announcements so that a failure before any content can still fail over.
async fn open_stream(target: &Target, prompt: &ChatRequest) -> Result<ChunkStream, UpstreamError> {
    let mut stream = target.provider.stream(&target.model, prompt).await?;
    let mut held = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                let has_payload = chunk.has_payload();
                held.push(Ok(chunk));
                if has_payload {
                    break;
                }
            }
            Some(Err(error)) => return Err(error),
            None => {
                return Err(UpstreamError::Protocol(
                    "the stream ended without any content".to_owned(),
                ));
            }
        }
    }
    Ok(Box::pin(futures_util::stream::iter(held).chain(stream)))
}

fn provider_reason(error: &UpstreamError) -> String {
    match error {
        UpstreamError::Status { detail, .. } => detail.message.clone(),
        other => other.to_string(),
    }
}

fn unavailable(
    alias: &str,
    attempts: &[Attempt],
    last: Option<(Arc<str>, UpstreamError)>,
) -> GatewayError {
    let retry_after = attempts
        .iter()
        .filter_map(|a| a.error.as_ref()?.retry_after())
        .min()
        .unwrap_or(DEFAULT_RETRY_AFTER)
        .clamp(Duration::from_secs(1), Duration::from_secs(300));
    let message = match last {
        Some((target, error)) => format!(
            "every target of `{alias}` failed ({} attempts); the last, {target}, said: {error}",
            attempts.len()
        ),
        None => format!("`{alias}` has no target that can be tried"),
    };
    GatewayError::Unavailable {
        message,
        retry_after,
    }
}
