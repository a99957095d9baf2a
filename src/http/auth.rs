//! Client authentication over HTTP: the bearer key of a request, looked up in the
//! [`ClientKeys`].

use std::sync::Arc;

use crate::admit::ClientKeys;
use crate::call::Caller;
use crate::error::GatewayError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The key in `Authorization: Bearer <key>`, or else in `x-api-key` (as
/// Anthropic's clients send it), if there is one.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Some(headers.get("x-api-key")?.to_str().ok()?.trim());
    };
    let value = value.to_str().ok()?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(key.trim())
}

/// The caller a request's bearer key names (anonymous with auth off).
pub fn caller_of(keys: &ClientKeys, headers: &HeaderMap) -> Result<Caller, GatewayError> {
    keys.caller_of(bearer(headers))
}

/// Puts the [`Caller`] in the request's extensions, or answers 401.
pub async fn authenticate(
    State(keys): State<Arc<ClientKeys>>,
    mut request: Request,
    next: Next,
) -> Response {
    match caller_of(&keys, request.headers()) {
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
