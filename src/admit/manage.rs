//! The changes an operator makes to keys and tenants, the same through the admin
//! API and `ragway keys`: each checked in full, then written in one transaction.

use sha2::{Digest, Sha256};

use super::grant::{self, Invalid, KeyPatch, KeyRecord, NewKey, TenantRecord, TenantSettings};
use super::store::{KeyStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{}: {}", .0.field, .0.message)]
    Invalid(Invalid),
    #[error("no key has the id `{0}`")]
    NoSuchKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Invalid> for ManageError {
    fn from(invalid: Invalid) -> Self {
        ManageError::Invalid(invalid)
    }
}

/// A new key: its record, and the key itself (shown this once).
pub async fn create(store: &KeyStore, new: NewKey) -> Result<(KeyRecord, String), ManageError> {
    let (record, key) = new.into_record(grant::now_us())?;
    store.create(&record).await?;
    Ok((record, key))
}

/// Changes the fields `patch` gives; a bad field changes nothing.
pub async fn patch(store: &KeyStore, id: &str, patch: KeyPatch) -> Result<KeyRecord, ManageError> {
    let now = grant::now_us();
    modify(store, id, |key| match key.revoked_us {
        Some(_) => Err(Invalid::new("id", "a revoked key cannot be changed")),
        None => patch.apply(key, now),
    })
    .await
}

/// Revokes the key: it is kept, so that audit rows still name it. Revoking it again
/// changes nothing.
pub async fn revoke(store: &KeyStore, id: &str) -> Result<KeyRecord, ManageError> {
    let now = grant::now_us();
    modify(store, id, |key| {
        if key.revoked_us.is_none() {
            key.revoked_us = Some(now);
            key.updated_us = now;
        }
        Ok(())
    })
    .await
}

/// A new key for the same id, settings and spend; the old key stops working.
pub async fn rotate(store: &KeyStore, id: &str) -> Result<(KeyRecord, String), ManageError> {
    let now = grant::now_us();
    let secret = grant::new_secret();
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let key = modify(store, id, |key| match key.revoked_us {
        Some(_) => Err(Invalid::new("id", "a revoked key cannot be rotated")),
        None => {
            key.sha256 = hash;
            key.updated_us = now;
            Ok(())
        }
    })
    .await?;
    Ok((key, secret))
}

/// Sets a tenant's limits and budget, which its keys share.
pub async fn put_tenant(
    store: &KeyStore,
    tenant: &str,
    settings: TenantSettings,
) -> Result<TenantRecord, ManageError> {
    let record = settings.into_record(tenant, grant::now_us())?;
    store.put_tenant(&record).await?;
    Ok(record)
}

async fn modify(
    store: &KeyStore,
    id: &str,
    change: impl FnOnce(&mut KeyRecord) -> Result<(), Invalid>,
) -> Result<KeyRecord, ManageError> {
    match store.modify(id, change).await? {
        Some(changed) => Ok(changed?),
        None => Err(ManageError::NoSuchKey(id.to_owned())),
    }
}
