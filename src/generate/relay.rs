//! Calls to a provider API's other endpoints (rerank, speech, OCR, the realtime
//! recogniser's socket): a route's remote targets in order, with the same
//! breakers, retries, back-off, deadlines and failover as chat, for one answer.
//! The local targets are the caller's to stand in with.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use super::retry::{Disposition, classify};
use super::router::{Left, Walk, exhausted};
use super::{Attempt, Route, Target, TimeoutPhase, UpstreamError};
use crate::call::AttemptKind;
use crate::error::GatewayError;
use crate::resilience::{BreakerState, Verdict};
use crate::telemetry::Metrics;
use crate::telemetry::traces;

/// What a relayed call did: every attempt, and the answer with who gave it.
pub struct Relayed<T> {
    pub attempts: Vec<Attempt>,
    pub result: Result<(Arc<str>, T), GatewayError>,
}

/// What is asked of each target in turn: one attempt, bounded by the caller as a
/// whole answer's first token is.
pub trait Asking<T>: Sync {
    fn ask<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<T, UpstreamError>>;
}

/// POSTs `body(target)` to `path` on each remote target of `route` until one
/// gives an answer `read` accepts (one it refuses is a malformed answer: the
/// target failed), within `deadline`.
pub async fn relay<T, B, R>(
    metrics: &Metrics,
    route: &Route,
    path: &str,
    body: B,
    read: R,
    deadline: Instant,
) -> Relayed<T>
where
    B: Fn(&Target) -> Value + Sync,
    R: Fn(Value) -> Result<T, String> + Sync,
{
    let posting = Posting { path, body, read };
    relay_with(metrics, route, &posting, deadline).await
}

/// A JSON body POSTed, its answer read.
struct Posting<'p, B, R> {
    path: &'p str,
    body: B,
    read: R,
}

impl<T, B, R> Asking<T> for Posting<'_, B, R>
where
    B: Fn(&Target) -> Value + Sync,
    R: Fn(Value) -> Result<T, String> + Sync,
{
    fn ask<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<T, UpstreamError>> {
        Box::pin(async move {
            let body = (self.body)(target);
            let answer = target
                .provider
                .post_json(&target.model, self.path, &body)
                .await?;
            (self.read)(answer).map_err(UpstreamError::Protocol)
        })
    }
}

/// Asks each remote target of `route` in turn until one answers, within
/// `deadline`.
pub async fn relay_with<T>(
    metrics: &Metrics,
    route: &Route,
    asking: &dyn Asking<T>,
    deadline: Instant,
) -> Relayed<T> {
    let mut walk = Walk::default();
    let mut attempts = Vec::new();
    let mut asked_waits = Vec::new();
    for target in route.targets.iter().filter(|t| !t.local) {
        if walk.out_of_time {
            break;
        }
        if let Some((from, reason)) = walk.left.take() {
            metrics.failover(&from, &target.id, reason);
        }
        let call = Call {
            metrics,
            route,
            target,
            asking,
        };
        let left = match call.tries(deadline).await {
            (made, Ok(answer)) => {
                attempts.extend(made);
                return Relayed {
                    attempts,
                    result: Ok((target.id.clone(), answer)),
                };
            }
            (made, Err(left)) => {
                attempts.extend(made);
                left
            }
        };
        if let Left::Failed(error, _) = &left {
            asked_waits.extend(error.retry_after());
        }
        if let Err(refusal) = walk.note(target, left) {
            return Relayed {
                attempts,
                result: Err(refusal),
            };
        }
    }
    let error = exhausted(
        route,
        attempts.len(),
        &asked_waits,
        walk.last_error,
        walk.all_refused,
    );
    Relayed {
        attempts,
        result: Err(error),
    }
}

/// One target asked for one answer.
struct Call<'a, T> {
    metrics: &'a Metrics,
    route: &'a Route,
    target: &'a Target,
    asking: &'a dyn Asking<T>,
}

impl<T> Call<'_, T> {
    /// The target's attempts, its breaker permitting, retried as chat's are.
    async fn tries(&self, deadline: Instant) -> (Vec<Attempt>, Result<T, Left>) {
        let (metrics, target) = (self.metrics, self.target);
        let mut made = Vec::new();
        let mut retries = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return (made, Err(Left::OutOfTime));
            }
            let (permit, transition) = target.breaker.try_acquire(now);
            report(metrics, target, transition);
            let Some(permit) = permit else {
                return (made, Err(Left::Skipped));
            };
            let started = Instant::now();
            let result = self.attempt(deadline).await;
            let latency = started.elapsed();
            let error = match result {
                Ok(answer) => {
                    report(
                        metrics,
                        target,
                        permit.record(Verdict::Success, Instant::now()),
                    );
                    metrics.upstream_attempt(&target.id, "ok", latency, None);
                    made.push(attempt(target, latency, None));
                    return (made, Ok(answer));
                }
                Err(error) => error,
            };
            let classified = classify(&error, self.route.failover_on_content_filter);
            report(
                metrics,
                target,
                permit.record(classified.verdict, Instant::now()),
            );
            let message = error.to_string();
            metrics.upstream_attempt(&target.id, error.class(), latency, Some(&message));
            if classified.config_error {
                metrics.config_error(&target.id, &message);
            }
            made.push(attempt(target, latency, Some(&error)));
            if classified.disposition != Disposition::Retry {
                return (made, Err(Left::Failed(error, classified.disposition)));
            }
            retries += 1;
            let wait = target
                .retry
                .wait(retries, fastrand::f64(), error.retry_after());
            let past_deadline = Instant::now()
                .checked_add(wait)
                .is_none_or(|t| t >= deadline);
            if retries >= target.retry.attempts || wait > target.retry.cap || past_deadline {
                return (made, Err(Left::Failed(error, Disposition::NextTarget)));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: a whole answer, bounded as a whole chat answer's first token.
    async fn attempt(&self, deadline: Instant) -> Result<T, UpstreamError> {
        let target = self.target;
        let answer_by = Instant::now()
            .checked_add(target.deadlines.first_token)
            .map_or(deadline, |t| t.min(deadline));
        let span = traces::Attempt::start(self.route.kind.name(), &target.id);
        let answer = match timeout_at(answer_by, span.run(self.asking.ask(target))).await {
            Ok(answer) => answer,
            Err(_) if answer_by == deadline => Err(UpstreamError::Timeout(TimeoutPhase::Total)),
            Err(_) => Err(UpstreamError::Timeout(TimeoutPhase::FirstToken)),
        };
        span.end(answer.as_ref().err().map(UpstreamError::class));
        answer
    }
}

fn attempt(
    target: &Target,
    latency: std::time::Duration,
    error: Option<&UpstreamError>,
) -> Attempt {
    Attempt {
        target: target.id.clone(),
        latency,
        failure: error.map(UpstreamError::failure),
        kind: AttemptKind::Plain,
    }
}

fn report(metrics: &Metrics, target: &Target, transition: Option<BreakerState>) {
    if let Some(state) = transition {
        metrics.breaker_changed(&target.id, state);
    }
}
