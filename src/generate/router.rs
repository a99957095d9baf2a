//! Walks a route's targets in order, within the request's deadline.
//!
//! For each target: take a place under its own limits (one at a limit is skipped
//! at once), ask its breaker (an open one is skipped at once), make an
//! attempt under the target's deadlines, and on failure let [`classify`] decide —
//! retry the same target after a jittered back-off or the provider's `Retry-After`,
//! move to the next target, or stop and tell the client. Nothing is failed over once
//! the first content has gone to the client: for a stream, "gone" means its first
//! chunk with content, so a provider that accepts and then dies silently still fails
//! over.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::time::{Instant, timeout_at};

use super::assemble::{Assembler, collect_into};
use super::hedge;
use super::resume::{self, ResumeLog, Resumer};
use super::retry::{Disposition, classify};
use super::{
    Answer, AnswerBody, Attempt, ChunkStream, Generate, Generated, Prompt, Route, Target,
    TimeoutPhase, UpstreamError,
};
use crate::call::{AttemptKind, Call};
use crate::error::GatewayError;
use crate::resilience::{BreakerState, Permit, Verdict};
use crate::telemetry::Metrics;
use crate::telemetry::traces;
use crate::wire::{ChatChunk, ChatRequest};

/// What a client is told to wait when nothing better is known.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);

pub struct Router {
    metrics: Arc<Metrics>,
}

/// The attempts of one request so far, and the waits providers asked for.
#[derive(Default)]
struct Tries {
    attempts: Vec<Attempt>,
    asked_waits: Vec<Duration>,
    /// One attempt per target, no retry: a hedge is one extra request.
    single: bool,
    /// A whole answer is handed back as its stream at its first token (and
    /// assembled by the caller): a race is won by the first token, not the end.
    streamed: bool,
}

/// How one target ended for a request that it did not answer.
pub(super) enum Left {
    /// Its breaker was open: no attempt was made.
    Skipped,
    /// It is at one of its own limits: no attempt was made.
    AtLimit,
    Failed(UpstreamError, Disposition),
    /// The request's deadline passed: no target may be tried.
    OutOfTime,
}

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Router { metrics }
    }

    /// What one target does for one request: a place under its own limits, then
    /// its attempts; the place is settled when the answer ends.
    #[allow(clippy::too_many_arguments)]
    async fn try_target(
        &self,
        call: &Call<'_>,
        tries: &mut Tries,
        route: &Route,
        target: &Arc<Target>,
        prompt: &Prompt,
        deadline: Instant,
        resumer: Option<&Resumer>,
    ) -> Result<Answer, Left> {
        let prompt = prompt.for_target(target);
        let pass = self.enter_gates(call, target, prompt).await?;
        let result = self
            .attempts(call, tries, route, target, prompt, deadline, resumer)
            .await;
        let used = match &result {
            Ok(Answer {
                body: AnswerBody::Whole(completion),
                ..
            }) => completion
                .usage
                .map(|u| u.prompt_tokens + u.completion_tokens),
            // Nothing was sent: the request is given back too.
            Err(Left::Skipped | Left::OutOfTime) => {
                if let Some(pass) = pass {
                    pass.refund().await;
                }
                return result;
            }
            // A stream settles when it ends; a failure used no tokens.
            _ => Some(0),
        };
        match result {
            Ok(Answer {
                target: id,
                started,
                body: AnswerBody::Stream(chunks),
                raw_output,
            }) => {
                // The target's verdict and places settle when its own part ends;
                // a resumption goes on past it, on other targets' accounts.
                let chunks = settle_pass_at_end(chunks, pass);
                let chunks = match resumer {
                    Some(resumer) => resume::splice(chunks, resumer.clone()),
                    None => chunks,
                };
                Ok(Answer {
                    target: id,
                    started,
                    body: AnswerBody::Stream(chunks),
                    raw_output,
                })
            }
            other => {
                if let Some(pass) = pass {
                    pass.settle(used).await;
                }
                other
            }
        }
    }

    /// A place under each of the target's limits, or the limit it is at.
    async fn enter_gates(
        &self,
        call: &Call<'_>,
        target: &Target,
        prompt: &ChatRequest,
    ) -> Result<Option<crate::quota::Pass>, Left> {
        let prompt_tokens = || crate::tokens::prompt_tokens(prompt);
        enter_gates(&self.metrics, target, prompt, prompt_tokens, call.deadline)
            .await
            .map_err(|()| Left::AtLimit)
    }

    /// Every attempt one target gets for one request, its breaker permitting. An
    /// answer that breaks after part of it arrived is resumed by `resumer`'s
    /// targets: a stream as it goes, a whole answer before it is returned.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        call: &Call<'_>,
        tries: &mut Tries,
        route: &Route,
        target: &Arc<Target>,
        prompt: &ChatRequest,
        deadline: Instant,
        resumer: Option<&Resumer>,
    ) -> Result<Answer, Left> {
        let mut retries = 0;
        let mut last: Option<UpstreamError> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Left::OutOfTime);
            }
            let (permit, transition) = target.breaker.try_acquire(now);
            self.report(target, transition);
            let Some(permit) = permit else {
                // Opened (or busy probing) while this request waited to retry.
                return Err(match last {
                    Some(error) => Left::Failed(error, Disposition::NextTarget),
                    None => Left::Skipped,
                });
            };
            let started = Instant::now();
            let mut partial = None;
            let stream = call.stream || tries.streamed;
            let span = traces::Attempt::start("chat", &target.id);
            let attempt = self.attempt(target, prompt, stream, deadline, &mut partial);
            let result = span.run(attempt).await;
            span.end(result.as_ref().err().map(UpstreamError::class));
            let latency = started.elapsed();
            let error = match result {
                Ok(body) => {
                    let body = match body {
                        // A committed stream records its verdict when it ends.
                        AnswerBody::Stream(chunks) => {
                            AnswerBody::Stream(settle_at_end(&self.metrics, target, chunks, permit))
                        }
                        whole => {
                            let transition = permit.record(Verdict::Success, Instant::now());
                            self.report(target, transition);
                            self.metrics
                                .upstream_attempt(&target.id, "ok", latency, None);
                            whole
                        }
                    };
                    tries.attempts.push(Attempt {
                        target: target.id.clone(),
                        latency,
                        failure: None,
                        kind: AttemptKind::Plain,
                    });
                    return Ok(Answer {
                        target: target.id.clone(),
                        started,
                        body,
                        raw_output: target.raw_input,
                    });
                }
                Err(error) => error,
            };
            let classified = classify(&error, route.failover_on_content_filter);
            self.report(target, permit.record(classified.verdict, Instant::now()));
            let message = error.to_string();
            self.metrics
                .upstream_attempt(&target.id, error.class(), latency, Some(&message));
            if classified.config_error {
                self.metrics.config_error(&target.id, &message);
            }
            tries.attempts.push(Attempt {
                target: target.id.clone(),
                latency,
                failure: Some(error.failure()),
                kind: AttemptKind::Plain,
            });
            tries.asked_waits.extend(error.retry_after());
            // A whole answer cut part-way is finished by a target that continues
            // it, rather than asked for again from the start.
            let error = match (resumer, partial) {
                (Some(resumer), Some(partial)) => {
                    match resume::finish_whole(resumer, partial, error).await {
                        Ok(completion) => {
                            return Ok(Answer {
                                target: target.id.clone(),
                                started,
                                body: AnswerBody::Whole(Box::new(completion)),
                                raw_output: target.raw_input,
                            });
                        }
                        Err(error) => error,
                    }
                }
                _ => error,
            };
            if classified.disposition != Disposition::Retry {
                return Err(Left::Failed(error, classified.disposition));
            }
            retries += 1;
            let wait = target
                .retry
                .wait(retries, fastrand::f64(), error.retry_after());
            // A provider asking for a longer pause than the back-off cap is left for
            // the next target rather than waited on (its hint still reaches the
            // client if no target answers).
            let too_long = wait > target.retry.cap;
            let past_deadline = Instant::now()
                .checked_add(wait)
                .is_none_or(|t| t >= deadline);
            if retries >= target.retry.attempts || tries.single || too_long || past_deadline {
                return Err(Left::Failed(error, Disposition::NextTarget));
            }
            last = Some(error);
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt, under the target's deadlines. A whole answer assembled from a
    /// stream that broke leaves what had arrived in `partial`.
    async fn attempt(
        &self,
        target: &Target,
        prompt: &ChatRequest,
        client_streams: bool,
        deadline: Instant,
        partial: &mut Option<Assembler>,
    ) -> Result<AnswerBody, UpstreamError> {
        if client_streams || target.stream_upstream {
            return self
                .streamed(target, prompt, client_streams, deadline, partial)
                .await;
        }
        // A provider that cannot stream: only the request's deadline bounds it.
        match timeout_at(deadline, target.provider.complete(&target.model, prompt)).await {
            Ok(result) => result.map(|c| AnswerBody::Whole(Box::new(c))),
            Err(_) => Err(UpstreamError::Timeout(TimeoutPhase::Total)),
        }
    }

    /// Opens a stream, waits for its first content under the first-token deadline,
    /// and then either hands it on (the client streams) or assembles it.
    async fn streamed(
        &self,
        target: &Target,
        prompt: &ChatRequest,
        client_streams: bool,
        deadline: Instant,
        partial: &mut Option<Assembler>,
    ) -> Result<AnswerBody, UpstreamError> {
        let first_token_by = Instant::now()
            .checked_add(target.deadlines.first_token)
            .map_or(deadline, |t| t.min(deadline));
        let opened = timeout_at(first_token_by, async {
            first_content(target.provider.stream(&target.model, prompt).await?).await
        })
        .await;
        let chunks = match opened {
            Ok(result) => result?,
            Err(_) if first_token_by == deadline => {
                return Err(UpstreamError::Timeout(TimeoutPhase::Total));
            }
            Err(_) => return Err(UpstreamError::Timeout(TimeoutPhase::FirstToken)),
        };
        let chunks = with_deadlines(chunks, target.deadlines.idle, deadline);
        if client_streams {
            return Ok(AnswerBody::Stream(chunks));
        }
        let mut assembled = Assembler::default();
        match collect_into(&mut assembled, chunks).await {
            Ok(completion) => Ok(AnswerBody::Whole(Box::new(completion))),
            Err(error) => {
                *partial = Some(assembled);
                Err(error)
            }
        }
    }

    fn report(&self, target: &Target, transition: Option<BreakerState>) {
        if let Some(state) = transition {
            self.metrics.breaker_changed(&target.id, state);
        }
    }
}

/// Wraps a committed stream so that its end settles the breaker permit: a clean
/// end is a success, an error a failure, a stream dropped early (the client left)
/// neutral.
pub(super) fn settle_at_end(
    metrics: &Arc<Metrics>,
    target: &Arc<Target>,
    chunks: ChunkStream,
    permit: Permit,
) -> ChunkStream {
    let state = (
        chunks,
        Some(permit),
        Arc::clone(target),
        Arc::clone(metrics),
    );
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut chunks, mut permit, target, metrics)| async move {
            let item = chunks.next().await;
            let verdict = match &item {
                None => Some(Verdict::Success),
                Some(Err(_)) => Some(Verdict::Failure),
                Some(Ok(_)) => None,
            };
            if let (Some(verdict), Some(permit)) = (verdict, permit.take()) {
                let transition = permit.record(verdict, Instant::now());
                if let Some(state) = transition {
                    metrics.breaker_changed(&target.id, state);
                }
            }
            Some((item?, (chunks, permit, target, metrics)))
        },
    ))
}

#[async_trait]
impl Generate for Router {
    async fn generate(&self, call: &Call<'_>, route: &Route, prompt: &Prompt) -> Generated {
        let mut tries = Tries::default();
        let resumed = ResumeLog::default();
        let result = self.walk(call, &mut tries, route, prompt, &resumed).await;
        Generated {
            attempts: tries.attempts,
            result,
            resumed,
        }
    }
}

impl Router {
    /// The route's targets in order, until one answers; with `hedge_after`, the
    /// first target slow to answer races the next one.
    async fn walk(
        &self,
        call: &Call<'_>,
        tries: &mut Tries,
        route: &Route,
        prompt: &Prompt,
        resumed: &ResumeLog,
    ) -> Result<Answer, GatewayError> {
        let mut walk = Walk::default();
        let mut hedge_after = route.hedge_after;
        let mut at = 0;
        while let Some(target) = route.targets.get(at).filter(|_| !walk.out_of_time) {
            if let Some((from, reason)) = walk.left.take() {
                self.metrics.failover(&from, &target.id, reason);
            }
            let attempt = |tries, at| self.target_at(call, tries, route, prompt, resumed, at);
            let hedge = hedge_after.and_then(|delay| Some((delay, route.targets.get(at + 1)?)));
            let Some((delay, second)) = hedge else {
                match attempt(tries, at).await {
                    Ok(answer) => return Ok(answer),
                    Err(left) => walk.note(target, left)?,
                }
                at += 1;
                continue;
            };
            let mut hedge_tries = Tries {
                single: true,
                streamed: true,
                ..Tries::default()
            };
            let started = Instant::now();
            tries.streamed = true;
            let race = hedge::race(attempt(tries, at), delay, || {
                self.metrics.failover(&target.id, &second.id, "hedge");
                attempt(&mut hedge_tries, at + 1)
            })
            .await;
            tries.streamed = false;
            if race.hedged {
                // One hedge per call.
                hedge_after = None;
            }
            // In the order they began: the first target, then its hedge. An answer
            // wins over the other side's refusal.
            let mut won = None;
            let mut refused = None;
            match race.first {
                Some(Ok(answer)) => won = Some((answer, target)),
                Some(Err(left)) => refused = walk.note(target, left).err(),
                None if race.hedged => {
                    tries
                        .attempts
                        .push(self.cancelled(target, AttemptKind::Plain, started));
                }
                None => {}
            }
            for mut made in hedge_tries.attempts {
                made.kind = AttemptKind::Hedge;
                tries.attempts.push(made);
            }
            tries.asked_waits.extend(hedge_tries.asked_waits);
            match race.second {
                Some(Ok(answer)) => won = Some((answer, second)),
                Some(Err(left)) => refused = refused.or(walk.note(second, left).err()),
                None if race.hedged => {
                    let since = started + delay;
                    tries
                        .attempts
                        .push(self.cancelled(second, AttemptKind::Hedge, since));
                }
                None => {}
            }
            if let Some((answer, winner)) = won {
                match self.as_asked(call, answer).await {
                    Ok(answer) => return Ok(answer),
                    Err(left) => walk.note(winner, left)?,
                }
            }
            if let Some(refusal) = refused {
                return Err(refusal);
            }
            at += if race.hedged { 2 } else { 1 };
        }
        Err(exhausted(
            route,
            tries.attempts.len(),
            &tries.asked_waits,
            walk.last_error,
            walk.all_refused,
        ))
    }

    /// [`try_target`](Router::try_target) on the route's target `at`, resuming a
    /// broken answer on the targets after it.
    async fn target_at(
        &self,
        call: &Call<'_>,
        tries: &mut Tries,
        route: &Route,
        prompt: &Prompt,
        resumed: &ResumeLog,
        at: usize,
    ) -> Result<Answer, Left> {
        let target = &route.targets[at];
        let resumer = Resumer::new(
            &route.targets,
            at,
            prompt.for_target(target),
            call.deadline,
            &self.metrics,
            resumed,
        );
        self.try_target(
            call,
            tries,
            route,
            target,
            prompt,
            call.deadline,
            resumer.as_ref(),
        )
        .await
    }

    /// A raced answer as the client asked for it: a whole answer is assembled
    /// from the stream that won the race.
    async fn as_asked(&self, call: &Call<'_>, answer: Answer) -> Result<Answer, Left> {
        let Answer {
            target,
            started,
            body,
            raw_output,
        } = answer;
        let body = match body {
            AnswerBody::Stream(chunks) if !call.stream => {
                let completion = super::assemble::collect(chunks)
                    .await
                    .map_err(|e| Left::Failed(e, Disposition::NextTarget))?;
                AnswerBody::Whole(Box::new(completion))
            }
            body => body,
        };
        Ok(Answer {
            target,
            started,
            body,
            raw_output,
        })
    }

    /// The attempt of a target cancelled because its rival answered first.
    fn cancelled(&self, target: &Target, kind: AttemptKind, since: Instant) -> Attempt {
        let latency = since.elapsed();
        self.metrics
            .upstream_attempt(&target.id, HEDGED_OUT, latency, None);
        Attempt {
            target: target.id.clone(),
            latency,
            failure: Some(crate::call::Failure {
                class: HEDGED_OUT,
                status: None,
                message: "cancelled: the other target of the hedge answered first".to_owned(),
            }),
            kind,
        }
    }
}

/// The class of an attempt cancelled by a hedge.
const HEDGED_OUT: &str = "hedged_out";

/// How the walk over a route's targets stands.
pub(super) struct Walk {
    /// The target just left and why, for the failover metric.
    pub(super) left: Option<(Arc<str>, &'static str)>,
    pub(super) last_error: Option<(Arc<str>, UpstreamError)>,
    /// Whether every target refused the request itself (rather than being down).
    pub(super) all_refused: bool,
    /// The request's deadline passed: no target may be tried.
    pub(super) out_of_time: bool,
}

impl Default for Walk {
    fn default() -> Walk {
        Walk {
            left: None,
            last_error: None,
            all_refused: true,
            out_of_time: false,
        }
    }
}

impl Walk {
    /// Notes how `target` ended; `Err` is the answer to give at once (a refusal
    /// on content grounds).
    pub(super) fn note(&mut self, target: &Target, left: Left) -> Result<(), GatewayError> {
        match left {
            Left::Skipped => {
                self.all_refused = false;
                self.left = Some((target.id.clone(), "breaker_open"));
            }
            Left::AtLimit => {
                self.all_refused = false;
                self.left = Some((target.id.clone(), "target_limit"));
            }
            Left::Failed(error, Disposition::Stop) => {
                return Err(GatewayError::ContentFilter(provider_reason(&error)));
            }
            Left::Failed(error, _) => {
                self.all_refused &= classify(&error, false).verdict == Verdict::Neutral;
                self.left = Some((target.id.clone(), error.class()));
                self.last_error = Some((target.id.clone(), error));
            }
            Left::OutOfTime => {
                self.all_refused = false;
                self.out_of_time = true;
            }
        }
        Ok(())
    }
}

/// A place under each of `target`'s own limits for `prompt` (`prompt_tokens`
/// long), held until `deadline` and a margin; `Err` when it is at one of them.
pub(super) async fn enter_gates(
    metrics: &Metrics,
    target: &Target,
    prompt: &ChatRequest,
    prompt_tokens: impl FnOnce() -> u64,
    deadline: Instant,
) -> Result<Option<crate::quota::Pass>, ()> {
    if target.gates.is_empty() {
        return Ok(None);
    }
    // Its own name, never the client's request id (which a client may repeat).
    let ticket = uuid::Uuid::new_v4().to_string();
    let max_output = prompt
        .max_completion_tokens
        .or(prompt.max_tokens)
        .map(u64::from);
    let lease = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
    crate::quota::enter(&target.gates, &ticket, prompt_tokens(), max_output, lease)
        .await
        .map_err(|kind| metrics.ratelimit_rejected("target", kind))
}

/// Settles a target's places when its stream ends, on the usage the stream
/// reported (the reservation stands when it reported none).
pub(super) fn settle_pass_at_end(
    chunks: ChunkStream,
    pass: Option<crate::quota::Pass>,
) -> ChunkStream {
    let Some(pass) = pass else {
        return chunks;
    };
    let state = (chunks, Some(pass), None::<u64>);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut chunks, mut pass, mut used)| async move {
            let item = chunks.next().await;
            if let Some(Ok(chunk)) = &item
                && let Some(usage) = chunk.usage
            {
                used = Some(usage.prompt_tokens + usage.completion_tokens);
            }
            if matches!(item, None | Some(Err(_)))
                && let Some(pass) = pass.take()
            {
                pass.settle(used).await;
            }
            Some((item?, (chunks, pass, used)))
        },
    ))
}

/// Waits for a stream's first chunk with content, holding back empty role
/// announcements so that a failure before any content can still fail over.
pub(super) async fn first_content(mut stream: ChunkStream) -> Result<ChunkStream, UpstreamError> {
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

/// Ends a stream with a timeout error when it goes quiet for `idle`, or when the
/// request's deadline passes. Quiet after the finish chunk (a provider slow to send
/// its usage or `[DONE]`) ends it cleanly: the answer is complete.
pub(super) fn with_deadlines(
    chunks: ChunkStream,
    idle: Duration,
    deadline: Instant,
) -> ChunkStream {
    Box::pin(futures_util::stream::unfold(
        Some((chunks, false)),
        move |state| async move {
            let (mut chunks, finished) = state?;
            let by = deadline.min(Instant::now().checked_add(idle).unwrap_or(deadline));
            match timeout_at(by, chunks.next()).await {
                Ok(Some(item)) => {
                    let finished = finished || item.as_ref().is_ok_and(ChatChunk::is_finish);
                    Some((item, Some((chunks, finished))))
                }
                Ok(None) | Err(_) if finished => None,
                Ok(None) => None,
                Err(_) => {
                    let phase = match by == deadline {
                        true => TimeoutPhase::Total,
                        false => TimeoutPhase::Idle,
                    };
                    Some((Err(UpstreamError::Timeout(phase)), None))
                }
            }
        },
    ))
}

fn provider_reason(error: &UpstreamError) -> String {
    match error {
        UpstreamError::Status { detail, .. } => detail.message.clone(),
        other => other.to_string(),
    }
}

/// The error for a request no target answered.
pub(super) fn exhausted(
    route: &Route,
    attempts: usize,
    asked_waits: &[Duration],
    last: Option<(Arc<str>, UpstreamError)>,
    all_refused: bool,
) -> GatewayError {
    // A request every target refused as such (too long, a bad parameter, refused on
    // content grounds) is the client's to fix, not an outage to wait out.
    if all_refused
        && let Some((_, error @ UpstreamError::Status { status, detail, .. })) = &last
        && (400..500).contains(status)
    {
        if error.is_content_filter() {
            return GatewayError::ContentFilter(detail.message.clone());
        }
        return GatewayError::UpstreamRejected {
            message: detail.message.clone(),
            context_length: detail.code.as_deref() == Some("context_length_exceeded"),
        };
    }
    let now = Instant::now();
    // Wait for the first provider that asked for a pause, or the first open breaker
    // to let a probe through, whichever is sooner.
    let retry_after = asked_waits
        .iter()
        .copied()
        .chain(route.targets.iter().filter_map(|t| {
            let secs = t.breaker.snapshot(now).retry_in_secs?;
            Some(Duration::from_secs_f64(secs))
        }))
        .min()
        .unwrap_or(DEFAULT_RETRY_AFTER)
        .clamp(Duration::from_secs(1), Duration::from_secs(300));
    let message = match last {
        // A misconfigured target's own words (which can quote a key's last
        // characters) stay in the gateway's log.
        Some((target, error)) if classify(&error, false).config_error => format!(
            "every target of `{}` failed ({} attempts); the last, {target}, is misconfigured \
             ({}: see the gateway's log)",
            route.alias,
            attempts,
            error.class()
        ),
        Some((target, error)) => format!(
            "every target of `{}` failed ({} attempts); the last, {target}, said: {error}",
            route.alias, attempts
        ),
        None if attempts == 0 => format!(
            "every target of `{}` is unavailable (circuit open, or at its own limit) or out of time",
            route.alias
        ),
        None => format!("`{}` ran out of time", route.alias),
    };
    GatewayError::Unavailable {
        message,
        retry_after,
    }
}
