//! The in-memory tier (moka, bounded by bytes, with a TTL).

use std::sync::Arc;

use super::CacheKey;
use crate::wire::ChatCompletion;

/// The in-memory tier; off with `memory_bytes = 0` (Redis alone then serves).
/// Synchronous: an answer is in it before the requests waiting for it are woken.
pub(super) struct Memory(Option<moka::sync::Cache<CacheKey, Arc<ChatCompletion>>>);

impl Memory {
    pub(super) fn new(cache: Option<moka::sync::Cache<CacheKey, Arc<ChatCompletion>>>) -> Self {
        Memory(cache)
    }

    pub(super) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    pub(super) fn get(&self, key: &CacheKey) -> Option<Arc<ChatCompletion>> {
        self.0.as_ref()?.get(key)
    }

    pub(super) fn insert(&self, key: CacheKey, answer: Arc<ChatCompletion>) {
        if let Some(cache) = &self.0 {
            cache.insert(key, answer);
        }
    }

    pub(super) fn purge(&self, tenant: Option<&str>) -> Result<(), String> {
        let Some(cache) = &self.0 else {
            return Ok(());
        };
        match tenant {
            Some(tenant) => {
                let tenant: Arc<str> = tenant.into();
                cache
                    .invalidate_entries_if(move |key, _| key.tenant == tenant)
                    .map_err(|e| e.to_string())?;
            }
            None => cache.invalidate_all(),
        }
        cache.run_pending_tasks();
        Ok(())
    }

    pub(super) fn weighted_size(&self) -> u64 {
        self.0.as_ref().map_or(0, |c| c.weighted_size())
    }
}
