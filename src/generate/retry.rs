//! Retry: what to do after a failed attempt ([`classify`]); how long to wait before
//! the next one on the same target is [`crate::resilience::RetryPolicy::wait`].

use super::error::{TimeoutPhase, UpstreamError};
use crate::resilience::Verdict;

/// What the router does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try the same target again, after a wait, while attempts and the deadline allow.
    Retry,
    /// This target will not answer this request: move on to the next.
    NextTarget,
    /// The answer is the provider's, and it goes back to the client.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub disposition: Disposition,
    /// What the failure says about the target's health.
    pub verdict: Verdict,
    /// The target is misconfigured (a bad key, an unknown model): counted apart, so
    /// operators see it is not an outage.
    pub config_error: bool,
}

const fn class(disposition: Disposition, verdict: Verdict, config_error: bool) -> Classified {
    Classified {
        disposition,
        verdict,
        config_error,
    }
}

const RETRY: Classified = class(Disposition::Retry, Verdict::Failure, false);
const DOWN: Classified = class(Disposition::NextTarget, Verdict::Failure, false);
const MISCONFIGURED: Classified = class(Disposition::NextTarget, Verdict::Failure, true);
/// The request, not the target, is the problem; another target may still take it.
const NOT_HERE: Classified = class(Disposition::NextTarget, Verdict::Neutral, false);

/// Classifies a failed attempt. `failover_on_content_filter` is the route's choice
/// for refusals on content grounds.
pub fn classify(error: &UpstreamError, failover_on_content_filter: bool) -> Classified {
    if error.is_content_filter() {
        let disposition = match failover_on_content_filter {
            true => Disposition::NextTarget,
            false => Disposition::Stop,
        };
        return class(disposition, Verdict::Neutral, false);
    }
    match error {
        UpstreamError::Connect(_) | UpstreamError::Interrupted(_) | UpstreamError::Truncated => {
            RETRY
        }
        // The request's own budget ran out: no fault of the target's.
        UpstreamError::Timeout(TimeoutPhase::Total) => NOT_HERE,
        // A provider that says nothing in time is not asked again in this request.
        UpstreamError::Timeout(_) => DOWN,
        UpstreamError::Protocol(_) => DOWN,
        UpstreamError::Status { status, detail, .. } => {
            match detail.code.as_deref() {
                Some("40101") => return MISCONFIGURED,
                Some("42901" | "50003") => return RETRY,
                Some("context_length_exceeded") => return NOT_HERE,
                _ => {}
            }
            if detail.message.contains("price of the model is not set") {
                return MISCONFIGURED; // Qiniu: a wrong model id
            }
            if detail.kind.as_deref() == Some("quota_exceeded_error") {
                return DOWN;
            }
            match status {
                408 | 429 | 500 | 502 | 503 | 504 => RETRY,
                401 | 403 | 404 => MISCONFIGURED,
                400..=499 => NOT_HERE,
                _ => DOWN,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::error::ProviderError;

    fn status(status: u16, kind: Option<&str>, code: Option<&str>, message: &str) -> UpstreamError {
        UpstreamError::Status {
            status,
            detail: ProviderError {
                message: message.to_owned(),
                kind: kind.map(str::to_owned),
                code: code.map(str::to_owned),
            },
            retry_after: None,
        }
    }

    #[test]
    fn the_rules() {
        use Disposition::*;
        let cases = [
            (UpstreamError::Connect("refused".into()), Retry, false),
            (
                UpstreamError::Timeout(TimeoutPhase::FirstToken),
                NextTarget,
                false,
            ),
            (status(429, None, None, "slow down"), Retry, false),
            (status(408, None, None, "timeout"), Retry, false),
            (status(500, None, None, "oops"), Retry, false),
            (status(502, None, None, "bad gateway"), Retry, false),
            (status(503, None, None, "busy"), Retry, false),
            (status(504, None, None, "timeout"), Retry, false),
            (status(429, None, Some("42901"), "rate"), Retry, false),
            (
                status(200, None, Some("50003"), "model timeout"),
                Retry,
                false,
            ),
            (status(401, None, Some("40101"), "auth"), NextTarget, true),
            (
                status(401, None, None, "authorization header missing"),
                NextTarget,
                true,
            ),
            (status(403, None, None, "forbidden"), NextTarget, true),
            (
                status(404, None, Some("model_not_found"), "no model"),
                NextTarget,
                true,
            ),
            (
                status(
                    503,
                    Some("quota_exceeded_error"),
                    None,
                    "the price of the model is not set (model: x)",
                ),
                NextTarget,
                true,
            ),
            (
                status(400, None, Some("context_length_exceeded"), "too long"),
                NextTarget,
                false,
            ),
            (
                status(
                    400,
                    Some("invalid_request_error"),
                    Some("content_policy_violation"),
                    "no",
                ),
                Stop,
                false,
            ),
            (
                status(422, None, None, "unsupported parameter"),
                NextTarget,
                false,
            ),
        ];
        for (error, disposition, config_error) in cases {
            let c = classify(&error, false);
            assert_eq!(c.disposition, disposition, "{error}");
            assert_eq!(c.config_error, config_error, "{error}");
        }
        let filter = status(400, None, Some("content_filter"), "no");
        assert_eq!(
            classify(&filter, true).disposition,
            NextTarget,
            "configurable"
        );
        assert_eq!(classify(&filter, false).verdict, Verdict::Neutral);
    }
}
