//! A target's own limits — to stay inside a provider's quota (DeepSeek's calls per
//! day, SiliconFlow's calls per model per minute) — held by the same counters as
//! the callers' limits, so replicas share them. A target at its limit is passed
//! over like one whose breaker is open, and the route goes on to the next.

use std::sync::Arc;
use std::time::Duration;

use super::{Charge, Counters, LimitKind, Limits};

pub struct Gate {
    /// `provider/NAME` or `target/PROVIDER:MODEL`: what the counters are named
    /// under.
    prefix: String,
    limits: Limits,
    counters: Arc<dyn Counters>,
    /// Tokens reserved for an answer whose request sets no `max_tokens`.
    reserve_output: u64,
}

/// A call's places under a target's gates, until it is settled. One dropped
/// unsettled (a stream the client left) frees its places in the background, its
/// reservation standing.
pub struct Pass {
    counters: Arc<dyn Counters>,
    ticket: String,
    taken: Vec<(LimitKind, Charge)>,
}

impl Gate {
    pub fn new(
        prefix: String,
        limits: Limits,
        counters: Arc<dyn Counters>,
        reserve_output: u64,
    ) -> Self {
        Gate {
            prefix,
            limits,
            counters,
            reserve_output,
        }
    }
}

/// Takes the call's request, tokens (its prompt's and the most it may write) and
/// place under every one of `gates` (which share their counters), or none: `Err`
/// names the limit reached (`unavailable` when the counters cannot say).
pub async fn enter(
    gates: &[Arc<Gate>],
    ticket: &str,
    prompt_tokens: u64,
    max_output: Option<u64>,
    lease: Duration,
) -> Result<Option<Pass>, &'static str> {
    let Some(first) = gates.first() else {
        return Ok(None);
    };
    let taken: Vec<(LimitKind, Charge)> = gates
        .iter()
        .flat_map(|gate| {
            let tokens = prompt_tokens + max_output.unwrap_or(gate.reserve_output);
            super::charges(&gate.prefix, &gate.limits, 1.0, tokens, lease)
        })
        .collect();
    let bare: Vec<Charge> = taken.iter().map(|(_, c)| c.clone()).collect();
    let result = first
        .counters
        .take(ticket, &bare)
        .await
        .map_err(|_| "unavailable")?;
    // Counters that admitted everything while away took nothing to give back.
    if result.standings.len() != taken.len() {
        return Ok(None);
    }
    if let Some(((kind, _), _)) = taken.iter().zip(&result.standings).find(|(_, s)| !s.fits) {
        return Err(kind.name());
    }
    Ok(Some(Pass {
        counters: Arc::clone(&first.counters),
        ticket: ticket.to_owned(),
        taken,
    }))
}

impl Pass {
    /// Gives back everything taken, the request too: no call was made (the
    /// target's breaker was open, or time ran out).
    pub async fn refund(mut self) {
        let corrections: Vec<Charge> = std::mem::take(&mut self.taken)
            .into_iter()
            .map(|(kind, charge)| match kind {
                LimitKind::Concurrency => charge,
                _ => Charge {
                    amount: -charge.amount,
                    ..charge
                },
            })
            .collect();
        if let Err(error) = self.counters.settle(&self.ticket, &corrections).await {
            tracing::warn!(%error, "a target's reservation was not given back");
        }
    }

    /// Corrects the tokens to those used (`None`: the reservation stands) and
    /// frees the places.
    pub async fn settle(mut self, used_tokens: Option<u64>) {
        let corrections: Vec<Charge> = std::mem::take(&mut self.taken)
            .into_iter()
            .filter_map(|(kind, charge)| match kind {
                LimitKind::Tpm | LimitKind::Tpd => used_tokens.map(|used| Charge {
                    amount: used as f64 - charge.amount,
                    ..charge
                }),
                LimitKind::Concurrency => Some(charge),
                LimitKind::Rpm => None,
            })
            .collect();
        if corrections.is_empty() {
            return;
        }
        if let Err(error) = self.counters.settle(&self.ticket, &corrections).await {
            tracing::warn!(%error, "a target's reservation was not settled");
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        let unsettled = Pass {
            counters: Arc::clone(&self.counters),
            ticket: std::mem::take(&mut self.ticket),
            taken: std::mem::take(&mut self.taken),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(unsettled.settle(None));
        }
    }
}
