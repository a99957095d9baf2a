//! The tenants' corpus generations: one point per tenant in a collection of their
//! own, shared by every replica.

use super::*;

/// How long a tenant's generation read from the server is reused. It is read on
/// every chat request (it is part of the answer cache's key), so it is cached; a
/// bump made by another replica is seen here at most this late.
pub const GENERATION_TTL: Duration = Duration::from_secs(1);

/// The collection holding the tenants' generations, beside `collection`.
pub fn generations_collection(collection: &str) -> String {
    format!("{collection}_generations")
}

pub(super) fn parse_generation(payload: HashMap<String, Value>) -> Option<u64> {
    #[derive(Deserialize)]
    struct Stored {
        generation: u64,
    }
    serde_json::from_value::<Stored>(serde_json::Value::from(Payload::from(payload)))
        .ok()
        .map(|s| s.generation)
}

/// The id of the point holding a tenant's generation: the first 16 bytes of
/// SHA-256(`ragway-generation\0` + tenant), as a version-8 (custom) UUID. Every
/// replica derives the same id, so they share one point per tenant.
pub fn generation_point_id(tenant: &str) -> Uuid {
    tenant_point_id("ragway-generation", tenant)
}

/// A tenant's point of one `kind` in the generations collection: the first 16
/// bytes of SHA-256(`kind` + `\0` + tenant), as a version-8 (custom) UUID.
pub(super) fn tenant_point_id(kind: &str, tenant: &str) -> Uuid {
    let digest = Sha256::new()
        .chain_update(kind.as_bytes())
        .chain_update(b"\0")
        .chain_update(tenant.as_bytes())
        .finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

pub(super) fn next_generation(old: u64, now_micros: u64) -> u64 {
    old.saturating_add(1).max(now_micros)
}

pub(super) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
