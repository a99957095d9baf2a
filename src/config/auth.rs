//! `[auth]`: the client keys, each standing for a tenant, and the admin key.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::validate::Problems;
use super::{Env, Secret};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub keys: Vec<RawClientKey>,
    /// The environment variable holding the key for `/admin/…` endpoints.
    pub admin_key_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientKey {
    pub id: String,
    pub tenant: String,
    /// The environment variable that holds the key.
    pub key_env: Option<String>,
    /// Or the key's SHA-256 in hex, so the file never holds the key itself.
    pub sha256: Option<String>,
}

/// Client authentication. With no keys configured, every caller is the `default`
/// tenant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthConfig {
    pub keys: Vec<ClientKey>,
    /// The tenants the client keys name (whether or not their secrets are here):
    /// empty when authentication is off.
    pub tenants: BTreeSet<String>,
    pub admin_key_env: Option<String>,
    /// Without one, the `/admin/…` endpoints are off.
    pub admin_key: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientKey {
    pub id: String,
    pub tenant: String,
    #[serde(skip)]
    pub sha256: [u8; 32],
}

pub(super) fn auth(raw: RawAuth, env: &Env, problems: &mut Problems) -> AuthConfig {
    let mut ids = BTreeSet::new();
    let mut keys = Vec::new();
    let tenants = raw.keys.iter().map(|k| k.tenant.clone()).collect();
    for (i, key) in raw.keys.into_iter().enumerate() {
        let at = format!("auth.keys[{i}]");
        if key.id.trim().is_empty() || !ids.insert(key.id.clone()) {
            problems.add(format!("{at}.id"), "must be non-empty and unique");
        }
        if key.tenant.trim().is_empty() {
            problems.add(format!("{at}.tenant"), "must not be empty");
        }
        let digest = match (&key.key_env, &key.sha256) {
            (Some(var), None) => problems
                .secret(&format!("{at}.key_env"), var, env)
                .map(|secret| Sha256::digest(secret.expose().as_bytes()).into()),
            (None, Some(hex)) => parse_sha256(hex).or_else(|| {
                problems.add(format!("{at}.sha256"), "must be 64 hex digits");
                None
            }),
            _ => {
                problems.add(&at, "set exactly one of key_env or sha256");
                None
            }
        };
        if let Some(sha256) = digest {
            keys.push(ClientKey {
                id: key.id,
                tenant: key.tenant,
                sha256,
            });
        }
    }
    let admin_key = raw
        .admin_key_env
        .as_deref()
        .and_then(|var| problems.secret("auth.admin_key_env", var, env));
    AuthConfig {
        keys,
        tenants,
        admin_key_env: raw.admin_key_env,
        admin_key,
    }
}

pub(super) fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
