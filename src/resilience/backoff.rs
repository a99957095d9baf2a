//! How long to wait before trying again: exponential back-off with full jitter.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Attempts per target for one request, the first included.
    pub attempts: u32,
    /// The back-off ceiling before the first retry; it doubles with each retry.
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub base: Duration,
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry): "full jitter",
    /// uniform in [0, min(cap, base · 2^(retry−1))], so clients that failed together
    /// do not come back together. `unit` is a random number in [0, 1). A provider's
    /// own `Retry-After` replaces it.
    pub fn wait(&self, retry: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked;
        }
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1).min(20)))
            .min(self.cap);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let ceilings: Vec<_> = (1..=7).map(|n| policy.wait(n, 1.0, None)).collect();
        let ms: Vec<u128> = ceilings.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(policy.wait(3, 0.0, None), Duration::ZERO);
        assert_eq!(policy.wait(3, 0.5, None), Duration::from_millis(400));
        assert_eq!(
            policy.wait(1, 0.3, Some(Duration::from_secs(2))),
            Duration::from_secs(2),
            "Retry-After wins"
        );
    }
}
