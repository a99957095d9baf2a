//! The console's JSON, under `/console/api/`: the admin API's own handlers (the
//! same checks, the same answers) reached with a console session instead of a
//! bearer key, plus the views the pages need on top of them.
//!
//! Every request is checked here: a session (401 without one), the CSRF token in
//! `x-csrf-token` on every change (403 without it: a form on another site cannot
//! set a header, and the cookie is `SameSite=Strict` as well), and the admin's
//! session for the admin's routes (403 for a client key's). A client key's session
//! sees its own tenant only.
//!
//! The documents and the playground reach `/v1/documents`, `/v1/search` and
//! `/v1/chat/completions`'s handlers the same way, as the session's tenant (the
//! admin names one).

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::super::documents::{self, Principal};
use super::super::{chat, keys};
use super::{Visitor, sessions};
use crate::admit::grant;
use crate::call::Caller;
use crate::error::GatewayError;
use crate::state::AppState;

/// The header a change carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Who a console API request is from, once [`session`] has checked it.
#[derive(Debug, Clone)]
pub(super) enum Signed {
    Admin,
    /// A client key's session: its caller, re-read from the key table.
    Client(Caller),
}

impl Signed {
    /// The tenant a search covers: the one the admin names (any, when none); a
    /// client key's session its own, and naming another is refused.
    pub(super) fn tenant_scope(
        &self,
        asked: Option<String>,
    ) -> Result<Option<String>, GatewayError> {
        let asked = asked.filter(|t| !t.trim().is_empty());
        match self {
            Signed::Admin => Ok(asked),
            Signed::Client(caller)
                if asked
                    .as_deref()
                    .is_some_and(|t| t.trim() != &*caller.tenant) =>
            {
                Err(GatewayError::Forbidden(
                    "a client key sees its own tenant only".to_owned(),
                ))
            }
            Signed::Client(caller) => Ok(Some(caller.tenant.to_string())),
        }
    }
}

pub fn router(state: AppState) -> Router<AppState> {
    let admin = Router::new()
        .route("/console/api/keys", post(keys::create))
        .route(
            "/console/api/keys/{id}",
            axum::routing::delete(keys::revoke),
        )
        .route("/console/api/keys/{id}/rotate", post(keys::rotate))
        .route(
            "/console/api/tenants/{tenant}",
            axum::routing::put(keys::put_tenant),
        )
        .route("/console/api/audit/verify", post(super::audit::verify))
        .route("/console/api/breakers", get(super::super::admin::breakers))
        .route(
            "/console/api/breakers/{target}/reset",
            post(super::super::admin::reset_breaker),
        )
        .route_layer(middleware::from_fn(admin_only));
    let documents = Router::new()
        .route(
            "/console/api/documents",
            post(documents::create)
                .get(documents::list)
                .delete(documents::delete_named),
        )
        .layer(super::super::document_body_limit(&state))
        .route("/console/api/search", post(documents::search));
    let chat = Router::new()
        .route("/console/api/chat", post(chat::completions))
        .route_layer(middleware::from_fn(as_caller));
    Router::new()
        .route("/console/api/keys", get(key_list))
        .route("/console/api/audit", get(super::audit::rows))
        .route("/console/api/audit.csv", get(super::audit::csv))
        .route("/console/api/usage", get(super::usage::sums))
        .route("/console/api/usage.csv", get(super::usage::csv))
        .merge(admin)
        .merge(documents)
        .merge(chat)
        .route_layer(middleware::from_fn_with_state(state, session))
}

/// Lets a request through with a console session (and, for a change, its CSRF
/// token), marked with who it is from.
async fn session(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(visitor) = Visitor::of(&state, request.headers()) else {
        return GatewayError::Unauthorized("sign in to the console".to_owned()).into_response();
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    let token = request
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !reads && !sessions(&state).csrf_matches(&visitor.session, token) {
        return GatewayError::Forbidden("a change needs the page's CSRF token".to_owned())
            .into_response();
    }
    let (signed, principal) = match visitor.caller {
        None => (Signed::Admin, Principal::Admin),
        Some(caller) => (Signed::Client(caller.clone()), Principal::Client(caller)),
    };
    request.extensions_mut().insert(signed.clone());
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    // The audit record of a client key's change names its key.
    if let Signed::Client(caller) = signed {
        response.extensions_mut().insert(caller);
    }
    response
}

#[derive(Debug, serde::Deserialize)]
struct AsTenant {
    tenant: Option<String>,
}

/// Who the playground's chat is from: a client key's session, its key (its
/// limits, budget and models); the admin's, the tenant it names in `?tenant=`,
/// under the key id `admin` (as the audit names the admin's own calls), within
/// that tenant's limits and budget.
async fn as_caller(mut request: Request, next: Next) -> Response {
    let caller = match request.extensions().get::<Signed>() {
        Some(Signed::Client(caller)) => caller.clone(),
        Some(Signed::Admin) => {
            let asked = axum::extract::Query::<AsTenant>::try_from_uri(request.uri())
                .ok()
                .and_then(|q| q.0.tenant)
                .unwrap_or_default();
            let tenant = asked.trim();
            if let Err(e) = grant::check_tenant(tenant) {
                return GatewayError::invalid(
                    format!("name the tenant to chat as: {}", e.message),
                    Some("tenant".to_owned()),
                )
                .into_response();
            }
            Caller::new(tenant, Some("admin"))
        }
        None => {
            return GatewayError::Unauthorized("sign in to the console".to_owned()).into_response();
        }
    };
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(caller);
    response
}

async fn admin_only(request: Request, next: Next) -> Response {
    match request.extensions().get::<Signed>() {
        Some(Signed::Admin) => next.run(request).await,
        _ => GatewayError::Forbidden("the admin's action".to_owned()).into_response(),
    }
}

/// `GET /console/api/keys`: the keys (a client key's session: its tenant's), each
/// with its budget and its tenant's as they stand, and the tenants' settings.
async fn key_list(
    State(state): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
) -> Result<Json<Value>, GatewayError> {
    let Some(store) = state.client_keys.store() else {
        return Ok(Json(json!({ "managed": false, "keys": [], "tenants": [] })));
    };
    let tenant = match &signed {
        Signed::Admin => None,
        Signed::Client(caller) => Some(caller.tenant.to_string()),
    };
    let records = store
        .list(tenant.as_deref())
        .await
        .map_err(keys::unavailable)?;
    let now = grant::now_us();
    let mut keys = Vec::with_capacity(records.len());
    for record in &records {
        let mut view = record.view(now);
        let caller = Caller::new(&record.tenant, Some(&record.id));
        view["standing"] = json!(state.pipeline.admission.standing(&caller).await?);
        keys.push(view);
    }
    let tenants: Vec<Value> = store
        .tenants()
        .await
        .map_err(keys::unavailable)?
        .iter()
        .filter(|t| tenant.as_deref().is_none_or(|own| own == t.tenant))
        .map(grant::TenantRecord::view)
        .collect();
    Ok(Json(
        json!({ "managed": true, "keys": keys, "tenants": tenants }),
    ))
}
