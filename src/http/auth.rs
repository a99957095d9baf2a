//! Client authentication: a bearer key maps to a tenant. Keys are compared by their
//! SHA-256, so the process never needs to hold them in the clear after start-up.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::error::GatewayError;
use crate::pipeline::Caller;

/// The client keys, by their hash. Empty when authentication is off.
#[derive(Default)]
pub struct ClientKeys {
    by_hash: HashMap<[u8; 32], Caller>,
}

impl ClientKeys {
    pub fn from_config(config: &AuthConfig) -> Self {
        let by_hash = config
            .keys
            .iter()
            .map(|key| {
                let caller = Caller {
                    tenant: key.tenant.as_str().into(),
                    key_id: Some(key.id.as_str().into()),
                };
                (key.sha256, caller)
            })
            .collect();
        ClientKeys { by_hash }
    }

    /// The caller the request's bearer key names (anonymous with auth off).
    pub fn caller_of(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        if self.by_hash.is_empty() {
            return Ok(Caller::anonymous());
        }
        let presented = bearer(headers).ok_or_else(|| {
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

/// The key in `Authorization: Bearer <key>`, if there is one.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(key.trim())
}

/// Puts the [`Caller`] in the request's extensions, or answers 401.
pub async fn authenticate(
    State(keys): State<Arc<ClientKeys>>,
    mut request: Request,
    next: Next,
) -> Response {
    match keys.caller_of(request.headers()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller.clone());
            let mut response = next.run(request).await;
            // The audit record of a call the handler refused names its caller.
            response.extensions_mut().insert(caller);
            response
        }
        Err(error) => error.into_response(),
    }
}
