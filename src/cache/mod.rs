//! The cache stage: answer a repeated question without calling a provider.
//!
//! [`NoCache`] is the pass-through used while no cache is configured: every lookup
//! is a bypass and nothing is stored.

use async_trait::async_trait;

use crate::pipeline::RequestCtx;
use crate::wire::{ChatCompletion, ChatRequest};

/// Identifies one cacheable question (a hash of everything that shapes its answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

pub enum CacheLookup {
    /// A stored answer (sanitised), and the tier it came from.
    Hit(ChatCompletion, CacheStatus),
    /// Not stored yet: the key under which to store the answer.
    Miss(CacheKey),
    /// This request does not use the cache.
    Bypass,
}

/// What the cache did for a request; the `x-ragway-cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    HitL1,
    HitL2,
    Miss,
    Bypass,
}

impl CacheStatus {
    pub fn is_hit(self) -> bool {
        matches!(self, CacheStatus::HitL1 | CacheStatus::HitL2)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::HitL1 => "hit-l1",
            CacheStatus::HitL2 => "hit-l2",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

#[async_trait]
pub trait AnswerCache: Send + Sync {
    async fn lookup(&self, ctx: &RequestCtx, prompt: &ChatRequest) -> CacheLookup;
    /// Stores a complete answer (never a cut stream).
    async fn store(&self, key: CacheKey, answer: ChatCompletion);
}

/// Pass-through: no cache.
pub struct NoCache;

#[async_trait]
impl AnswerCache for NoCache {
    async fn lookup(&self, _ctx: &RequestCtx, _prompt: &ChatRequest) -> CacheLookup {
        CacheLookup::Bypass
    }

    async fn store(&self, _key: CacheKey, _answer: ChatCompletion) {}
}
