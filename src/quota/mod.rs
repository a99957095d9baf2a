//! Counters that limits and budgets are held by: requests and tokens per period,
//! calls in flight, spend per period. All of a call's charges are taken together
//! or none is ([`Counters::take`]), and corrected when the call ends
//! ([`Counters::settle`]). In memory for one gateway ([`memory::MemoryCounters`]),
//! or in Redis shared by replicas ([`redis::RedisCounters`]).
//!
//! Rates are a generic cell rate algorithm (GCRA): a counter is one number, the
//! time at which its allowance would be whole again; a limit of N per period
//! admits a burst of N and then refills continuously, as OpenAI's limits do. A
//! sliding window would need a log per counter to be exact (or lets a burst of 2N
//! through at a window's edge when approximated); GCRA is exact with one number,
//! and takes weighted amounts (tokens) as easily as requests.

mod gate;
pub mod memory;
pub mod redis;

pub use gate::{Gate, Pass, enter};

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Requests and tokens over time, and calls at once; each unset is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt and completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Tokens per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpd: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
}

/// A minute and a day, the periods of `rpm`, `tpm` and `tpd`.
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// Which of [`Limits`] a charge counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Rpm,
    Tpm,
    Tpd,
    Concurrency,
}

impl LimitKind {
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Rpm => "rpm",
            LimitKind::Tpm => "tpm",
            LimitKind::Tpd => "tpd",
            LimitKind::Concurrency => "concurrency",
        }
    }
}

/// The charges of `limits` for one call, each counted under `{prefix}/{kind}`:
/// `requests` (1, or 0 to look), `tokens`, and a place kept at most `lease`.
pub fn charges(
    prefix: &str,
    limits: &Limits,
    requests: f64,
    tokens: u64,
    lease: Duration,
) -> Vec<(LimitKind, Charge)> {
    let tokens = tokens as f64;
    let rates = [
        (limits.rpm, LimitKind::Rpm, MINUTE, requests),
        (limits.tpm, LimitKind::Tpm, MINUTE, tokens),
        (limits.tpd, LimitKind::Tpd, DAY, tokens),
    ];
    let mut out: Vec<(LimitKind, Charge)> = rates
        .into_iter()
        .filter_map(|(limit, kind, period, amount)| {
            let rule = Rule::Rate {
                limit: limit?,
                period,
            };
            let counter = format!("{prefix}/{}", kind.name());
            Some((
                kind,
                Charge {
                    counter,
                    rule,
                    amount,
                },
            ))
        })
        .collect();
    if let Some(limit) = limits.concurrency {
        let rule = Rule::InFlight { limit, lease };
        let counter = format!("{prefix}/concurrency");
        let charge = Charge {
            counter,
            rule,
            amount: 1.0,
        };
        out.push((LimitKind::Concurrency, charge));
    }
    out
}

/// What a counter holds a call to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// `limit` per `period`, refilled continuously.
    Rate { limit: u64, period: Duration },
    /// At most `limit` at once; a place not given back (a replica that died) is
    /// freed after `lease`.
    InFlight { limit: u64, lease: Duration },
    /// At most `limit` in the period that ends in `ends_in` (the counter's name
    /// carries the period, so a new one starts empty).
    Budget { limit: f64, ends_in: Duration },
}

/// One charge of a call: `amount` on the counter named `counter`.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub counter: String,
    pub rule: Rule,
    /// Requests (1), tokens, or money; ignored for [`Rule::InFlight`] (one place).
    pub amount: f64,
}

/// How a counter stands after a take: what the `x-ratelimit-*` headers tell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    pub fits: bool,
    /// What could still be taken now.
    pub remaining: f64,
    /// Until the allowance is whole again.
    pub reset: Duration,
    /// Until this charge would fit; `None` when it never can (larger than the
    /// limit itself).
    pub retry_after: Option<Duration>,
}

/// The result of a take: admitted when every charge fits, and each counter's
/// standing, in the order of the charges.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    pub admitted: bool,
    pub standings: Vec<Standing>,
}

/// One limit as the answer's `x-ratelimit-*-requests` or `-tokens` headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the allowance is whole again.
    pub reset: Duration,
}

/// What is left of a budget, in the deployment's currency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetLeft {
    pub remaining: f64,
    pub limit: f64,
}

/// The limits a call stands under after its reservation: the tightest request and
/// token counters of its key and tenant, and the smaller budget left.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Headroom {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
    pub budget: Option<BudgetLeft>,
}

/// A duration as OpenAI's reset headers write it: `20ms`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let text = format!("{secs:.3}");
        return format!("{}s", text.trim_end_matches('0').trim_end_matches('.'));
    }
    let whole = d.as_secs();
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    match h {
        0 => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("the counters cannot be reached: {0}")]
pub struct CountersDown(pub String);

#[async_trait]
pub trait Counters: Send + Sync {
    /// Takes every charge, or none when one does not fit. `ticket` names the call
    /// (its in-flight places are given back under it).
    async fn take(&self, ticket: &str, charges: &[Charge]) -> Result<Taken, CountersDown>;

    /// At the end of the call: `charges` hold the corrections (actual − reserved,
    /// negative to give back), and in-flight places are returned.
    async fn settle(&self, ticket: &str, charges: &[Charge]) -> Result<(), CountersDown>;

    /// How each counter stands, taking nothing (amounts 0: what is left).
    async fn peek(&self, charges: &[Charge]) -> Result<Vec<Standing>, CountersDown>;
}

/// One GCRA step over seconds: the counter's theoretical arrival time `tat`, the
/// time `now`, and `amount` to take. Returns the standing and, when it fits, the
/// new `tat`.
pub fn rate_step(tat: f64, now: f64, limit: u64, period: f64, amount: f64) -> (Standing, f64) {
    let interval = period / limit.max(1) as f64;
    let base = tat.max(now);
    let after = base + amount * interval;
    // A little slack for floating point: N takes of 1 in a fresh period fit.
    let fits = after - now <= period + 1e-9;
    let held = if fits { after } else { base };
    let standing = Standing {
        fits,
        remaining: ((period - (held - now)) / interval + 1e-9).floor().max(0.0),
        reset: secs(held - now),
        retry_after: match amount <= limit as f64 {
            true => Some(secs((after - now - period).max(0.0))),
            false => None,
        },
    };
    (standing, if fits { after } else { tat })
}

/// A correction of `delta` (may be negative) to a rate counter at `tat`: what was
/// reserved and not used is given back, but no allowance is banked beyond whole.
pub fn rate_adjust(tat: f64, now: f64, limit: u64, period: f64, delta: f64) -> f64 {
    let interval = period / limit.max(1) as f64;
    (tat.max(now) + delta * interval).max(now)
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_admits_its_burst_then_refills_evenly() {
        let (mut tat, now) = (0.0, 100.0);
        for i in 0..10 {
            let (standing, next) = rate_step(tat, now, 10, 60.0, 1.0);
            assert!(standing.fits, "take {i}");
            assert_eq!(standing.remaining, f64::from(9 - i));
            tat = next;
        }
        let (refused, same) = rate_step(tat, now, 10, 60.0, 1.0);
        assert!(!refused.fits && same == tat);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(6)));
        assert_eq!(refused.reset, Duration::from_secs(60));
        // One interval later, exactly one more.
        let (later, tat) = rate_step(tat, now + 6.0, 10, 60.0, 1.0);
        assert!(later.fits);
        assert!(!rate_step(tat, now + 6.0, 10, 60.0, 1.0).0.fits);
    }

    #[test]
    fn durations_read_as_openai_writes_them() {
        let cases = [
            (20, "20ms"),
            (1500, "1.5s"),
            (6000, "6s"),
            (360_000, "6m0s"),
            (3_723_000, "1h2m3s"),
        ];
        for (ms, text) in cases {
            assert_eq!(duration_text(Duration::from_millis(ms)), text);
        }
    }

    #[test]
    fn weighted_takes_and_corrections() {
        let now = 0.0;
        let (s, tat) = rate_step(0.0, now, 1000, 60.0, 800.0);
        assert!(s.fits && s.remaining == 200.0);
        assert!(!rate_step(tat, now, 1000, 60.0, 300.0).0.fits);
        // 500 of the 800 were not used: given back.
        let tat = rate_adjust(tat, now, 1000, 60.0, -500.0);
        assert_eq!(rate_step(tat, now, 1000, 60.0, 700.0).0.remaining, 0.0);
        // Never banked beyond a whole allowance.
        assert_eq!(rate_adjust(tat, now, 1000, 60.0, -5000.0), now);
        // More than the limit itself never fits.
        assert_eq!(rate_step(0.0, now, 1000, 60.0, 1001.0).0.retry_after, None);
    }
}
