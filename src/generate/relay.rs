//! Calls to a provider API's other endpoints (rerank): a route's remote targets
//! in order, with the same breakers, retries, back-off, deadlines and failover as
//! chat, for one JSON answer. The local targets are the caller's to stand in with.

use std::sync::Arc;

use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use super::retry::{Disposition, classify};
use super::router::{Left, Walk, exhausted};
use super::{Attempt, Route, Target, TimeoutPhase, UpstreamError};
use crate::call::AttemptKind;
use crate::error::GatewayError;
use crate::resilience::{BreakerState, Verdict};
use crate::telemetry::Metrics;

/// What a relayed call did: every attempt, and the answer with who gave it.
pub struct Relayed<T> {
    pub attempts: Vec<Attempt>,
    pub result: Result<(Arc<str>, T), GatewayError>,
}

/// POSTs `body(target)` to `path` on each remote target of `route` until one
/// gives an answer `read` accepts (one it refuses is a malformed answer: the
/// target failed), within `deadline`.
pub async fn relay<T>(
    metrics: &Metrics,
    route: &Route,
    path: &str,
    body: impl Fn(&Target) -> Value,
    read: impl Fn(Value) -> Result<T, String>,
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
            path,
            read: &read,
        };
        let left = match call.tries(&body(target), deadline).await {
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
struct Call<'a, R> {
    metrics: &'a Metrics,
    route: &'a Route,
    target: &'a Target,
    path: &'a str,
    read: &'a R,
}

impl<R, T> Call<'_, R>
where
    R: Fn(Value) -> Result<T, String>,
{
    /// The target's attempts, its breaker permitting, retried as chat's are.
    async fn tries(&self, body: &Value, deadline: Instant) -> (Vec<Attempt>, Result<T, Left>) {
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
            let result = self.attempt(body, deadline).await;
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
    async fn attempt(&self, body: &Value, deadline: Instant) -> Result<T, UpstreamError> {
        let target = self.target;
        let answer_by = Instant::now()
            .checked_add(target.deadlines.first_token)
            .map_or(deadline, |t| t.min(deadline));
        let asked = target.provider.post_json(&target.model, self.path, body);
        match timeout_at(answer_by, asked).await {
            Ok(answer) => (self.read)(answer?).map_err(UpstreamError::Protocol),
            Err(_) if answer_by == deadline => Err(UpstreamError::Timeout(TimeoutPhase::Total)),
            Err(_) => Err(UpstreamError::Timeout(TimeoutPhase::FirstToken)),
        }
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
