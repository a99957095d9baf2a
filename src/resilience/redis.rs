//! A Redis connection guarded as every call out of the gateway is: made on first
//! use (the gateway starts without Redis) and re-made by the connection manager
//! when Redis returns; each command within a deadline, behind a circuit breaker,
//! so that Redis trouble never becomes the gateway's. Shared by the cache's Redis
//! tier and the shared counters of limits.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::{Breaker, BreakerPolicy, Verdict};

/// Why a command did not answer.
#[derive(Debug)]
pub enum RedisError {
    /// The breaker is open: Redis was failing; not tried.
    Skipped,
    Failed(String),
}

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisError::Skipped => f.write_str("skipped while redis is failing"),
            RedisError::Failed(why) => f.write_str(why),
        }
    }
}

pub struct GuardedRedis {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    breaker: Arc<Breaker>,
    /// What uses it, for the log.
    what: &'static str,
}

impl GuardedRedis {
    /// `url` is `redis://…` or, for TLS, `rediss://…`; `ca_pem`, the CAs a TLS
    /// server's certificate must come from (the system's roots when `None`).
    pub fn new(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Self, String> {
        // The client builds its rustls config from the process's default provider.
        crate::tls::install_crypto_provider();
        let client = match ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            ),
            None => redis::Client::open(url),
        }
        .map_err(|e| format!("redis url: {}", crate::secret::scrub(&e.to_string())))?;
        Ok(GuardedRedis {
            client,
            connection: Mutex::new(None),
            timeout,
            breaker: Arc::new(Breaker::new(BreakerPolicy {
                failures: 3,
                open_for: Duration::from_secs(1),
                max_open_for: Duration::from_secs(30),
            })),
            what,
        })
    }

    /// One command, within the deadline and the breaker.
    pub async fn call<T, F, Fut>(&self, command: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let (permit, _) = self.breaker.try_acquire(Instant::now());
        let permit = permit.ok_or(RedisError::Skipped)?;
        let result = match self.connection().await {
            Ok(connection) => tokio::time::timeout(self.timeout, command(connection))
                .await
                .map_err(|_| RedisError::Failed("deadline passed".to_owned()))
                .and_then(|r| r.map_err(|e| RedisError::Failed(e.to_string()))),
            Err(error) => Err(error),
        };
        let verdict = match result {
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::Failure,
        };
        permit.record(verdict, Instant::now());
        result
    }

    /// The shared connection, made on first use (within the deadline).
    pub async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(connection) = self.lock().clone() {
            return Ok(connection);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| RedisError::Failed("connect: deadline passed".to_owned()))?
        .map_err(|e| {
            // Said at warn, not with the per-call failures: a refused certificate
            // or a TLS/plain-text mismatch is a setting to fix, not a passing blip.
            // The breaker spaces the tries, and so these lines.
            let error = crate::secret::scrub(&e.to_string()).into_owned();
            tracing::warn!(%error, what = self.what, "redis: cannot connect");
            RedisError::Failed(format!("connect: {error}"))
        })?;
        *self.lock() = Some(connection.clone());
        Ok(connection)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ConnectionManager>> {
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
