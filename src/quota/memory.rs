//! The counters in this process: exact for one gateway, and what each replica
//! falls back on while Redis is away. Time is tokio's, so tests can pause it.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Charge, Counters, CountersDown, Rule, Standing, Taken, rate_adjust, rate_step};

/// Sweep counters that are whole again once every this many takes.
const SWEEP_EVERY: u64 = 4096;

pub struct MemoryCounters {
    start: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Rate counters: their theoretical arrival time, in seconds since `start`.
    rates: HashMap<String, f64>,
    /// In-flight places: ticket → when its lease ends.
    in_flight: HashMap<String, HashMap<String, f64>>,
    /// Spend: the amount, and when its period ends.
    spent: HashMap<String, (f64, f64)>,
    takes: u64,
}

impl Default for MemoryCounters {
    fn default() -> Self {
        MemoryCounters {
            start: Instant::now(),
            state: Mutex::default(),
        }
    }
}

impl MemoryCounters {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn standing(&mut self, now: f64, charge: &Charge) -> Standing {
        match charge.rule {
            Rule::Rate { limit, period } => {
                let tat = self.rates.get(&charge.counter).copied().unwrap_or(now);
                rate_step(tat, now, limit, period.as_secs_f64(), charge.amount).0
            }
            Rule::InFlight { limit, lease } => {
                let held = slot(&mut self.in_flight, &charge.counter, HashMap::new);
                held.retain(|_, ends| *ends > now);
                let fits = (held.len() as u64) < limit;
                let soonest = held.values().fold(f64::INFINITY, |a, b| a.min(*b));
                Standing {
                    fits,
                    remaining: (limit as f64 - held.len() as f64 - 1.0).max(0.0),
                    reset: secs(if soonest.is_finite() {
                        soonest - now
                    } else {
                        0.0
                    }),
                    retry_after: Some(match fits {
                        true => std::time::Duration::ZERO,
                        // A place frees when a call ends: soon, as a rule; the
                        // lease is only the bound.
                        false => std::time::Duration::from_secs(1).min(lease),
                    }),
                }
            }
            Rule::Budget { limit, ends_in } => {
                let spent = self.spent.get(&charge.counter).map_or(0.0, |(s, _)| *s);
                let fits = spent + charge.amount <= limit;
                Standing {
                    fits,
                    remaining: (limit - spent - if fits { charge.amount } else { 0.0 }).max(0.0),
                    reset: ends_in,
                    retry_after: (charge.amount <= limit).then_some(ends_in),
                }
            }
        }
    }

    fn apply(&mut self, now: f64, ticket: &str, charge: &Charge) {
        match charge.rule {
            Rule::Rate { limit, period } => {
                let tat = slot(&mut self.rates, &charge.counter, || now);
                *tat = rate_step(*tat, now, limit, period.as_secs_f64(), charge.amount).1;
            }
            Rule::InFlight { lease, .. } => {
                let held = slot(&mut self.in_flight, &charge.counter, HashMap::new);
                held.insert(ticket.to_owned(), now + lease.as_secs_f64());
            }
            Rule::Budget { ends_in, .. } => {
                let spent = slot(&mut self.spent, &charge.counter, || {
                    (0.0, now + ends_in.as_secs_f64())
                });
                spent.0 += charge.amount;
            }
        }
    }

    /// Drops what no longer holds anything back.
    fn sweep(&mut self, now: f64) {
        self.rates.retain(|_, tat| *tat > now);
        self.in_flight.retain(|_, held| {
            held.retain(|_, ends| *ends > now);
            !held.is_empty()
        });
        self.spent.retain(|_, (_, ends)| *ends > now);
    }
}

/// The counter named `name`, made with `new` the first time: the name is copied
/// only then, not on every call that finds it.
fn slot<'a, V>(map: &'a mut HashMap<String, V>, name: &str, new: impl FnOnce() -> V) -> &'a mut V {
    if !map.contains_key(name) {
        map.insert(name.to_owned(), new());
    }
    map.get_mut(name).expect("inserted above")
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(std::time::Duration::MAX)
}

#[async_trait]
impl Counters for MemoryCounters {
    async fn take(&self, ticket: &str, charges: &[Charge]) -> Result<Taken, CountersDown> {
        let now = self.now();
        let mut state = self.lock();
        state.takes += 1;
        if state.takes.is_multiple_of(SWEEP_EVERY) {
            state.sweep(now);
        }
        let standings: Vec<Standing> = charges.iter().map(|c| state.standing(now, c)).collect();
        let admitted = standings.iter().all(|s| s.fits);
        if admitted {
            for charge in charges {
                state.apply(now, ticket, charge);
            }
        }
        Ok(Taken {
            admitted,
            standings,
        })
    }

    async fn peek(&self, charges: &[Charge]) -> Result<Vec<Standing>, CountersDown> {
        let now = self.now();
        let mut state = self.lock();
        Ok(charges.iter().map(|c| state.standing(now, c)).collect())
    }

    async fn settle(&self, ticket: &str, charges: &[Charge]) -> Result<(), CountersDown> {
        let now = self.now();
        let mut state = self.lock();
        for charge in charges {
            match charge.rule {
                Rule::Rate { limit, period } => {
                    if let Some(tat) = state.rates.get_mut(&charge.counter) {
                        *tat = rate_adjust(*tat, now, limit, period.as_secs_f64(), charge.amount);
                    } else if charge.amount > 0.0 {
                        let tat = rate_adjust(now, now, limit, period.as_secs_f64(), charge.amount);
                        state.rates.insert(charge.counter.clone(), tat);
                    }
                }
                Rule::InFlight { .. } => {
                    if let Some(held) = state.in_flight.get_mut(&charge.counter) {
                        held.remove(ticket);
                    }
                }
                Rule::Budget { .. } => state.apply(now, ticket, charge),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rpm(limit: u64) -> Charge {
        Charge {
            counter: "k/rpm".into(),
            rule: Rule::Rate {
                limit,
                period: Duration::from_secs(60),
            },
            amount: 1.0,
        }
    }

    fn place(limit: u64) -> Charge {
        Charge {
            counter: "k/conc".into(),
            rule: Rule::InFlight {
                limit,
                lease: Duration::from_secs(30),
            },
            amount: 1.0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn all_or_nothing_and_places_come_back() {
        let counters = MemoryCounters::default();
        let both = [rpm(3), place(2)];
        assert!(counters.take("a", &both).await.unwrap().admitted);
        assert!(counters.take("b", &both).await.unwrap().admitted);
        // The places are full: the rate is not charged for the refusal.
        let refused = counters.take("c", &both).await.unwrap();
        assert!(!refused.admitted && refused.standings[0].fits && !refused.standings[1].fits);
        counters.settle("a", &[place(2)]).await.unwrap();
        let third = counters.take("c", &both).await.unwrap();
        assert!(third.admitted && third.standings[0].remaining == 0.0);
        assert!(!counters.take("d", &[rpm(3)]).await.unwrap().admitted);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(counters.take("d", &[rpm(3)]).await.unwrap().admitted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_place_is_freed_by_its_lease() {
        let counters = MemoryCounters::default();
        assert!(counters.take("gone", &[place(1)]).await.unwrap().admitted);
        assert!(!counters.take("next", &[place(1)]).await.unwrap().admitted);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(counters.take("next", &[place(1)]).await.unwrap().admitted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_holds_its_amount_and_settles_actual_spend() {
        let counters = MemoryCounters::default();
        let spend = |amount| Charge {
            counter: "t/budget/2026-12".into(),
            rule: Rule::Budget {
                limit: 10.0,
                ends_in: Duration::from_secs(3600),
            },
            amount,
        };
        assert!(counters.take("a", &[spend(6.0)]).await.unwrap().admitted);
        assert!(!counters.take("b", &[spend(6.0)]).await.unwrap().admitted);
        // The call cost 2, not the 6 reserved.
        counters.settle("a", &[spend(-4.0)]).await.unwrap();
        let taken = counters.take("b", &[spend(6.0)]).await.unwrap();
        assert!(taken.admitted);
        assert_eq!(taken.standings[0].remaining, 2.0);
    }
}
