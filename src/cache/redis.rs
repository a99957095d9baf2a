//! The shared tier: Redis, so every replica serves what any one of them stored.
//! Redis trouble must never become the gateway's: each call has a short deadline
//! and sits behind a circuit breaker, the connection is made lazily (the gateway
//! starts without Redis) and re-made by the connection manager when Redis returns.

use std::time::Duration;

use redis::AsyncCommands;

use super::CacheKey;
use crate::encode::hex;
use crate::resilience::redis::GuardedRedis;
use crate::wire::ChatCompletion;

pub struct RedisTier {
    redis: GuardedRedis,
    prefix: String,
    ttl: Duration,
}

/// Why a call did not answer.
pub use crate::resilience::redis::RedisError as TierError;

impl RedisTier {
    /// `url` is `redis://…` or, for TLS, `rediss://…`; `ca_pem`, the CAs a TLS
    /// server's certificate must come from (the system's roots when `None`).
    pub fn new(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        prefix: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Self, String> {
        Ok(RedisTier {
            redis: GuardedRedis::new(url, ca_pem, timeout, "redis cache")?,
            prefix: prefix.to_owned(),
            ttl,
        })
    }

    /// `{prefix}{tenant as hex}:{key as hex}`: a tenant's entries share a prefix
    /// (for purging) whatever characters its name holds.
    fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.tenant_prefix(&key.tenant), hex(&key.hash))
    }

    fn tenant_prefix(&self, tenant: &str) -> String {
        format!("{}{}:", self.prefix, hex(tenant.as_bytes()))
    }

    pub async fn get(&self, key: &CacheKey) -> Result<Option<ChatCompletion>, TierError> {
        let redis_key = self.redis_key(key);
        let value: Option<String> = self
            .redis
            .call(|mut c| async move { c.get(redis_key).await })
            .await?;
        // A value that does not parse (another version wrote it) is a miss.
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    pub async fn set(&self, key: &CacheKey, answer: &ChatCompletion) -> Result<(), TierError> {
        let redis_key = self.redis_key(key);
        let value = serde_json::to_string(answer).map_err(|e| TierError::Failed(e.to_string()))?;
        let ttl = self.ttl.as_secs().max(1);
        self.redis
            .call(|mut c| async move { c.set_ex::<_, _, ()>(redis_key, value, ttl).await })
            .await
    }

    /// The purge generation of a tenant: bumped by every purge of it or of all, so
    /// every replica's keys change with it (their memory tiers included).
    pub async fn purge_generation(&self, tenant: &str) -> Result<u64, TierError> {
        let keys = [self.purge_key(Some(tenant)), self.purge_key(None)];
        let values: Vec<Option<u64>> = self
            .redis
            .call(|mut c| async move { c.mget(&keys).await })
            .await?;
        Ok(values.into_iter().flatten().sum())
    }

    /// Bumps the purge generation of a tenant, or of all.
    pub async fn bump_purge_generation(&self, tenant: Option<&str>) -> Result<(), TierError> {
        let key = self.purge_key(tenant);
        self.redis
            .call(|mut c| async move { c.incr::<_, _, ()>(key, 1).await })
            .await
    }

    /// Outside the entries' own prefix: a purge of entries never deletes it.
    fn purge_key(&self, tenant: Option<&str>) -> String {
        match tenant {
            Some(tenant) => format!("{}purged:{}", self.prefix, hex(tenant.as_bytes())),
            None => format!("{}purged", self.prefix),
        }
    }

    /// Removes a tenant's entries, or every entry under the prefix.
    pub async fn purge(&self, tenant: Option<&str>) -> Result<u64, TierError> {
        let pattern = match tenant {
            Some(tenant) => format!("{}*", self.tenant_prefix(tenant)),
            // Every entry: the tenants' hex prefixes (not the purge generations).
            None => format!("{}[0-9a-f]*", self.prefix),
        };
        let connection = self.redis.connection().await?;
        // A purge may walk many keys: it gets its own, longer deadline.
        let purge = async move {
            let mut scan = connection.clone();
            let keys: Vec<String> = {
                let options = redis::ScanOptions::default()
                    .with_pattern(pattern)
                    .with_count(1000);
                let mut iter = scan.scan_options::<String>(options).await?;
                let mut keys = Vec::new();
                while let Some(key) = futures_util::StreamExt::next(&mut iter).await {
                    keys.push(key?);
                }
                keys
            };
            let mut removed = 0u64;
            let mut c = connection;
            for batch in keys.chunks(500) {
                removed += c.unlink::<_, u64>(batch).await?;
            }
            Ok::<_, redis::RedisError>(removed)
        };
        tokio::time::timeout(Duration::from_secs(30), purge)
            .await
            .map_err(|_| TierError::Failed("purge timed out".to_owned()))?
            .map_err(|e| TierError::Failed(e.to_string()))
    }
}
