//! A circuit breaker per target: a small state machine whose every method takes the
//! current time, so tests drive it with a clock of their own (tokio's paused time in
//! the router, plain instants in unit tests).
//!
//! Written here rather than taken from the `failsafe` crate: failsafe lets *every*
//! call through while half-open (so 200 concurrent requests all land on a provider
//! that is only maybe back), and reads `std::time::Instant` directly, which tokio's
//! paused time cannot move.
//!
//! - **Closed:** calls pass. After `failures` consecutive failures it opens. While
//!   the last call failed (the target is suspect), only one trial call at a time is
//!   let through; the rest skip to the next target instead of piling onto a failing
//!   one.
//! - **Open:** calls are refused at once until `open_for` has passed; each
//!   consecutive opening lasts 1.5 times longer, up to `max_open_for`.
//! - **Half-open:** one probe is let through. Success closes the breaker; failure
//!   opens it again for longer. A probe that ends without a verdict (the client left)
//!   frees the slot for the next caller.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// How long the first opening lasts.
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub open_for: Duration,
    /// The longest an opening may last after repeated failed probes.
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub max_open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failures: 5,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    /// The `ragway_breaker_state` gauge value.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// What became of a call, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Says nothing about the target's health (a refused prompt, a client that left).
    Neutral,
}

#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Phase,
    consecutive_failures: u32,
    /// Openings since the last success: the exponent of the back-off.
    opens: u32,
    in_flight: u32,
    /// While the last call failed, the one call allowed to find out more is out.
    trial_out: bool,
    successes: u64,
    failures: u64,
    rejected: u64,
}

#[derive(Debug, Default, Clone, Copy)]
enum Phase {
    #[default]
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        probing: bool,
    },
}

/// Permission for one call. Record its verdict with [`Permit::record`]; a permit
/// dropped unrecorded (its request was cancelled) counts as [`Verdict::Neutral`].
#[derive(Debug)]
#[must_use]
pub struct Permit {
    breaker: Arc<Breaker>,
    kind: Call,
    recorded: bool,
}

/// Why a call was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// The target is healthy.
    Normal,
    /// The target is suspect (its last call failed): one call at a time.
    Trial,
    /// The breaker is half-open: the one probe.
    Probe,
}

impl Permit {
    /// Records how the call went; returns the state change it caused, if any.
    pub fn record(mut self, verdict: Verdict, now: Instant) -> Transition {
        self.recorded = true;
        self.breaker.settle(self.kind, verdict, now)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker
                .settle(self.kind, Verdict::Neutral, Instant::now());
        }
    }
}

/// A breaker's state for operators (`GET /admin/breakers`).
#[derive(Debug, Clone, Serialize)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub opens: u32,
    pub in_flight: u32,
    /// Seconds until an open breaker lets a probe through.
    pub retry_in_secs: Option<f64>,
    pub successes: u64,
    pub failures: u64,
    pub rejected: u64,
}

/// A state change, for the caller to report.
pub type Transition = Option<BreakerState>;

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Asks to make a call now. `None`: skip this target.
    pub fn try_acquire(self: &Arc<Self>, now: Instant) -> (Option<Permit>, Transition) {
        let mut inner = self.lock();
        let (permit, transition) = match inner.state {
            Phase::Closed if inner.consecutive_failures == 0 => {
                (Some(self.permit(Call::Normal)), None)
            }
            // Suspect: one trial call at a time finds out whether it recovered;
            // calls let through while it was healthy do not count.
            Phase::Closed if inner.trial_out => (None, None),
            Phase::Closed => {
                inner.trial_out = true;
                (Some(self.permit(Call::Trial)), None)
            }
            Phase::Open { until } if now < until => (None, None),
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                let changed = !matches!(inner.state, Phase::HalfOpen { .. });
                inner.state = Phase::HalfOpen { probing: true };
                let transition = changed.then_some(BreakerState::HalfOpen);
                (Some(self.permit(Call::Probe)), transition)
            }
            Phase::HalfOpen { probing: true } => (None, None),
        };
        match &permit {
            Some(_) => inner.in_flight += 1,
            None => inner.rejected += 1,
        }
        (permit, transition)
    }

    fn permit(self: &Arc<Self>, kind: Call) -> Permit {
        Permit {
            breaker: Arc::clone(self),
            kind,
            recorded: false,
        }
    }

    fn settle(&self, kind: Call, verdict: Verdict, now: Instant) -> Transition {
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        if kind == Call::Trial {
            inner.trial_out = false;
        }
        let probe = kind == Call::Probe;
        match verdict {
            Verdict::Success => {
                inner.successes += 1;
                inner.consecutive_failures = 0;
                inner.opens = 0;
                inner.trial_out = false;
                let was_closed = matches!(inner.state, Phase::Closed);
                inner.state = Phase::Closed;
                (!was_closed).then_some(BreakerState::Closed)
            }
            Verdict::Failure => {
                inner.failures += 1;
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                let trips = probe
                    || (matches!(inner.state, Phase::Closed)
                        && inner.consecutive_failures >= self.policy.failures);
                if trips {
                    self.open(&mut inner, now);
                    return Some(BreakerState::Open);
                }
                None
            }
            Verdict::Neutral => {
                if probe && matches!(inner.state, Phase::HalfOpen { .. }) {
                    inner.state = Phase::HalfOpen { probing: false };
                }
                None
            }
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        // ×1.5 per consecutive opening: a long outage is probed less often, yet a
        // provider back after one failed probe is used again within 45 s (defaults).
        let factor = 1.5f64.powi(inner.opens.min(32) as i32);
        let open_for = Duration::try_from_secs_f64(self.policy.open_for.as_secs_f64() * factor)
            .unwrap_or(self.policy.max_open_for)
            .min(self.policy.max_open_for);
        inner.opens = inner.opens.saturating_add(1);
        inner.trial_out = false;
        // Durations are bounded by config validation; saturate all the same.
        let until = now
            .checked_add(open_for)
            .unwrap_or(now + Duration::from_secs(86_400));
        inner.state = Phase::Open { until };
    }

    /// An operator's reset: closed, its failure streak and back-off forgotten (its
    /// totals kept). A call in flight settles as usual.
    pub fn reset(&self) -> Transition {
        let mut inner = self.lock();
        let was_closed = matches!(inner.state, Phase::Closed);
        inner.state = Phase::Closed;
        inner.consecutive_failures = 0;
        inner.opens = 0;
        inner.trial_out = false;
        (!was_closed).then_some(BreakerState::Closed)
    }

    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let inner = self.lock();
        let (state, retry_in_secs) = match inner.state {
            Phase::Closed => (BreakerState::Closed, None),
            Phase::HalfOpen { .. } => (BreakerState::HalfOpen, None),
            // An open breaker whose time is up is half-open to the next caller.
            Phase::Open { until } if now >= until => (BreakerState::HalfOpen, None),
            Phase::Open { until } => (
                BreakerState::Open,
                Some(until.duration_since(now).as_secs_f64()),
            ),
        };
        BreakerSnapshot {
            state,
            consecutive_failures: inner.consecutive_failures,
            opens: inner.opens,
            in_flight: inner.in_flight,
            retry_in_secs,
            successes: inner.successes,
            failures: inner.failures,
            rejected: inner.rejected,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a few counters; a panic elsewhere cannot leave it torn.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_closes_an_open_breaker_and_forgets_its_back_off() {
        let b = breaker();
        let now = Instant::now();
        for _ in 0..10 {
            if let (Some(permit), _) = b.try_acquire(now) {
                permit.record(Verdict::Failure, now);
            }
        }
        assert_eq!(b.snapshot(now).state, BreakerState::Open);
        let failures = b.snapshot(now).failures;
        assert_eq!(b.reset(), Some(BreakerState::Closed));
        let after = b.snapshot(now);
        assert_eq!(after.state, BreakerState::Closed);
        assert_eq!((after.consecutive_failures, after.opens), (0, 0));
        assert_eq!(after.failures, failures, "totals are kept");
        assert!(b.try_acquire(now).0.is_some(), "calls go through at once");
        assert_eq!(b.reset(), None, "already closed");
    }

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(BreakerPolicy {
            failures: 3,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(100),
        }))
    }

    fn fail(b: &Arc<Breaker>, now: Instant) -> Transition {
        let (permit, _) = b.try_acquire(now);
        permit.expect("permitted").record(Verdict::Failure, now)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_once() {
        let b = breaker();
        let t0 = Instant::now();
        assert_eq!(fail(&b, t0), None);
        assert_eq!(fail(&b, t0), None);
        assert_eq!(fail(&b, t0), Some(BreakerState::Open));
        assert!(b.try_acquire(t0).0.is_none(), "open: skipped at once");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.try_acquire(Instant::now()).0.is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let (probe, transition) = b.try_acquire(now);
        assert_eq!(transition, Some(BreakerState::HalfOpen));
        let probe = probe.expect("one probe");
        assert!(b.try_acquire(now).0.is_none(), "only one probe at a time");
        assert_eq!(
            probe.record(Verdict::Success, now),
            Some(BreakerState::Closed)
        );
        assert!(b.try_acquire(now).0.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_openings_back_off_up_to_the_cap() {
        let b = breaker();
        let mut now = Instant::now();
        for _ in 0..3 {
            fail(&b, now);
        }
        let mut waits = Vec::new();
        for _ in 0..4 {
            let retry = b.snapshot(now).retry_in_secs.expect("open");
            waits.push(retry.round() as u64);
            now += Duration::from_secs_f64(retry);
            let (probe, _) = b.try_acquire(now);
            assert_eq!(
                probe.expect("probe").record(Verdict::Failure, now),
                Some(BreakerState::Open)
            );
        }
        assert_eq!(waits, [30, 45, 68, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspect_target_gets_one_call_at_a_time() {
        let b = breaker();
        let now = Instant::now();
        fail(&b, now);
        let (first, _) = b.try_acquire(now);
        let first = first.expect("one call");
        assert!(b.try_acquire(now).0.is_none(), "the others skip");
        first.record(Verdict::Success, now);
        let (a, _) = b.try_acquire(now);
        let (c, _) = b.try_acquire(now);
        assert!(a.is_some() && c.is_some(), "healthy again: no limit");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_admitted_while_healthy_do_not_block_the_trial() {
        let b = breaker();
        let now = Instant::now();
        let (long_stream, _) = b.try_acquire(now);
        let long_stream = long_stream.expect("healthy");
        fail(&b, now); // another call fails while the stream is still running
        let (trial, _) = b.try_acquire(now);
        assert!(
            trial.is_some(),
            "one trial call passes despite the call in flight"
        );
        assert!(b.try_acquire(now).0.is_none(), "but only one");
        drop(trial);
        assert!(
            b.try_acquire(now).0.is_some(),
            "a cancelled trial frees the slot"
        );
        long_stream.record(Verdict::Success, now);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_the_slot() {
        let b = breaker();
        let now = Instant::now();
        for _ in 0..3 {
            fail(&b, now);
        }
        let later = now + Duration::from_secs(30);
        let (probe, _) = b.try_acquire(later);
        drop(probe); // its request was cancelled
        assert!(
            b.try_acquire(later).0.is_some(),
            "the next caller may probe"
        );
        assert_eq!(b.snapshot(later).state, BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_reset_the_count() {
        let b = breaker();
        let now = Instant::now();
        fail(&b, now);
        fail(&b, now);
        let (p, _) = b.try_acquire(now);
        p.unwrap().record(Verdict::Success, now);
        fail(&b, now);
        fail(&b, now);
        assert_eq!(b.snapshot(now).state, BreakerState::Closed);
        assert_eq!(b.snapshot(now).consecutive_failures, 2);
    }
}
