//! `[cache]`: the answer cache's tiers; per model alias, `cache = "deterministic" |
//! "always" | "off"`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Problems;
use crate::cache::CachePolicy;

#[derive(Debug, Clone, Serialize)]
pub struct CacheConfig {
    /// The in-memory tier's size; 0 turns it off (Redis alone serves).
    pub memory_bytes: u64,
    #[serde(serialize_with = "super::as_duration")]
    pub ttl: Duration,
    pub redis: Option<RedisConfig>,
    /// Reuse the answer of a question this close in meaning (cosine of the
    /// embedder's vectors), when the guard agrees; off when unset.
    pub semantic_threshold: Option<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisConfig {
    pub url: String,
    /// With `rediss://`: the CAs the server's certificate must come from, instead
    /// of the system's.
    pub ca_file: Option<PathBuf>,
    pub key_prefix: String,
    /// The deadline of each call; past it, the call counts as failed.
    #[serde(serialize_with = "super::as_duration")]
    pub timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub memory_bytes: Option<u64>,
    pub ttl: Option<String>,
    /// `redis://host:6379`, or `rediss://host:6380` for TLS; without one, the
    /// in-memory tier alone serves.
    pub redis_url: Option<String>,
    /// A PEM file of the CAs a `rediss://` server's certificate must come from.
    pub redis_ca_file: Option<PathBuf>,
    pub redis_key_prefix: Option<String>,
    pub redis_timeout: Option<String>,
    pub semantic_threshold: Option<f32>,
}

const DEFAULT_MEMORY: u64 = 64 * 1024 * 1024;

pub(super) fn cache(raw: RawCache, has_embedder: bool, problems: &mut Problems) -> CacheConfig {
    if let Some(threshold) = raw.semantic_threshold {
        if !(0.5..=1.0).contains(&threshold) {
            problems.add("cache.semantic_threshold", "must be between 0.5 and 1");
        }
        if !has_embedder {
            problems.add(
                "cache.semantic_threshold",
                "needs [embeddings]: questions are compared by their embeddings",
            );
        }
    }
    let memory_bytes = raw.memory_bytes.unwrap_or(DEFAULT_MEMORY);
    if memory_bytes == 0 && raw.redis_url.is_none() {
        problems.add(
            "cache.memory_bytes",
            "0 turns the memory tier off: then set redis_url, or there is no tier at all",
        );
    }
    let ttl = problems.duration("cache.ttl", raw.ttl.as_deref(), Duration::from_secs(3600));
    if raw.redis_ca_file.is_some() && raw.redis_url.is_none() {
        problems.add("cache.redis_ca_file", "needs a rediss:// redis_url");
    }
    let redis = raw.redis_url.map(|url| {
        check_redis_tls("cache", &url, raw.redis_ca_file.as_deref(), problems);
        let prefix = raw.redis_key_prefix.as_deref().unwrap_or("ragway:cache:");
        // A purge deletes `{prefix}*`: an empty prefix, or one holding glob
        // characters, would reach other applications' keys.
        if prefix.is_empty() || prefix.contains(['*', '?', '[', ']', '\\']) {
            problems.add(
                "cache.redis_key_prefix",
                "must be non-empty, without * ? [ ] or \\ (a purge deletes every key under it)",
            );
        }
        RedisConfig {
            url,
            ca_file: raw.redis_ca_file,
            key_prefix: raw
                .redis_key_prefix
                .unwrap_or_else(|| "ragway:cache:".to_owned()),
            timeout: problems.duration(
                "cache.redis_timeout",
                raw.redis_timeout.as_deref(),
                Duration::from_millis(50),
            ),
        }
    });
    CacheConfig {
        memory_bytes,
        ttl,
        redis,
        semantic_threshold: raw.semantic_threshold,
    }
}

/// The URL's scheme, and the CA file that only TLS can use. Messages never quote
/// the URL: it may hold a password.
pub(super) fn check_redis_tls(
    section: &str,
    url: &str,
    ca_file: Option<&std::path::Path>,
    problems: &mut Problems,
) {
    let tls = url.starts_with("rediss://");
    if !tls && !url.starts_with("redis://") {
        problems.add(
            format!("{section}.redis_url"),
            "must start with redis:// or, for TLS, rediss://",
        );
    }
    // The client would take `rediss://…/#insecure` as "accept any certificate";
    // that is not built in, and would fail only at the first connection.
    if url.contains('#') {
        problems.add(
            format!("{section}.redis_url"),
            format!(
                "takes no #fragment (#insecure, skipping the certificate check, is not \
                 supported: name the server's CA in {section}.redis_ca_file)"
            ),
        );
    }
    match ca_file {
        Some(_) if !tls => problems.add(
            format!("{section}.redis_ca_file"),
            "is for TLS: the redis_url must start with rediss://",
        ),
        Some(path) => {
            if let Err(error) = crate::tls::read_ca_file(path) {
                problems.add(format!("{section}.redis_ca_file"), error);
            }
        }
        None => {}
    }
}

pub(super) fn policy(at: &str, raw: Option<&str>, problems: &mut Problems) -> CachePolicy {
    match raw.unwrap_or("deterministic") {
        "deterministic" => CachePolicy::Deterministic,
        "always" => CachePolicy::Always,
        "off" => CachePolicy::Off,
        other => {
            problems.add(
                format!("{at}.cache"),
                format!("`{other}` is not deterministic, always or off"),
            );
            CachePolicy::Deterministic
        }
    }
}
