//! What a managed key or a tenant is granted — models, limits, a budget, a lifetime —
//! and the admin API's requests that set it, checked field by field.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The most patterns, and the longest metadata, one key may carry: a request to
/// the admin API is bounded like any other.
const MAX_PATTERNS: usize = 64;
const MAX_METADATA_BYTES: usize = 4096;
const MAX_NAME: usize = 128;

/// Requests and tokens over time, and calls at once (the counters' own type).
pub use crate::quota::Limits;

impl Limits {
    /// Each limit set must be at least 1 (a key that may do nothing is revoked,
    /// not limited to zero).
    pub fn check(&self, field: &str) -> Result<(), Invalid> {
        let all = [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("tpd", self.tpd),
            ("concurrency", self.concurrency),
        ];
        match all.into_iter().find(|(_, v)| *v == Some(0)) {
            Some((name, _)) => Err(Invalid::new(
                format!("{field}.{name}"),
                "must be at least 1, or left out for no limit",
            )),
            None => Ok(()),
        }
    }
}

/// What a key or a tenant may spend: its limits and its budget.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Grant {
    pub limits: Limits,
    pub budget: Option<Budget>,
}

/// An amount to spend per period, in the deployment's currency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub amount: f64,
    pub period: Period,
}

impl Budget {
    pub fn check(&self, field: &str) -> Result<(), Invalid> {
        match self.amount.is_finite() && self.amount >= 0.0 {
            true => Ok(()),
            false => Err(Invalid::new(
                format!("{field}.amount"),
                "must be a number ≥ 0",
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

/// A field of an admin request that cannot be taken as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A managed client key as stored (its SHA-256, never the key).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub sha256: [u8; 32],
    pub name: String,
    pub tenant: String,
    /// Alias patterns; empty: every model.
    pub models: Vec<String>,
    pub limits: Limits,
    pub budget: Option<Budget>,
    pub metadata: Map<String, Value>,
    /// Microseconds since the Unix epoch.
    pub expires_us: Option<i64>,
    pub revoked_us: Option<i64>,
    pub created_us: i64,
    pub updated_us: i64,
}

impl KeyRecord {
    pub fn status(&self, now_us: i64) -> &'static str {
        match (self.revoked_us, self.expires_us) {
            (Some(_), _) => "revoked",
            (None, Some(expires)) if expires <= now_us => "expired",
            _ => "active",
        }
    }

    /// The key as the admin API and `ragway keys` show it: everything but the
    /// secret and its hash.
    pub fn view(&self, now_us: i64) -> Value {
        json!({
            "object": "key",
            "id": self.id,
            "name": self.name,
            "tenant": self.tenant,
            "models": self.models,
            "limits": self.limits,
            "budget": self.budget,
            "metadata": self.metadata,
            "expires_at": self.expires_us.map(rfc3339),
            "revoked_at": self.revoked_us.map(rfc3339),
            "created_at": rfc3339(self.created_us),
            "updated_at": rfc3339(self.updated_us),
            "status": self.status(now_us),
        })
    }
}

/// A tenant's own limits and budget, which every key of the tenant shares.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TenantRecord {
    pub tenant: String,
    pub limits: Limits,
    pub budget: Option<Budget>,
    pub updated_us: i64,
}

impl TenantRecord {
    pub fn view(&self) -> Value {
        json!({
            "object": "tenant",
            "tenant": self.tenant,
            "limits": self.limits,
            "budget": self.budget,
            "updated_at": (self.updated_us > 0).then(|| rfc3339(self.updated_us)),
        })
    }
}

/// `POST /admin/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: Option<String>,
    pub tenant: String,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    pub budget: Option<Budget>,
    /// RFC 3339 (`2027-01-01T00:00:00Z`).
    pub expires_at: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

impl NewKey {
    /// The record to store, and the key to show once.
    pub fn into_record(self, now_us: i64) -> Result<(KeyRecord, String), Invalid> {
        check_tenant(&self.tenant)?;
        let name = self.name.unwrap_or_default();
        check_name(&name)?;
        check_patterns(&self.models)?;
        self.limits.check("limits")?;
        if let Some(budget) = &self.budget {
            budget.check("budget")?;
        }
        check_metadata(&self.metadata)?;
        let expires_us = self
            .expires_at
            .as_deref()
            .map(|at| future_time(at, now_us))
            .transpose()?;
        let key = new_secret();
        let record = KeyRecord {
            id: new_id(),
            sha256: Sha256::digest(key.as_bytes()).into(),
            name,
            tenant: self.tenant,
            models: self.models,
            limits: self.limits,
            budget: self.budget,
            metadata: self.metadata,
            expires_us,
            revoked_us: None,
            created_us: now_us,
            updated_us: now_us,
        };
        Ok((record, key))
    }
}

/// `PATCH /admin/keys/{id}`: the fields given replace the stored ones; `null`
/// clears a budget or an expiry. A key stays with its tenant.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub models: Option<Vec<String>>,
    pub limits: Option<Limits>,
    #[serde(default, deserialize_with = "present")]
    pub budget: Option<Option<Budget>>,
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<String>>,
    pub metadata: Option<Map<String, Value>>,
}

impl KeyPatch {
    /// Checks every field before any is applied, so a bad patch changes nothing.
    pub fn apply(self, record: &mut KeyRecord, now_us: i64) -> Result<(), Invalid> {
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        if let Some(models) = &self.models {
            check_patterns(models)?;
        }
        if let Some(limits) = &self.limits {
            limits.check("limits")?;
        }
        if let Some(Some(budget)) = &self.budget {
            budget.check("budget")?;
        }
        if let Some(metadata) = &self.metadata {
            check_metadata(metadata)?;
        }
        let expires_us = match &self.expires_at {
            Some(Some(at)) => Some(Some(future_time(at, now_us)?)),
            Some(None) => Some(None),
            None => None,
        };
        if let Some(name) = self.name {
            record.name = name;
        }
        if let Some(models) = self.models {
            record.models = models;
        }
        if let Some(limits) = self.limits {
            record.limits = limits;
        }
        if let Some(budget) = self.budget {
            record.budget = budget;
        }
        if let Some(expires_us) = expires_us {
            record.expires_us = expires_us;
        }
        if let Some(metadata) = self.metadata {
            record.metadata = metadata;
        }
        record.updated_us = now_us;
        Ok(())
    }
}

/// `PUT /admin/tenants/{tenant}`: the tenant's limits and budget, replaced whole.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    #[serde(default)]
    pub limits: Limits,
    pub budget: Option<Budget>,
}

impl TenantSettings {
    pub fn into_record(self, tenant: &str, now_us: i64) -> Result<TenantRecord, Invalid> {
        check_tenant(tenant)?;
        self.limits.check("limits")?;
        if let Some(budget) = &self.budget {
            budget.check("budget")?;
        }
        Ok(TenantRecord {
            tenant: tenant.to_owned(),
            limits: self.limits,
            budget: self.budget,
            updated_us: now_us,
        })
    }
}

/// A field that may be given as `null` (`Some(None)`) or left out (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

pub fn check_tenant(tenant: &str) -> Result<(), Invalid> {
    let fine = !tenant.trim().is_empty()
        && tenant.chars().count() <= MAX_NAME
        && !tenant.chars().any(char::is_control);
    match fine {
        true => Ok(()),
        false => Err(Invalid::new(
            "tenant",
            "must be 1 to 128 characters, none of them control characters",
        )),
    }
}

fn check_name(name: &str) -> Result<(), Invalid> {
    match name.chars().count() <= MAX_NAME && !name.chars().any(char::is_control) {
        true => Ok(()),
        false => Err(Invalid::new(
            "name",
            "must be at most 128 characters, none of them control characters",
        )),
    }
}

fn check_patterns(patterns: &[String]) -> Result<(), Invalid> {
    if patterns.len() > MAX_PATTERNS {
        return Err(Invalid::new("models", "at most 64 patterns"));
    }
    for (i, pattern) in patterns.iter().enumerate() {
        if pattern.is_empty() || pattern.len() > MAX_NAME || pattern.chars().any(char::is_control) {
            return Err(Invalid::new(
                format!("models[{i}]"),
                "must be 1 to 128 characters (`*` matches any run of characters)",
            ));
        }
    }
    Ok(())
}

fn check_metadata(metadata: &Map<String, Value>) -> Result<(), Invalid> {
    let size = serde_json::to_string(metadata).map_or(usize::MAX, |s| s.len());
    match size <= MAX_METADATA_BYTES {
        true => Ok(()),
        false => Err(Invalid::new("metadata", "at most 4096 bytes as JSON")),
    }
}

/// An RFC 3339 time after `now_us`, in microseconds since the epoch.
fn future_time(text: &str, now_us: i64) -> Result<i64, Invalid> {
    let at = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        Invalid::new(
            "expires_at",
            "must be an RFC 3339 time, such as 2027-01-01T00:00:00Z",
        )
    })?;
    let us = i64::try_from(at.unix_timestamp_nanos() / 1000)
        .map_err(|_| Invalid::new("expires_at", "is out of range"))?;
    match us > now_us {
        true => Ok(us),
        false => Err(Invalid::new("expires_at", "is already past")),
    }
}

/// Microseconds since the epoch as RFC 3339, in UTC.
pub fn rfc3339(us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The current time in microseconds since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// 256 bits from the thread's CSPRNG (two v4 UUIDs, 244 random bits, hashed to
/// spread them): what a key and an id are cut from.
pub fn random_bytes() -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(uuid::Uuid::new_v4().as_bytes());
    hasher.update(uuid::Uuid::new_v4().as_bytes());
    hasher.finalize().into()
}

/// A new client key: `sk-rw-` and 43 URL-safe characters.
pub fn new_secret() -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes());
    format!("sk-rw-{encoded}")
}

/// A new key id: `key_` and 16 hex digits.
fn new_id() -> String {
    let bytes = random_bytes();
    let hex: String = bytes[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("key_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    fn new_key(json: Value) -> Result<(KeyRecord, String), Invalid> {
        serde_json::from_value::<NewKey>(json)
            .unwrap()
            .into_record(NOW)
    }

    #[test]
    fn a_new_key_is_stored_as_its_hash_only() {
        let (record, key) = new_key(json!({"tenant": "acme", "models": ["deepseek-*"]})).unwrap();
        assert!(key.starts_with("sk-rw-") && key.len() == 49, "{key}");
        assert_eq!(
            record.sha256,
            <[u8; 32]>::from(Sha256::digest(key.as_bytes()))
        );
        assert!(record.id.starts_with("key_") && record.id.len() == 20);
        let view = record.view(NOW).to_string();
        assert!(
            !view.contains(&key) && view.contains("\"status\":\"active\""),
            "{view}"
        );
        let (other, other_key) = new_key(json!({"tenant": "acme"})).unwrap();
        assert_ne!((other.id, other_key), (record.id, key));
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (json!({"tenant": ""}), "tenant"),
            (json!({"tenant": "a", "limits": {"rpm": 0}}), "limits.rpm"),
            (
                json!({"tenant": "a", "budget": {"amount": -1.0, "period": "day"}}),
                "budget.amount",
            ),
            (json!({"tenant": "a", "models": ["ok", ""]}), "models[1]"),
            (
                json!({"tenant": "a", "expires_at": "tomorrow"}),
                "expires_at",
            ),
            (
                json!({"tenant": "a", "expires_at": "2020-01-01T00:00:00Z"}),
                "expires_at",
            ),
            (json!({"tenant": "a", "name": "x\u{7}"}), "name"),
            (
                json!({"tenant": "a", "metadata": {"m": "x".repeat(5000)}}),
                "metadata",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(new_key(json.clone()).unwrap_err().field, field, "{json}");
        }
        // Unknown members and wrong types are serde's to refuse.
        assert!(serde_json::from_value::<NewKey>(json!({"tenant": "a", "rpm": 5})).is_err());
        assert!(
            serde_json::from_value::<NewKey>(
                json!({"tenant": "a", "budget": {"amount": 1, "period": "year"}})
            )
            .is_err()
        );
    }

    #[test]
    fn a_patch_changes_what_it_names_or_nothing() {
        let (mut record, _) = new_key(json!({"tenant": "acme", "name": "ci",
            "budget": {"amount": 10.0, "period": "month"}, "expires_at": "2030-01-01T00:00:00Z"}))
        .unwrap();
        let before = record.clone();
        let bad: KeyPatch =
            serde_json::from_value(json!({"name": "new", "limits": {"tpm": 0}})).unwrap();
        assert_eq!(
            bad.apply(&mut record, NOW + 1).unwrap_err().field,
            "limits.tpm"
        );
        assert_eq!(record, before);
        let patch: KeyPatch =
            serde_json::from_value(json!({"budget": null, "limits": {"rpm": 5}})).unwrap();
        patch.apply(&mut record, NOW + 1).unwrap();
        assert_eq!(record.budget, None);
        assert_eq!(record.limits.rpm, Some(5));
        assert_eq!(
            (record.name.as_str(), record.expires_us),
            ("ci", before.expires_us)
        );
        let clear: KeyPatch = serde_json::from_value(json!({"expires_at": null})).unwrap();
        clear.apply(&mut record, NOW + 2).unwrap();
        assert_eq!(record.expires_us, None);
        assert!(serde_json::from_value::<KeyPatch>(json!({"tenant": "other"})).is_err());
    }

    #[test]
    fn status_follows_revocation_and_expiry() {
        let (mut record, _) =
            new_key(json!({"tenant": "a", "expires_at": "2030-01-01T00:00:00Z"})).unwrap();
        let expires = record.expires_us.unwrap();
        assert_eq!(record.status(expires - 1), "active");
        assert_eq!(record.status(expires), "expired");
        record.revoked_us = Some(NOW);
        assert_eq!(record.status(NOW), "revoked");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
