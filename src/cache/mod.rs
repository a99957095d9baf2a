//! The cache stage: answer a repeated question without calling a provider.
//!
//! - [`key`]: what identifies a question (tenant, alias, corpus version, the
//!   sanitised request);
//! - [`tiered::TieredCache`]: moka in memory, Redis behind, coalesced misses;
//! - [`redis`]: the shared tier, behind a deadline and a breaker.
//!
//! [`NoCache`] is the pass-through used while `[cache]` is not configured: every
//! lookup is a bypass and nothing is stored. Answers are stored sanitised
//! (placeholders, never a user's values) and restored with each request's own vault.

pub mod key;
pub mod redis;
pub mod semantic;
pub mod tiered;

mod flight;
mod memory;

pub use flight::Flight;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::call::Call;
use crate::wire::{ChatCompletion, ChatRequest};

/// Identifies one cacheable question: its tenant, and a hash of everything that
/// shapes its answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub tenant: Arc<str>,
    pub hash: [u8; 32],
}

pub enum CacheLookup {
    /// A stored answer (sanitised), and the tier it came from.
    Hit(ChatCompletion, CacheStatus),
    /// Not stored yet: the key under which to store the answer, and, when this
    /// request leads the miss, the flight others with the same question wait on.
    Miss(CacheKey, Option<Flight>),
    /// This request does not use the cache.
    Bypass,
}

pub use crate::call::CacheStatus;

/// Which requests of an alias the cache serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CachePolicy {
    /// Only answers that would come out the same again: temperature 0 or a seed.
    Deterministic,
    /// Every request (the same question gets the same answer).
    Always,
    Off,
}

impl CachePolicy {
    pub fn admits(self, prompt: &ChatRequest) -> bool {
        match self {
            CachePolicy::Off => false,
            CachePolicy::Always => true,
            CachePolicy::Deterministic => prompt.temperature == Some(0.0) || prompt.seed.is_some(),
        }
    }
}

pub use crate::call::CacheControl;

#[async_trait]
pub trait AnswerCache: Send + Sync {
    async fn lookup(&self, call: &Call<'_>, prompt: &ChatRequest) -> CacheLookup;

    /// Hands a complete answer to the requests waiting on its key, at once (before
    /// the store, which runs in the background).
    fn publish(&self, _key: &CacheKey, _answer: &ChatCompletion) {}

    /// Stores a complete answer (never a cut stream).
    async fn store(&self, key: CacheKey, answer: ChatCompletion);

    /// Removes a tenant's answers, or all of them.
    async fn purge(&self, _tenant: Option<&str>) -> Result<(), String> {
        Ok(())
    }
}

/// Pass-through: no cache.
pub struct NoCache;

#[async_trait]
impl AnswerCache for NoCache {
    async fn lookup(&self, _call: &Call<'_>, _prompt: &ChatRequest) -> CacheLookup {
        CacheLookup::Bypass
    }

    async fn store(&self, _key: CacheKey, _answer: ChatCompletion) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        assert_eq!(
            CacheControl::parse("no-cache"),
            CacheControl {
                no_cache: true,
                no_store: false
            }
        );
        assert_eq!(
            CacheControl::parse(" No-Store , max-age=0, no-cache"),
            CacheControl {
                no_cache: true,
                no_store: true
            }
        );
        assert_eq!(CacheControl::parse("max-age=60"), CacheControl::default());
    }
}
