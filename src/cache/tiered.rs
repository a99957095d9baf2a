//! The answer cache: L1 in memory ([`super::memory`]) in front of an optional L2 in
//! Redis shared by every replica. Read through: an L2 hit is promoted to L1.
//! Concurrent identical misses are coalesced ([`super::flight`]): the first request
//! leads (calls upstream), the others wait for its answer (streaming followers
//! too: they get it replayed as SSE) and go upstream themselves only if it ends
//! without one. A tenant's purge bumps its generation, read from Redis by every
//! replica, which changes every key of the tenant.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use moka::notification::RemovalCause;

use super::flight::{Inflight, Joined};
use super::memory::Memory;
use super::redis::{RedisTier, TierError};
use super::semantic::Semantic;
use super::{AnswerCache, CacheKey, CacheLookup, CachePolicy, CacheStatus, key};
use crate::call::Call;
use crate::telemetry::Metrics;
use crate::wire::{ChatCompletion, ChatRequest};

pub struct TieredCache {
    l1: Memory,
    l2: Option<RedisTier>,
    semantic: Option<Semantic>,
    default_policy: CachePolicy,
    policies: BTreeMap<String, CachePolicy>,
    inflight: Arc<Inflight>,
    metrics: Arc<Metrics>,
    /// Purge generations by tenant, read from Redis within the last second.
    purges: moka::sync::Cache<String, u64>,
    /// The last purge generation read per tenant, for while Redis is away.
    purges_known: KnownPurges,
}

/// The last purge generation read per tenant.
#[derive(Default)]
struct KnownPurges(Mutex<HashMap<String, u64>>);

impl KnownPurges {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TieredCache {
    pub fn new(
        memory_bytes: u64,
        ttl: Duration,
        l2: Option<RedisTier>,
        semantic: Option<Semantic>,
        default_policy: CachePolicy,
        policies: BTreeMap<String, CachePolicy>,
        metrics: Arc<Metrics>,
    ) -> TieredCache {
        let evictions = Arc::clone(&metrics);
        let l1 = (memory_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(memory_bytes)
                // An entry weighs its JSON size (a good stand-in for its heap size).
                .weigher(|_key, answer: &Arc<ChatCompletion>| {
                    u32::try_from(serde_json::to_vec(answer.as_ref()).map_or(0, |v| v.len()))
                        .unwrap_or(u32::MAX)
                })
                .time_to_live(ttl)
                .support_invalidation_closures()
                .eviction_listener(move |_key, _value, cause| {
                    if cause == RemovalCause::Size {
                        evictions.cache_evicted();
                    }
                })
                .build()
        });
        TieredCache {
            l1: Memory::new(l1),
            l2,
            semantic,
            default_policy,
            policies,
            inflight: Arc::default(),
            metrics,
            purges: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            purges_known: KnownPurges::default(),
        }
    }

    fn policy(&self, alias: &str) -> CachePolicy {
        self.policies
            .get(alias)
            .copied()
            .unwrap_or(self.default_policy)
    }

    async fn lookup_l2(&self, key: &CacheKey) -> Option<ChatCompletion> {
        let l2 = self.l2.as_ref()?;
        match l2.get(key).await {
            Ok(Some(answer)) => {
                self.metrics.cache_lookup("l2", "hit");
                self.l1.insert(key.clone(), Arc::new(answer.clone()));
                self.metrics.cache_bytes(self.l1.weighted_size());
                Some(answer)
            }
            Ok(None) => {
                self.metrics.cache_lookup("l2", "miss");
                None
            }
            Err(error) => {
                self.metrics.cache_lookup("l2", "error");
                self.backend_error(&error);
                None
            }
        }
    }

    /// A close enough question answered before; otherwise the question is held to
    /// be remembered once this miss's answer is stored.
    async fn lookup_semantic(
        &self,
        call: &Call<'_>,
        prompt: &ChatRequest,
        key: &CacheKey,
        purged: u64,
    ) -> Option<CacheLookup> {
        let semantic = self.semantic.as_ref()?;
        let probe = semantic
            .probe(
                &call.caller.tenant,
                call.alias,
                call.corpus_version,
                purged,
                prompt,
            )
            .await?;
        if let Some(found) = semantic.find(&probe) {
            let answer = match self.l1.get(&found) {
                Some(answer) => Some((answer.as_ref().clone(), CacheStatus::HitL1)),
                None => self
                    .lookup_l2(&found)
                    .await
                    .map(|answer| (answer, CacheStatus::HitL2)),
            };
            if let Some((answer, tier)) = answer {
                self.metrics.cache_lookup("semantic", "hit");
                return Some(CacheLookup::Hit(answer, tier));
            }
        }
        self.metrics.cache_lookup("semantic", "miss");
        if !call.cache_control.no_store {
            semantic.expect(key.clone(), probe);
        }
        None
    }

    /// The tenant's purge generation, read from Redis at most once a second per
    /// tenant (so another replica's purge reaches this one within a second); the
    /// last value read while Redis cannot be reached; 0 without Redis.
    async fn purge_generation(&self, tenant: &str) -> u64 {
        let Some(l2) = &self.l2 else {
            return 0;
        };
        if let Some(generation) = self.purges.get(tenant) {
            return generation;
        }
        let known = self.purges_known.lock().get(tenant).copied().unwrap_or(0);
        let generation = match l2.purge_generation(tenant).await {
            Ok(generation) => {
                self.purges_known
                    .lock()
                    .insert(tenant.to_owned(), generation);
                generation
            }
            Err(error) => {
                self.backend_error(&error);
                known
            }
        };
        self.purges.insert(tenant.to_owned(), generation);
        generation
    }

    fn backend_error(&self, error: &TierError) {
        if let TierError::Failed(message) = error {
            self.metrics.cache_backend_error("redis");
            tracing::debug!(%message, "redis cache call failed");
        }
    }

    /// Leads the miss of `key`, or waits for the request leading it — within this
    /// request's deadline. A leader that ends without an answer hands the lead to
    /// one of its followers, so a failure does not send them all upstream at once.
    async fn lead_or_follow(&self, call: &Call<'_>, key: CacheKey) -> CacheLookup {
        let deadline = call.deadline;
        loop {
            let mut waiting = match self.inflight.join(&key) {
                Joined::Follow(waiting) => waiting,
                Joined::Lead(flight) => return CacheLookup::Miss(key, Some(flight)),
            };
            let answer = tokio::time::timeout_at(deadline, async {
                // The sender goes when the leader ends: with an answer or without.
                while waiting.changed().await.is_ok() {
                    if let Some(answer) = waiting.borrow_and_update().clone() {
                        return Some(answer);
                    }
                }
                None
            })
            .await;
            match answer {
                Ok(Some(answer)) => {
                    self.metrics.cache_lookup("coalesced", "hit");
                    return CacheLookup::Hit(answer.as_ref().clone(), CacheStatus::HitL1);
                }
                // The leader ended without an answer: lead, or follow the new leader.
                Ok(None) => continue,
                // Out of time: go alone with what is left.
                Err(_) => return CacheLookup::Miss(key, None),
            }
        }
    }
}

#[async_trait]
impl AnswerCache for TieredCache {
    async fn lookup(&self, call: &Call<'_>, prompt: &ChatRequest) -> CacheLookup {
        let control = call.cache_control;
        if !self.policy(call.alias).admits(prompt) || (control.no_cache && control.no_store) {
            return CacheLookup::Bypass;
        }
        let purged = self.purge_generation(&call.caller.tenant).await;
        let Some(key) = key::key(
            &call.caller.tenant,
            call.alias,
            call.corpus_version,
            purged,
            prompt,
        ) else {
            return CacheLookup::Bypass;
        };
        if control.no_cache {
            // A fresh answer was asked for: no lookup, no waiting on another's.
            return CacheLookup::Miss(key, None);
        }
        if self.l1.is_on() {
            if let Some(answer) = self.l1.get(&key) {
                self.metrics.cache_lookup("l1", "hit");
                return CacheLookup::Hit(answer.as_ref().clone(), CacheStatus::HitL1);
            }
            self.metrics.cache_lookup("l1", "miss");
        }
        if let Some(answer) = self.lookup_l2(&key).await {
            return CacheLookup::Hit(answer, CacheStatus::HitL2);
        }
        if let Some(hit) = self.lookup_semantic(call, prompt, &key, purged).await {
            return hit;
        }
        if control.no_store {
            return CacheLookup::Miss(key, None);
        }
        self.lead_or_follow(call, key).await
    }

    /// Into memory first, then to the waiting requests: a request arriving between
    /// the two finds the answer in memory.
    fn publish(&self, key: &CacheKey, answer: &ChatCompletion) {
        let answer = Arc::new(answer.clone());
        self.l1.insert(key.clone(), Arc::clone(&answer));
        self.inflight.publish(key, answer);
    }

    async fn store(&self, key: CacheKey, answer: ChatCompletion) {
        if let Some(semantic) = &self.semantic {
            semantic.stored(&key);
        }
        if let Some(l2) = &self.l2
            && let Err(error) = l2.set(&key, &answer).await
        {
            self.backend_error(&error);
        }
        self.metrics.cache_bytes(self.l1.weighted_size());
    }

    async fn purge(&self, tenant: Option<&str>) -> Result<(), String> {
        // Redis first: a lookup between the two would otherwise bring an answer
        // back from Redis into memory.
        if let Some(l2) = &self.l2 {
            let failed = |e: TierError| match e {
                TierError::Skipped => "redis is unavailable (breaker open)".to_owned(),
                TierError::Failed(message) => format!("redis: {message}"),
            };
            // The generation first: every replica's keys change within a second,
            // whatever their memory tiers hold; then the entries themselves go.
            l2.bump_purge_generation(tenant).await.map_err(failed)?;
            self.purges.invalidate_all();
            l2.purge(tenant).await.map_err(failed)?;
        }
        self.l1.purge(tenant)?;
        self.metrics.cache_bytes(self.l1.weighted_size());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_admits_what_it_says() {
        let request = |json: &str| -> ChatRequest { serde_json::from_str(json).unwrap() };
        let zero = request(r#"{"model":"m","messages":[],"temperature":0}"#);
        let seeded = request(r#"{"model":"m","messages":[],"seed":7}"#);
        let warm = request(r#"{"model":"m","messages":[],"temperature":0.7}"#);
        let unset = request(r#"{"model":"m","messages":[]}"#);
        assert!(CachePolicy::Deterministic.admits(&zero));
        assert!(CachePolicy::Deterministic.admits(&seeded));
        assert!(!CachePolicy::Deterministic.admits(&warm));
        assert!(!CachePolicy::Deterministic.admits(&unset));
        assert!(CachePolicy::Always.admits(&warm));
        assert!(!CachePolicy::Off.admits(&zero));
    }
}
