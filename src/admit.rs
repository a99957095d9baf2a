//! Who may call: client keys, each standing for a tenant. Keys are compared by
//! their SHA-256, so the process never holds them in the clear after start-up.
//! (Reading the key off a request is HTTP's business: `http::auth`.)

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::call::Caller;
use crate::error::GatewayError;

/// The client keys, by their hash. Empty when authentication is off.
#[derive(Default)]
pub struct ClientKeys {
    by_hash: HashMap<[u8; 32], Caller>,
}

impl ClientKeys {
    /// From each key's SHA-256 and the caller it stands for.
    pub fn new(keys: impl IntoIterator<Item = ([u8; 32], Caller)>) -> Self {
        ClientKeys {
            by_hash: keys.into_iter().collect(),
        }
    }

    /// The caller a presented key names (anonymous with authentication off).
    pub fn caller_of(&self, presented: Option<&str>) -> Result<Caller, GatewayError> {
        if self.by_hash.is_empty() {
            return Ok(Caller::anonymous());
        }
        let presented = presented.ok_or_else(|| {
            GatewayError::Unauthorized(
                "missing API key: send it as `Authorization: Bearer <key>`".to_owned(),
            )
        })?;
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.by_hash
            .get(&hash)
            .cloned()
            .ok_or_else(|| GatewayError::Unauthorized("invalid API key".to_owned()))
    }
}
