//! The admission point: before any work starts, a call reserves what it may
//! spend — a request, its tokens, a place in flight — against its key's and its
//! tenant's limits, all at once or not at all; when it ends, the reservation is
//! settled on what it used. A refusal is OpenAI's 429 with its headers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::ClientKeys;
use super::grant::Limits;
use crate::call::Call;
use crate::error::GatewayError;
use crate::quota::{Charge, Counters, Headroom, Rule, Standing, Window};
use crate::telemetry::Metrics;

/// What a call may spend, reserved before it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ask {
    /// Its prompt's tokens, counted ([`super::estimate`]).
    pub prompt_tokens: u64,
    /// The most it may write (`max_tokens`); unset, the admission's default.
    pub max_output: Option<u64>,
}

impl Ask {
    pub fn chat(request: &crate::wire::ChatRequest) -> Ask {
        Ask {
            prompt_tokens: super::estimate::prompt_tokens(request),
            max_output: request
                .max_completion_tokens
                .or(request.max_tokens)
                .map(u64::from),
        }
    }
}

/// What a call spent, known when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Used {
    pub tokens: u64,
}

/// A call's reservation, held until it is settled.
#[derive(Debug, Default)]
pub struct Permit {
    ticket: Arc<str>,
    /// The charges taken, at their reserved amounts.
    taken: Vec<Charge>,
    /// The limits as they stand after this call's reservation: the
    /// `x-ratelimit-*` headers of the answer.
    pub headroom: Headroom,
    /// The prompt's tokens as counted: what a call that ends without the
    /// provider's count is settled on, with what it delivered.
    pub prompt_tokens: u64,
}

#[async_trait]
pub trait Admit: Send + Sync {
    /// Reserves `ask` for the call, or refuses it (429).
    async fn admit(&self, call: &Call<'_>, ask: Ask) -> Result<Permit, GatewayError>;

    /// Corrects the reservation to what the call used, and frees its place.
    async fn settle(&self, permit: Permit, used: Used);
}

/// Admits every call and counts nothing: a pass-through, for a gateway without
/// `[governance]`.
pub struct Unlimited;

#[async_trait]
impl Admit for Unlimited {
    async fn admit(&self, _call: &Call<'_>, ask: Ask) -> Result<Permit, GatewayError> {
        Ok(Permit {
            prompt_tokens: ask.prompt_tokens,
            ..Permit::default()
        })
    }

    async fn settle(&self, _permit: Permit, _used: Used) {}
}

/// The limits of keys and tenants as the key table sets them, held by `counters`.
pub struct Admission {
    keys: Arc<ClientKeys>,
    counters: Arc<dyn Counters>,
    metrics: Arc<Metrics>,
    /// Tokens reserved for the answer of a request that sets no `max_tokens`.
    reserve_output: u64,
}

/// A minute and a day, the periods of `rpm`, `tpm` and `tpd`.
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// What a counter counts, for headers, messages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rpm,
    Tpm,
    Tpd,
    Concurrency,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Rpm => "rpm",
            Kind::Tpm => "tpm",
            Kind::Tpd => "tpd",
            Kind::Concurrency => "concurrency",
        }
    }

    fn said(self) -> &'static str {
        match self {
            Kind::Rpm => "requests per minute (RPM)",
            Kind::Tpm => "tokens per minute (TPM)",
            Kind::Tpd => "tokens per day (TPD)",
            Kind::Concurrency => "requests in flight",
        }
    }

    fn of(counter: &str) -> Kind {
        match counter.rsplit('/').next() {
            Some("rpm") => Kind::Rpm,
            Some("tpm") => Kind::Tpm,
            Some("tpd") => Kind::Tpd,
            _ => Kind::Concurrency,
        }
    }
}

impl Admission {
    pub fn new(
        keys: Arc<ClientKeys>,
        counters: Arc<dyn Counters>,
        metrics: Arc<Metrics>,
        reserve_output: u64,
    ) -> Self {
        Admission {
            keys,
            counters,
            metrics,
            reserve_output,
        }
    }

    /// The charges of one scope (`key` or `tenant`, named `id`) under `limits`.
    fn charges(
        scope: &str,
        id: &str,
        limits: &Limits,
        tokens: u64,
        lease: Duration,
        out: &mut Vec<Charge>,
    ) {
        let tokens = tokens as f64;
        let rates = [
            (limits.rpm, "rpm", MINUTE, 1.0),
            (limits.tpm, "tpm", MINUTE, tokens),
            (limits.tpd, "tpd", DAY, tokens),
        ];
        for (limit, kind, period, amount) in rates {
            if let Some(limit) = limit {
                out.push(Charge {
                    counter: format!("{scope}/{id}/{kind}"),
                    rule: Rule::Rate { limit, period },
                    amount,
                });
            }
        }
        if let Some(limit) = limits.concurrency {
            out.push(Charge {
                counter: format!("{scope}/{id}/concurrency"),
                rule: Rule::InFlight { limit, lease },
                amount: 1.0,
            });
        }
    }
}

#[async_trait]
impl Admit for Admission {
    async fn admit(&self, call: &Call<'_>, ask: Ask) -> Result<Permit, GatewayError> {
        let caller = call.caller;
        // A place is kept at most as long as the call may run, and a little more.
        let lease = call
            .deadline
            .saturating_duration_since(tokio::time::Instant::now())
            + Duration::from_secs(30);
        let tokens = ask.prompt_tokens + ask.max_output.unwrap_or(self.reserve_output);
        let mut charges = Vec::new();
        if let Some(key) = caller.key_id.as_deref()
            && let Some(limits) = self.keys.key_limits(key)
        {
            Admission::charges("key", key, &limits, tokens, lease, &mut charges);
        }
        if let Some(tenant) = self.keys.tenant(&caller.tenant) {
            let limits = &tenant.limits;
            Admission::charges(
                "tenant",
                &caller.tenant,
                limits,
                tokens,
                lease,
                &mut charges,
            );
        }
        let unlimited = Permit {
            prompt_tokens: ask.prompt_tokens,
            ..Permit::default()
        };
        if charges.is_empty() {
            return Ok(unlimited);
        }
        let ticket: Arc<str> = call.request_id.into();
        let taken = match self.counters.take(&ticket, &charges).await {
            Ok(taken) => taken,
            // Only counters told to refuse while they are away say so (a shared
            // store otherwise falls back on its own).
            Err(error) => {
                tracing::warn!(%error, "limits cannot be checked: call refused");
                return Err(GatewayError::Unavailable {
                    message: "limits cannot be checked now; try again shortly".to_owned(),
                    retry_after: Duration::from_secs(1),
                });
            }
        };
        let headroom = headroom(&charges, &taken.standings);
        if taken.admitted {
            return Ok(Permit {
                ticket,
                taken: charges,
                headroom,
                prompt_tokens: ask.prompt_tokens,
            });
        }
        let (charge, standing) = charges
            .iter()
            .zip(&taken.standings)
            .find(|(_, s)| !s.fits)
            .expect("a refusal has a charge that did not fit");
        let kind = Kind::of(&charge.counter);
        let scope = charge.counter.split('/').next().unwrap_or("key");
        self.metrics.ratelimit_rejected(scope, kind.name());
        let whose = match scope {
            "tenant" => format!("tenant {}", caller.tenant),
            _ => format!("key {}", caller.key_id.as_deref().unwrap_or("")),
        };
        let limit = match charge.rule {
            Rule::Rate { limit, .. } | Rule::InFlight { limit, .. } => limit,
            Rule::Budget { limit, .. } => limit as u64,
        };
        let message = match standing.retry_after {
            Some(wait) => format!(
                "Rate limit reached for {whose} on {}: limit {limit}, requested {}. Please try again in {}.",
                kind.said(),
                charge.amount,
                crate::quota::duration_text(wait)
            ),
            None => format!(
                "Request too large for {whose} on {}: limit {limit}, requested {}. Ask for fewer tokens (max_tokens) or a shorter prompt.",
                kind.said(),
                charge.amount
            ),
        };
        Err(GatewayError::OverLimit {
            message,
            kind: match kind {
                Kind::Tpm | Kind::Tpd => "tokens",
                Kind::Rpm | Kind::Concurrency => "requests",
            },
            code: "rate_limit_exceeded",
            retry_after: standing.retry_after,
            headroom: Box::new(headroom),
        })
    }

    async fn settle(&self, permit: Permit, used: Used) {
        if permit.taken.is_empty() {
            return;
        }
        let corrections: Vec<Charge> = permit
            .taken
            .into_iter()
            .filter_map(|charge| match Kind::of(&charge.counter) {
                Kind::Tpm | Kind::Tpd => Some(Charge {
                    amount: used.tokens as f64 - charge.amount,
                    ..charge
                }),
                Kind::Concurrency => Some(charge),
                Kind::Rpm => None,
            })
            .collect();
        if let Err(error) = self.counters.settle(&permit.ticket, &corrections).await {
            tracing::warn!(%error, "a call's reservation was not settled");
        }
    }
}

/// The headers' view: the tightest request and token counters.
fn headroom(charges: &[Charge], standings: &[Standing]) -> Headroom {
    let mut headroom = Headroom::default();
    for (charge, standing) in charges.iter().zip(standings) {
        let Rule::Rate { limit, .. } = charge.rule else {
            continue;
        };
        let window = Window {
            limit,
            remaining: standing.remaining as u64,
            reset: standing.reset,
        };
        let slot = match Kind::of(&charge.counter) {
            Kind::Rpm => &mut headroom.requests,
            Kind::Tpm => &mut headroom.tokens,
            _ => continue,
        };
        if slot.is_none_or(|w| window.remaining < w.remaining) {
            *slot = Some(window);
        }
    }
    headroom
}
