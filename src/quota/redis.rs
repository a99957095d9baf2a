//! The counters in Redis, shared by every replica: a call's charges are checked
//! and taken by one script, in one round trip, atomically, on Redis's own clock
//! (so replicas' clocks need not agree).
//!
//! While Redis is away, `on_down` decides: each replica holds its share of every
//! limit in memory (`local`: the limit divided by the replicas seen alive in the
//! last minute), admits everything (`open`) or nothing (`closed`). What was spent
//! locally meanwhile is added to Redis's budgets when it is back, so that they lose
//! nothing to the outage; rates refill with time, and start again from what Redis
//! held (replaying them would lock a busy key out for as long as the outage).
//!
//! GCRA rather than a sliding window: one number per counter, one script, exact
//! for bursts and weighted amounts alike (see the module above).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::memory::MemoryCounters;
use super::{Charge, Counters, CountersDown, Rule, Standing, Taken};
use crate::resilience::redis::GuardedRedis;
use crate::telemetry::Metrics;

/// What a replica does while Redis is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDown {
    /// Holds its share of each limit in memory.
    Local,
    /// Admits every call (counts nothing).
    Open,
    /// Refuses every call that has limits (503).
    Closed,
}

/// Corrections kept for Redis while it is away, at most this many (the oldest go).
const MAX_PENDING: usize = 100_000;

/// How often a replica says it is alive, and how long one is counted after.
const HEARTBEAT: Duration = Duration::from_secs(5);
const ALIVE_FOR: Duration = Duration::from_secs(60);

pub struct RedisCounters {
    redis: GuardedRedis,
    prefix: String,
    on_down: OnDown,
    instance: String,
    take: redis::Script,
    settle: redis::Script,
    heartbeat: redis::Script,
    /// This replica's share of the limits while Redis is away.
    local: MemoryCounters,
    /// Tickets taken locally: their settlement stays local.
    local_tickets: Mutex<HashSet<String>>,
    /// Spent locally (budgets), to be added to Redis when it is back.
    pending: Mutex<Vec<Charge>>,
    /// Replicas seen alive, as last counted (at least 1).
    replicas: AtomicU64,
    up: AtomicBool,
    metrics: std::sync::Arc<Metrics>,
}

/// Checks every charge, then takes all or none. KEYS: the counters. ARGV: the
/// ticket (empty: only look, take nothing), then per counter its kind (`r` rate,
/// `f` in flight, `b` budget), limit, span in ms (period, lease, or time to the
/// period's end) and amount. Returns `{admitted, {fits, remaining, reset_ms,
/// retry_ms (-1: never)}...}`.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local ok, out, after = 1, {}, {}
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 4
  local kind, limit, span, amount = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local key = KEYS[i]
  local fits, remaining, reset, retry
  if kind == 'r' then
    local interval = span / limit
    local base = math.max(tonumber(redis.call('GET', key) or now), now)
    after[i] = base + amount * interval
    fits = after[i] - now <= span + 1e-6
    local held = fits and after[i] or base
    remaining = math.max(0, math.floor((span - (held - now)) / interval + 1e-9))
    reset = held - now
    retry = (amount <= limit) and math.max(0, after[i] - now - span) or -1
  elseif kind == 'f' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local held = redis.call('ZCARD', key)
    fits = held < limit
    remaining = math.max(0, limit - held - 1)
    reset = 0
    retry = fits and 0 or math.min(1000, span)
  else
    local spent = tonumber(redis.call('GET', key) or 0)
    fits = spent + amount <= limit
    remaining = math.max(0, limit - spent - (fits and amount or 0))
    reset = span
    retry = (amount <= limit) and span or -1
  end
  if not fits then ok = 0 end
  out[i] = {fits and 1 or 0, tostring(remaining), tostring(reset), tostring(retry)}
end
if ok == 1 and ARGV[1] ~= '' then
  for i = 1, #KEYS do
    local a = 1 + (i - 1) * 4
    local kind, span, amount = ARGV[a + 1], tonumber(ARGV[a + 3]), ARGV[a + 4]
    if kind == 'r' then
      redis.call('SET', KEYS[i], string.format('%.17g', after[i]), 'PX', math.ceil(after[i] - now) + 1000)
    elseif kind == 'f' then
      redis.call('ZADD', KEYS[i], now + span, ARGV[1])
      -- The set lives as long as its longest place, not the latest one's.
      local want = math.ceil(span) + 1000
      if redis.call('PTTL', KEYS[i]) < want then redis.call('PEXPIRE', KEYS[i], want) end
    else
      redis.call('INCRBYFLOAT', KEYS[i], amount)
      redis.call('PEXPIRE', KEYS[i], math.ceil(span) + 3600000)
    end
  end
end
return {ok, out}
";

/// Corrects counters at a call's end: `amount` added to a rate or a budget
/// (negative gives back), the ticket's place freed. Same ARGV layout as TAKE.
const SETTLE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 4
  local kind, limit, span, amount = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local key = KEYS[i]
  if kind == 'r' then
    local tat = math.max(tonumber(redis.call('GET', key) or now), now)
    local moved = math.max(tat + amount * span / limit, now)
    redis.call('SET', key, string.format('%.17g', moved), 'PX', math.ceil(moved - now) + 1000)
  elseif kind == 'f' then
    redis.call('ZREM', key, ARGV[1])
  else
    redis.call('INCRBYFLOAT', key, amount)
    redis.call('PEXPIRE', key, math.ceil(span) + 3600000)
  end
end
return 1
";

/// Marks this replica (ARGV 1) alive now, forgets those silent for ARGV 2 ms, and
/// counts the rest.
const HEARTBEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
";

impl RedisCounters {
    pub fn new(
        redis: GuardedRedis,
        prefix: &str,
        on_down: OnDown,
        instance: &str,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        RedisCounters {
            redis,
            prefix: prefix.to_owned(),
            on_down,
            instance: instance.to_owned(),
            take: redis::Script::new(TAKE),
            settle: redis::Script::new(SETTLE),
            heartbeat: redis::Script::new(HEARTBEAT_SCRIPT),
            local: MemoryCounters::default(),
            local_tickets: Mutex::default(),
            pending: Mutex::default(),
            replicas: AtomicU64::new(1),
            up: AtomicBool::new(true),
            metrics,
        }
    }

    /// Says this replica is alive and counts the others, every few seconds, until
    /// `stop`; and adds to Redis what was counted locally while it was away.
    pub async fn keep_up(self: std::sync::Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            let key = format!("{}replicas", self.prefix);
            let (instance, alive) = (self.instance.clone(), ALIVE_FOR.as_millis() as u64);
            let script = &self.heartbeat;
            let counted: Result<u64, _> = self
                .redis
                .call(|mut c| async move {
                    script
                        .key(key)
                        .arg(instance)
                        .arg(alive)
                        .invoke_async(&mut c)
                        .await
                })
                .await;
            if let Ok(count) = counted {
                self.replicas.store(count.max(1), Ordering::Relaxed);
                self.metrics.limits_replicas(count.max(1));
                self.mark(true);
                // Off the request path: what was spent while Redis was away.
                self.replay().await;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
    }

    /// Runs `script` over `charges` (TAKE's layout), within the deadline and the
    /// breaker.
    async fn run<T: redis::FromRedisValue + Send>(
        &self,
        script: &redis::Script,
        ticket: &str,
        charges: &[Charge],
    ) -> Result<T, crate::resilience::redis::RedisError> {
        let (keys, args) = self.script_args(ticket, charges);
        self.redis
            .call(|mut c| async move {
                let mut invocation = script.prepare_invoke();
                for key in keys {
                    invocation.key(key);
                }
                for arg in args {
                    invocation.arg(arg);
                }
                invocation.invoke_async::<T>(&mut c).await
            })
            .await
    }

    fn script_args(&self, ticket: &str, charges: &[Charge]) -> (Vec<String>, Vec<String>) {
        let keys = charges
            .iter()
            .map(|c| format!("{}{}", self.prefix, c.counter))
            .collect();
        let mut args = vec![ticket.to_owned()];
        for charge in charges {
            let (kind, limit, span) = match charge.rule {
                Rule::Rate { limit, period } => ("r", limit as f64, period),
                Rule::InFlight { limit, lease } => ("f", limit as f64, lease),
                Rule::Budget { limit, ends_in } => ("b", limit, ends_in),
            };
            args.extend([
                kind.to_owned(),
                limit.to_string(),
                (span.as_secs_f64() * 1000.0).to_string(),
                charge.amount.to_string(),
            ]);
        }
        (keys, args)
    }

    /// Notes whether Redis answered (the heartbeat adds what was spent meanwhile).
    fn mark(&self, up: bool) {
        self.metrics.limits_shared(up);
        if self.up.swap(up, Ordering::Relaxed) == up {
            return;
        }
        match up {
            true => tracing::info!("limits: redis is back; counting there again"),
            false => tracing::warn!(mode = ?self.on_down, "limits: redis is away"),
        }
    }

    /// Each limit divided among the replicas seen alive (rounded up: no limit
    /// falls to zero).
    fn share(&self, charges: &[Charge]) -> Vec<Charge> {
        let replicas = self.replicas.load(Ordering::Relaxed).max(1);
        let part = |limit: u64| limit.div_ceil(replicas);
        charges
            .iter()
            .map(|c| Charge {
                rule: match c.rule {
                    Rule::Rate { limit, period } => Rule::Rate {
                        limit: part(limit),
                        period,
                    },
                    Rule::InFlight { limit, lease } => Rule::InFlight {
                        limit: part(limit),
                        lease,
                    },
                    Rule::Budget { limit, ends_in } => Rule::Budget {
                        limit: limit / replicas as f64,
                        ends_in,
                    },
                },
                ..c.clone()
            })
            .collect()
    }

    fn keep_pending(&self, charges: impl IntoIterator<Item = Charge>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend(
            charges
                .into_iter()
                .filter(|c| matches!(c.rule, Rule::Budget { .. }) && c.amount != 0.0),
        );
        if pending.len() > MAX_PENDING {
            let over = pending.len() - MAX_PENDING;
            pending.drain(..over);
        }
    }

    /// Adds what was counted locally to Redis.
    async fn replay(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for batch in pending.chunks(100) {
            let sent = self.run::<i64>(&self.settle, "replay", batch).await;
            if sent.is_err() {
                self.keep_pending(batch.iter().cloned());
            }
        }
    }

    async fn take_local(&self, ticket: &str, charges: &[Charge]) -> Result<Taken, CountersDown> {
        self.metrics.limits_fallback(match self.on_down {
            OnDown::Local => "local",
            OnDown::Open => "open",
            OnDown::Closed => "closed",
        });
        match self.on_down {
            OnDown::Open => Ok(Taken {
                admitted: true,
                standings: Vec::new(),
            }),
            OnDown::Closed => Err(CountersDown("redis is away".to_owned())),
            OnDown::Local => {
                let shared = self.share(charges);
                let taken = self.local.take(ticket, &shared).await?;
                if taken.admitted {
                    self.local_tickets
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(ticket.to_owned());
                    self.keep_pending(charges.iter().cloned());
                }
                Ok(taken)
            }
        }
    }
}

#[async_trait]
impl Counters for RedisCounters {
    async fn take(&self, ticket: &str, charges: &[Charge]) -> Result<Taken, CountersDown> {
        let answer = self
            .run::<(i64, Vec<(i64, String, String, String)>)>(&self.take, ticket, charges)
            .await;
        let (admitted, rows) = match answer {
            Ok(answer) => answer,
            Err(_) => {
                self.mark(false);
                return self.take_local(ticket, charges).await;
            }
        };
        self.mark(true);
        Ok(Taken {
            admitted: admitted == 1,
            standings: standings(&rows),
        })
    }

    async fn peek(&self, charges: &[Charge]) -> Result<Vec<Standing>, CountersDown> {
        let answer = self
            .run::<(i64, Vec<(i64, String, String, String)>)>(&self.take, "", charges)
            .await;
        match answer {
            Ok((_, rows)) => Ok(standings(&rows)),
            Err(_) => self.local.peek(&self.share(charges)).await,
        }
    }

    async fn settle(&self, ticket: &str, charges: &[Charge]) -> Result<(), CountersDown> {
        let local = self
            .local_tickets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ticket);
        if local {
            self.keep_pending(charges.iter().cloned());
            return self.local.settle(ticket, &self.share(charges)).await;
        }
        if let Err(error) = self.run::<i64>(&self.settle, ticket, charges).await {
            // The correction waits for Redis; a place lapses with its lease.
            self.keep_pending(charges.iter().cloned());
            return Err(CountersDown(error.to_string()));
        }
        Ok(())
    }
}

/// The script's rows: `{fits, remaining, reset_ms, retry_ms}`, numbers as text.
fn standings(rows: &[(i64, String, String, String)]) -> Vec<Standing> {
    let ms = |text: &str| {
        let ms: f64 = text.parse().unwrap_or(0.0);
        Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).unwrap_or(Duration::MAX)
    };
    rows.iter()
        .map(|(fits, remaining, reset, retry)| Standing {
            fits: *fits == 1,
            remaining: remaining.parse().unwrap_or(0.0),
            reset: ms(reset),
            retry_after: match retry.parse::<f64>() {
                Ok(r) if r < 0.0 => None,
                _ => Some(ms(retry)),
            },
        })
        .collect()
}
