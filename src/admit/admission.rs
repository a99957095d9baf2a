//! The admission point: before any work starts, a call reserves what it may
//! spend — a request, its tokens, a place in flight, money — against its key's and
//! its tenant's limits and budgets, all at once or not at all; when it ends, the
//! reservation is settled on what it used. A refusal is OpenAI's 429 with its
//! headers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::ClientKeys;
use super::grant::Grant;
use crate::call::{Call, Caller, Price};
use crate::error::GatewayError;
use crate::quota::{BudgetLeft, Charge, Counters, Headroom, LimitKind, Rule, Standing, Window};
use crate::telemetry::Metrics;

/// What a call may spend, reserved before it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ask {
    /// Its prompt's tokens, counted ([`crate::tokens`]).
    pub prompt_tokens: u64,
    /// The most it may write (`max_tokens`); unset, the admission's default.
    pub max_output: Option<u64>,
}

impl Ask {
    pub fn chat(request: &crate::wire::ChatRequest) -> Ask {
        Ask {
            prompt_tokens: crate::tokens::prompt_tokens(request),
            max_output: request
                .max_completion_tokens
                .or(request.max_tokens)
                .map(u64::from),
        }
    }
}

/// What a call spent, known when it ends: the tokens, and the target that served
/// them (whose price they cost).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Used {
    pub prompt_tokens: u64,
    /// Of the prompt's, those the provider served from its cache.
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub target: Option<Arc<str>>,
}

/// A call's reservation, held until it is settled. One dropped unsettled (a
/// client that left before a whole answer) is settled in the background on its
/// prompt alone, so its place is freed and its reservation given back.
pub struct Permit {
    /// Names this reservation's places: its own, never the client's request id
    /// (a client that sent one id on every call would share one place).
    ticket: Arc<str>,
    /// The charges taken, at their reserved amounts.
    taken: Vec<(Kind, Charge)>,
    /// The counters they were taken from, and what the prompt alone costs at the
    /// reservation's price: for a permit dropped unsettled.
    counters: Option<Arc<dyn Counters>>,
    prompt_cost: f64,
    /// The limits as they stand after this call's reservation: the
    /// `x-ratelimit-*` and `x-ragway-budget-remaining` headers of the answer.
    pub headroom: Headroom,
    /// The prompt's tokens as counted: what a call that ends without the
    /// provider's count is settled on, with what it delivered.
    pub prompt_tokens: u64,
    /// Whose spend it is (tenant, alias), for the spend metric.
    spender: Option<(Arc<str>, Arc<str>)>,
}

impl Permit {
    /// Whether settling it does anything: charges to correct, or spend to count.
    pub fn settles(&self) -> bool {
        !self.taken.is_empty() || self.spender.is_some()
    }

    /// A permit that holds no counter (no limits apply, or they were not counted).
    fn counting_nothing(prompt_tokens: u64, spender: Option<(Arc<str>, Arc<str>)>) -> Permit {
        Permit {
            ticket: Arc::from(""),
            taken: Vec::new(),
            counters: None,
            prompt_cost: 0.0,
            headroom: Headroom::default(),
            prompt_tokens,
            spender,
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("ticket", &self.ticket)
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let (Some(counters), false) = (self.counters.take(), self.taken.is_empty()) else {
            return;
        };
        let corrections = corrections(
            std::mem::take(&mut self.taken),
            self.prompt_tokens as f64,
            self.prompt_cost,
        );
        let ticket = Arc::clone(&self.ticket);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = counters.settle(&ticket, &corrections).await {
                    tracing::warn!(%error, "a dropped call's reservation was not settled");
                }
            });
        }
    }
}

/// The corrections that settle `taken` on `tokens` and `cost` used: token and
/// budget counters by the difference, places given back, requests kept.
fn corrections(taken: Vec<(Kind, Charge)>, tokens: f64, cost: f64) -> Vec<Charge> {
    taken
        .into_iter()
        .filter_map(|(kind, charge)| match kind {
            Kind::Tpm | Kind::Tpd => Some(Charge {
                amount: tokens - charge.amount,
                ..charge
            }),
            Kind::Budget => Some(Charge {
                amount: cost - charge.amount,
                ..charge
            }),
            Kind::Concurrency => Some(charge),
            Kind::Rpm => None,
        })
        .collect()
}

#[async_trait]
pub trait Admit: Send + Sync {
    /// Reserves `ask` for the call, or refuses it (429).
    async fn admit(&self, call: &Call<'_>, ask: Ask) -> Result<Permit, GatewayError>;

    /// Corrects the reservation to what the call used, and frees its place.
    async fn settle(&self, permit: Permit, used: Used);

    /// How the caller's limits and budgets stand now (none without any).
    async fn standing(&self, _caller: &Caller) -> Result<Vec<ScopeStanding>, GatewayError> {
        Ok(Vec::new())
    }
}

/// One scope's limits and budget as they stand: what `GET /v1/usage` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScopeStanding {
    /// `key` or `tenant`.
    pub scope: &'static str,
    pub id: String,
    pub limits: Vec<LimitStanding>,
    pub budget: Option<BudgetStanding>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LimitStanding {
    /// `rpm`, `tpm`, `tpd` or `concurrency`.
    pub kind: &'static str,
    pub limit: u64,
    /// What could be taken now (for `concurrency`: places free).
    pub remaining: u64,
    /// Seconds until the allowance is whole again.
    pub reset_seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BudgetStanding {
    pub amount: f64,
    pub period: super::grant::Period,
    pub spent: f64,
    pub remaining: f64,
    pub currency: String,
    /// Seconds until the period ends and the budget renews.
    pub renews_in_seconds: f64,
}

/// Admits every call and counts nothing: a pass-through, for a gateway without
/// `[governance]`.
pub struct Unlimited;

#[async_trait]
impl Admit for Unlimited {
    async fn admit(&self, _call: &Call<'_>, ask: Ask) -> Result<Permit, GatewayError> {
        Ok(Permit::counting_nothing(ask.prompt_tokens, None))
    }

    async fn settle(&self, _permit: Permit, _used: Used) {}
}

/// How budgets are kept: in which currency, from which share on they are
/// reported, and where the calendar's days begin.
#[derive(Debug, Clone)]
pub struct BudgetSettings {
    pub currency: String,
    /// The share spent from which the budget is reported as nearly used (0.8).
    pub soft: f64,
    pub offset: time::UtcOffset,
}

/// The limits and budgets of keys and tenants as the key table sets them, held by
/// `counters`.
pub struct Admission {
    keys: Arc<ClientKeys>,
    counters: Arc<dyn Counters>,
    metrics: Arc<Metrics>,
    /// Tokens reserved for the answer of a request that sets no `max_tokens`.
    reserve_output: u64,
    /// Each target's price, and each alias's dearest target's (what its calls
    /// are reserved at).
    prices: HashMap<String, Price>,
    dearest: HashMap<String, Price>,
    budgets: BudgetSettings,
    /// Budget periods already reported as nearly spent (once each).
    warned: Mutex<HashSet<String>>,
}

/// Budget periods remembered as reported, at most.
const MAX_WARNED: usize = 100_000;

/// What a counter counts, for headers, messages, metrics and settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rpm,
    Tpm,
    Tpd,
    Concurrency,
    Budget,
}

impl From<LimitKind> for Kind {
    fn from(kind: LimitKind) -> Kind {
        match kind {
            LimitKind::Rpm => Kind::Rpm,
            LimitKind::Tpm => Kind::Tpm,
            LimitKind::Tpd => Kind::Tpd,
            LimitKind::Concurrency => Kind::Concurrency,
        }
    }
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Rpm => "rpm",
            Kind::Tpm => "tpm",
            Kind::Tpd => "tpd",
            Kind::Concurrency => "concurrency",
            Kind::Budget => "budget",
        }
    }

    fn said(self) -> &'static str {
        match self {
            Kind::Rpm => "requests per minute (RPM)",
            Kind::Tpm => "tokens per minute (TPM)",
            Kind::Tpd => "tokens per day (TPD)",
            Kind::Concurrency => "requests in flight",
            Kind::Budget => "budget",
        }
    }
}

/// Whose counter: a key's or its tenant's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Key,
    Tenant,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Tenant => "tenant",
        }
    }
}

/// What a call reserves in each scope of its grants.
struct Reserve {
    /// 1 for a call, 0 to look without taking.
    requests: f64,
    tokens: u64,
    cost: f64,
    lease: Duration,
}

impl Admission {
    pub fn new(
        keys: Arc<ClientKeys>,
        counters: Arc<dyn Counters>,
        metrics: Arc<Metrics>,
        reserve_output: u64,
        prices: HashMap<String, Price>,
        dearest: HashMap<String, Price>,
        budgets: BudgetSettings,
    ) -> Self {
        Admission {
            keys,
            counters,
            metrics,
            reserve_output,
            prices,
            dearest,
            budgets,
            warned: Mutex::default(),
        }
    }

    /// The caller's key's and tenant's grants that limit anything.
    fn grants<'a>(&self, caller: &'a Caller) -> Vec<(Scope, &'a str, Grant)> {
        let key = caller
            .key_id
            .as_deref()
            .and_then(|id| Some((Scope::Key, id, self.keys.key_grant(id)?)));
        let tenant = (self.keys.tenant_grant(&caller.tenant))
            .map(|grant| (Scope::Tenant, &*caller.tenant, grant));
        key.into_iter()
            .chain(tenant)
            .filter(|(_, _, grant)| *grant != Grant::default())
            .collect()
    }

    /// The charges of `r` in each scope of `grants`.
    fn charges(&self, grants: &[(Scope, &str, Grant)], r: &Reserve) -> Vec<(Scope, Kind, Charge)> {
        let mut out = Vec::new();
        for &(scope, id, grant) in grants {
            let prefix = format!("{}/{id}", scope.name());
            let rates =
                crate::quota::charges(&prefix, &grant.limits, r.requests, r.tokens, r.lease);
            for (kind, charge) in rates {
                out.push((scope, Kind::from(kind), charge));
            }
            if let Some(budget) = grant.budget {
                let now = time::OffsetDateTime::now_utc();
                let (period, ends_in) =
                    super::period::current(budget.period, now, self.budgets.offset);
                let charge = Charge {
                    counter: format!("{prefix}/spend/{period}"),
                    rule: Rule::Budget {
                        limit: budget.amount,
                        ends_in,
                    },
                    amount: r.cost,
                };
                out.push((scope, Kind::Budget, charge));
            }
        }
        out
    }

    /// Reports a budget from its soft share on: a log line once per period, and
    /// the tenant's remaining budget as a gauge.
    fn report_budgets(
        &self,
        tenant: &str,
        charges: &[(Scope, Kind, Charge)],
        standings: &[Standing],
    ) {
        for ((scope, kind, charge), standing) in charges.iter().zip(standings) {
            let Rule::Budget { limit, .. } = charge.rule else {
                continue;
            };
            if *scope == Scope::Tenant {
                self.metrics
                    .budget_remaining(tenant, &self.budgets.currency, standing.remaining);
            }
            let spent = limit - standing.remaining;
            if *kind == Kind::Budget && limit > 0.0 && spent >= limit * self.budgets.soft {
                let first = {
                    let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
                    // One name per key and period: forgotten now and then, so a
                    // long-running replica does not keep every period it has seen.
                    if warned.len() >= MAX_WARNED {
                        warned.clear();
                    }
                    warned.insert(charge.counter.clone())
                };
                if first {
                    tracing::warn!(
                        counter = %charge.counter,
                        spent,
                        limit,
                        currency = %self.budgets.currency,
                        "budget nearly spent"
                    );
                    self.metrics.budget_soft_crossed(scope.name());
                }
            }
        }
    }

    fn refusal(
        &self,
        call: &Call<'_>,
        (scope, kind, charge): &(Scope, Kind, Charge),
        standing: &Standing,
        headroom: Headroom,
    ) -> GatewayError {
        self.metrics.ratelimit_rejected(scope.name(), kind.name());
        let whose = match scope {
            Scope::Tenant => format!("tenant {}", call.caller.tenant),
            Scope::Key => format!("key {}", call.caller.key_id.as_deref().unwrap_or("")),
        };
        let wait = standing.retry_after.map(crate::quota::duration_text);
        let (message, error_kind, code) = match (charge.rule, wait) {
            (Rule::Budget { limit, .. }, _) => (
                format!(
                    "The budget of {whose} is spent: {:.4} of {limit} {} this period; it renews in {}.",
                    limit - standing.remaining,
                    self.budgets.currency,
                    crate::quota::duration_text(standing.reset),
                ),
                "insufficient_quota",
                "insufficient_quota",
            ),
            (Rule::Rate { limit, .. } | Rule::InFlight { limit, .. }, Some(wait)) => (
                format!(
                    "Rate limit reached for {whose} on {}: limit {limit}, requested {}. Please try again in {wait}.",
                    kind.said(),
                    charge.amount,
                ),
                kind_of_error(*kind),
                "rate_limit_exceeded",
            ),
            (Rule::Rate { limit, .. } | Rule::InFlight { limit, .. }, None) => (
                format!(
                    "Request too large for {whose} on {}: limit {limit}, requested {}. Ask for fewer tokens (max_tokens) or send a shorter prompt.",
                    kind.said(),
                    charge.amount,
                ),
                kind_of_error(*kind),
                "rate_limit_exceeded",
            ),
        };
        GatewayError::OverLimit {
            message,
            kind: error_kind,
            code,
            retry_after: standing.retry_after,
            headroom: Box::new(headroom),
        }
    }
}

fn kind_of_error(kind: Kind) -> &'static str {
    match kind {
        Kind::Tpm | Kind::Tpd => "tokens",
        _ => "requests",
    }
}

#[async_trait]
impl Admit for Admission {
    async fn admit(&self, call: &Call<'_>, ask: Ask) -> Result<Permit, GatewayError> {
        let caller = call.caller;
        let tokens = ask.prompt_tokens + ask.max_output.unwrap_or(self.reserve_output);
        // Reserved at the dearest target of the route (unpriced: nothing).
        let price = self.dearest.get(call.alias).copied().unwrap_or_default();
        let cost = price.cost(ask.prompt_tokens, 0, tokens - ask.prompt_tokens);
        // A place is kept at most as long as the call may run, and a little more.
        let lease = call
            .deadline
            .saturating_duration_since(tokio::time::Instant::now())
            + Duration::from_secs(30);
        let reserve = Reserve {
            requests: 1.0,
            tokens,
            cost,
            lease,
        };
        let charges = self.charges(&self.grants(caller), &reserve);
        let spender = Some((Arc::clone(&caller.tenant), Arc::from(call.alias)));
        if charges.is_empty() {
            return Ok(Permit::counting_nothing(ask.prompt_tokens, spender));
        }
        let ticket: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let bare: Vec<Charge> = charges.iter().map(|(_, _, c)| c.clone()).collect();
        let taken = match self.counters.take(&ticket, &bare).await {
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
        // Counters that admitted everything while away report nothing.
        if taken.standings.len() != charges.len() {
            return Ok(Permit::counting_nothing(ask.prompt_tokens, spender));
        }
        let headroom = headroom(&charges, &taken.standings);
        self.report_budgets(&caller.tenant, &charges, &taken.standings);
        if !taken.admitted {
            let (refused, standing) = charges
                .iter()
                .zip(&taken.standings)
                .find(|(_, s)| !s.fits)
                .expect("a refusal has a charge that did not fit");
            return Err(self.refusal(call, refused, standing, headroom));
        }
        let prompt_cost = price.cost(ask.prompt_tokens, 0, 0);
        Ok(Permit {
            ticket,
            taken: charges.into_iter().map(|(_, kind, c)| (kind, c)).collect(),
            counters: Some(Arc::clone(&self.counters)),
            prompt_cost,
            headroom,
            prompt_tokens: ask.prompt_tokens,
            spender,
        })
    }

    async fn settle(&self, mut permit: Permit, used: Used) {
        let cost = used
            .target
            .as_deref()
            .and_then(|t| self.prices.get(t))
            .map_or(0.0, |p| {
                p.cost(
                    used.prompt_tokens,
                    used.cached_tokens,
                    used.completion_tokens,
                )
            });
        if let Some((tenant, alias)) = &permit.spender {
            self.metrics
                .spent(tenant, alias, &self.budgets.currency, cost);
        }
        permit.counters = None; // settled here, not on drop
        if permit.taken.is_empty() {
            return;
        }
        let tokens = (used.prompt_tokens + used.completion_tokens) as f64;
        let corrections = corrections(std::mem::take(&mut permit.taken), tokens, cost);
        if let Err(error) = self.counters.settle(&permit.ticket, &corrections).await {
            tracing::warn!(%error, "a call's reservation was not settled");
        }
    }

    async fn standing(&self, caller: &Caller) -> Result<Vec<ScopeStanding>, GatewayError> {
        let grants = self.grants(caller);
        // Amounts of nothing: what is left, not what one more call would leave.
        let nothing = Reserve {
            requests: 0.0,
            tokens: 0,
            cost: 0.0,
            lease: Duration::ZERO,
        };
        let charges = self.charges(&grants, &nothing);
        let bare: Vec<Charge> = charges.iter().map(|(_, _, c)| c.clone()).collect();
        let standings = self
            .counters
            .peek(&bare)
            .await
            .map_err(|_| GatewayError::Unavailable {
                message: "limits cannot be read now; try again shortly".to_owned(),
                retry_after: Duration::from_secs(1),
            })?;
        let mut out: Vec<ScopeStanding> = grants
            .iter()
            .map(|(scope, id, _)| ScopeStanding {
                scope: scope.name(),
                id: (*id).to_owned(),
                limits: Vec::new(),
                budget: None,
            })
            .collect();
        for ((scope, kind, charge), standing) in charges.iter().zip(&standings) {
            let Some(entry) = out.iter_mut().find(|s| s.scope == scope.name()) else {
                continue;
            };
            match charge.rule {
                Rule::Budget { limit, ends_in } => {
                    let period = grants
                        .iter()
                        .find(|(s, _, _)| s == scope)
                        .and_then(|(_, _, grant)| grant.budget)
                        .map(|b| b.period);
                    entry.budget = period.map(|period| BudgetStanding {
                        amount: limit,
                        period,
                        spent: (limit - standing.remaining).max(0.0),
                        remaining: standing.remaining,
                        currency: self.budgets.currency.clone(),
                        renews_in_seconds: ends_in.as_secs_f64().round(),
                    });
                }
                Rule::Rate { limit, .. } | Rule::InFlight { limit, .. } => {
                    // A place check counts the one it would take.
                    let remaining = match kind {
                        Kind::Concurrency => standing.remaining as u64 + u64::from(standing.fits),
                        _ => standing.remaining as u64,
                    };
                    entry.limits.push(LimitStanding {
                        kind: kind.name(),
                        limit,
                        remaining,
                        reset_seconds: (standing.reset.as_secs_f64() * 1000.0).round() / 1000.0,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The headers' view: the tightest request and token counters (a day's tokens
/// too, when fewer are left of them than of the minute's), the smallest
/// budget left.
fn headroom(charges: &[(Scope, Kind, Charge)], standings: &[Standing]) -> Headroom {
    let mut headroom = Headroom::default();
    for ((_, kind, charge), standing) in charges.iter().zip(standings) {
        match (kind, charge.rule) {
            (Kind::Budget, Rule::Budget { limit, .. }) => {
                let left = BudgetLeft {
                    remaining: standing.remaining,
                    limit,
                };
                if headroom.budget.is_none_or(|b| left.remaining < b.remaining) {
                    headroom.budget = Some(left);
                }
            }
            (Kind::Rpm | Kind::Tpm | Kind::Tpd, Rule::Rate { limit, .. }) => {
                let window = Window {
                    limit,
                    remaining: standing.remaining as u64,
                    reset: standing.reset,
                };
                let slot = match kind {
                    Kind::Rpm => &mut headroom.requests,
                    _ => &mut headroom.tokens,
                };
                if slot.is_none_or(|w| window.remaining < w.remaining) {
                    *slot = Some(window);
                }
            }
            _ => {}
        }
    }
    headroom
}
