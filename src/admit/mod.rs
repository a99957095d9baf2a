//! Who may call: client keys, each standing for a tenant. Keys from the config file
//! are fixed; with `[governance]`, keys are also data — created, changed and
//! revoked at run time in the gateway's database ([`store::KeyStore`]), and every
//! replica follows the table ([`ClientKeys::refresh`]). Keys are compared by their
//! SHA-256, so the process never holds them in the clear.
//! (Reading the key off a request is HTTP's business: `http::auth`.)

pub mod admission;
pub mod grant;
pub mod manage;
pub mod period;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::call::{Caller, ModelAccess};
use crate::error::GatewayError;
use grant::{Grant, KeyRecord, TenantRecord};
use store::{KeyStore, StoreError};

/// `[governance]`: keys and tenants as data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GovernanceConfig {
    /// The audit database unless set.
    pub database: crate::db::Database,
    /// How often each replica reads what changed in the key table: a revoked key
    /// is refused everywhere within this time (and one read).
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub refresh_every: Duration,
    /// Tokens reserved for the answer of a request without `max_tokens`, until
    /// the call ends and its real count is known.
    pub reserve_output_tokens: u64,
    /// Counters shared by replicas in Redis; this process's memory when `None`.
    pub redis: Option<SharedCounters>,
    /// The currency of budgets and prices (`CNY`).
    pub currency: String,
    /// The share of a budget from which it is reported as nearly spent.
    pub soft_budget: f64,
    /// Where budget days begin: `+08:00` for Beijing time.
    #[serde(serialize_with = "crate::encode::as_display")]
    pub budget_utc_offset: time::UtcOffset,
}

/// The limits' counters in Redis.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SharedCounters {
    #[serde(skip)]
    pub url: String,
    pub ca_file: Option<std::path::PathBuf>,
    pub key_prefix: String,
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub timeout: Duration,
    pub on_down: crate::quota::redis::OnDown,
}

/// The client keys, by their hash.
#[derive(Default)]
pub struct ClientKeys {
    fixed: HashMap<[u8; 32], Caller>,
    /// The key table's keys, as this replica last read them.
    managed: Option<Managed>,
}

struct Managed {
    store: KeyStore,
    view: RwLock<View>,
}

#[derive(Default)]
struct View {
    by_hash: HashMap<[u8; 32], Entry>,
    /// Each live managed key by id: its current hash (a rotated key's old hash
    /// goes) and its own limits and budget.
    by_id: HashMap<String, ([u8; 32], Grant)>,
    /// Each tenant's own limits and budget.
    tenants: HashMap<String, Grant>,
    revision: i64,
}

struct Entry {
    caller: Caller,
    expires_us: Option<i64>,
}

impl ClientKeys {
    /// From each fixed key's SHA-256 and the caller it stands for.
    pub fn new(keys: impl IntoIterator<Item = ([u8; 32], Caller)>) -> Self {
        ClientKeys {
            fixed: keys.into_iter().collect(),
            managed: None,
        }
    }

    /// With the key table in `store` as well: every caller must then present a key.
    pub fn with_store(mut self, store: KeyStore) -> Self {
        self.managed = Some(Managed {
            store,
            view: RwLock::default(),
        });
        self
    }

    /// The key table, when keys are data.
    pub fn store(&self) -> Option<&KeyStore> {
        self.managed.as_ref().map(|m| &m.store)
    }

    /// The caller a presented key names (anonymous with authentication off).
    pub fn caller_of(&self, presented: Option<&str>) -> Result<Caller, GatewayError> {
        if self.fixed.is_empty() && self.managed.is_none() {
            return Ok(Caller::anonymous());
        }
        let presented = presented.ok_or_else(|| {
            GatewayError::Unauthorized(
                "missing API key: send it as `Authorization: Bearer <key>`".to_owned(),
            )
        })?;
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.caller_of_hash(&hash)
    }

    /// The caller of the key whose SHA-256 is `hash`, if the key still works (the
    /// console's sessions keep the hash, never the key, and ask again on every
    /// page: a revoked, rotated or expired key ends them).
    pub fn caller_of_hash(&self, hash: &[u8; 32]) -> Result<Caller, GatewayError> {
        if let Some(caller) = self.fixed.get(hash) {
            return Ok(caller.clone());
        }
        let invalid = || GatewayError::Unauthorized("invalid API key".to_owned());
        let managed = self.managed.as_ref().ok_or_else(invalid)?;
        let view = managed.view.read().unwrap_or_else(|e| e.into_inner());
        let entry = view.by_hash.get(hash).ok_or_else(invalid)?;
        if entry.expires_us.is_some_and(|at| at <= grant::now_us()) {
            return Err(GatewayError::Unauthorized(
                "this API key has expired".to_owned(),
            ));
        }
        Ok(entry.caller.clone())
    }

    /// A managed key's own limits and budget, as last read (`None` for a fixed
    /// key).
    pub fn key_grant(&self, id: &str) -> Option<Grant> {
        let view = self.managed.as_ref()?.view.read().ok()?;
        view.by_id.get(id).map(|(_, grant)| *grant)
    }

    /// A tenant's own limits and budget, as last read.
    pub fn tenant_grant(&self, tenant: &str) -> Option<Grant> {
        let view = self.managed.as_ref()?.view.read().ok()?;
        view.tenants.get(tenant).copied()
    }

    /// A tenant's settings this replica changed itself, known at once.
    pub fn learn_tenant(&self, tenant: TenantRecord) {
        if let Some(managed) = &self.managed {
            let mut view = managed.view.write().unwrap_or_else(|e| e.into_inner());
            view.apply_tenant(tenant);
        }
    }

    /// Reads what changed in the key table since the last read, and applies it.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let Some(managed) = &self.managed else {
            return Ok(());
        };
        let since = managed.view.read().map_or(0, |v| v.revision);
        let changes = managed.store.changes(since).await?;
        let mut view = managed.view.write().unwrap_or_else(|e| e.into_inner());
        // Another refresh (or a local change) may have gone further meanwhile.
        if changes.revision <= view.revision {
            return Ok(());
        }
        for key in changes.keys {
            view.apply(key);
        }
        for tenant in changes.tenants {
            view.apply_tenant(tenant);
        }
        view.revision = changes.revision;
        Ok(())
    }

    /// Applies a change this replica made itself at once, without waiting for
    /// the next read of the table.
    pub fn learn(&self, key: KeyRecord) {
        if let Some(managed) = &self.managed {
            managed
                .view
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .apply(key);
        }
    }

    /// Brings the key table's schema up to date and reads it whole: at start-up,
    /// so the first request already knows every key.
    pub async fn load(&self) -> Result<(), StoreError> {
        if let Some(managed) = &self.managed {
            managed.store.migrate().await?;
        }
        self.refresh().await
    }

    /// Follows the key table every `every` until `stop` is cancelled; a table that
    /// cannot be read keeps the last view (and says so, once per outage).
    pub async fn follow(
        self: Arc<Self>,
        every: Duration,
        mut loaded: bool,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let read = match loaded {
                true => self.refresh().await,
                false => self.load().await,
            };
            match read {
                Ok(()) => {
                    if failing {
                        tracing::info!("the key table is readable again");
                    }
                    (loaded, failing) = (true, false);
                }
                Err(error) if !failing => {
                    tracing::warn!(%error, "cannot read the key table; keeping the keys last read");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }
}

impl View {
    fn apply(&mut self, key: KeyRecord) {
        if let Some((old, _)) = self.by_id.remove(&key.id) {
            self.by_hash.remove(&old);
        }
        if key.revoked_us.is_some() {
            return;
        }
        let caller = Caller {
            tenant: key.tenant.as_str().into(),
            key_id: Some(key.id.as_str().into()),
            models: ModelAccess::from_patterns(&key.models),
        };
        let grant = Grant {
            limits: key.limits,
            budget: key.budget,
        };
        self.by_id.insert(key.id, (key.sha256, grant));
        self.by_hash.insert(
            key.sha256,
            Entry {
                caller,
                expires_us: key.expires_us,
            },
        );
    }

    fn apply_tenant(&mut self, tenant: TenantRecord) {
        let grant = Grant {
            limits: tenant.limits,
            budget: tenant.budget,
        };
        self.tenants.insert(tenant.tenant, grant);
    }
}
