//! The outermost layer: every request gets a request id (the client's `x-request-id`
//! when it is sane, a new one otherwise) that is returned in the response and carried
//! by every log line of the request, and one access-log line plus its metrics.
//! Calls the pipeline did not record (refused before it ran, or not chat calls)
//! get their audit record here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::error::ErrorCode;
use crate::audit::{CallRecord, Origin};
use crate::call::Caller;
use crate::state::AppState;
use crate::telemetry::RequestFinished;
use crate::telemetry::traces::Trace;

pub const REQUEST_ID: &str = "x-request-id";

/// The id of the request being served, and its trace (empty with tracing off):
/// one extension for both, as each one more may cost the request's map of
/// extensions a reallocation.
#[derive(Clone)]
pub struct RequestId(pub Arc<str>, pub Trace);

/// What a handler tells the access log about the model call it served.
#[derive(Debug, Clone)]
pub struct ServedModel {
    pub alias: Arc<str>,
    pub target: Option<Arc<str>>,
    pub attempts: usize,
}

/// Set on a response whose call the pipeline has recorded (or will, when its
/// stream ends).
#[derive(Debug, Clone, Copy)]
pub struct Recorded;

pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (id, id_is_ours) = request_id(request.headers());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let route_name = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    // Its parent is the client's `traceparent`; empty without `[tracing]`.
    let trace = Trace::request(&method, route_name, request.headers(), &id);
    request
        .extensions_mut()
        .insert(RequestId(id.clone(), trace.clone()));
    // Probes and scrapes are not calls worth a record, nor the console's page
    // views and polls; its sign-ins and changes are.
    let console_view = route_name.starts_with("/console")
        && matches!(method, axum::http::Method::GET | axum::http::Method::HEAD);
    let audited = !matches!(route_name, "/healthz" | "/readyz" | "/metrics") && !console_view;
    // The record of a call the pipeline does not record; written when the
    // response is ready, or when the client leaves before it is (the handler's
    // future is then dropped, and this with it).
    let mut unrecorded = audited.then(|| {
        let origin = origin(&state, &request, route_name, id_is_ours);
        request.extensions_mut().insert(origin.clone());
        Unrecorded {
            state: state.clone(),
            id: id.clone(),
            origin,
            key: request.headers().get(header::AUTHORIZATION).cloned(),
            started,
            end: End::Abandoned,
        }
    });
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.run(request).instrument(span.clone()).await;
    trace.set(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if let Some(mut unrecorded) = unrecorded.take() {
        let extensions = response.extensions();
        unrecorded.end = match extensions.get::<Recorded>() {
            Some(_) => End::Recorded,
            None => End::Responded {
                status: response.status().as_u16(),
                error: extensions.get::<ErrorCode>().map(|e| e.0),
                caller: extensions.get::<Caller>().cloned(),
            },
        };
    }
    let metrics = &state.metrics;
    let served = response.extensions().get::<ServedModel>();
    span.in_scope(|| {
        metrics.request_finished(&RequestFinished {
            method: method.as_str(),
            route: route.as_ref().map_or("unmatched", MatchedPath::as_str),
            model: served.map_or("", |s| &s.alias),
            status: response.status().as_u16(),
            elapsed: started.elapsed(),
            target: served.and_then(|s| s.target.as_deref()),
            attempts: served.map_or(0, |s| s.attempts),
        })
    });
    response
}

/// A call's record until it is written: on drop, so that a call whose client
/// left early is recorded too (as `abandoned`, status 499).
struct Unrecorded {
    state: AppState,
    id: Arc<str>,
    origin: Origin,
    key: Option<HeaderValue>,
    started: Instant,
    end: End,
}

/// How a call the guard watches ended.
enum End {
    /// The client left before the response.
    Abandoned,
    /// The pipeline records it.
    Recorded,
    Responded {
        status: u16,
        error: Option<&'static str>,
        /// The caller authentication established, when the response says.
        caller: Option<Caller>,
    },
}

impl Drop for Unrecorded {
    fn drop(&mut self) {
        let (status, error, caller) = match std::mem::replace(&mut self.end, End::Recorded) {
            End::Recorded => return,
            End::Abandoned => (499, None, None),
            End::Responded {
                status,
                error,
                caller,
            } => (status, error, caller),
        };
        let caller = caller.or_else(|| identify(&self.state, self.key.take()));
        let record = refusal(
            &self.id,
            self.origin.clone(),
            (status, error),
            caller.as_ref(),
            self.started.elapsed(),
        );
        self.state.pipeline.audit.record(record);
    }
}

/// The record of a call the pipeline never ran: refused (`status`, `error`), or
/// left by its client before an answer (499: abandoned).
pub(super) fn refusal(
    id: &str,
    origin: Origin,
    (status, error): (u16, Option<&'static str>),
    caller: Option<&Caller>,
    latency: std::time::Duration,
) -> CallRecord {
    let mut record = CallRecord::refused(id, origin, status, error);
    if status == 499 {
        record.outcome = crate::call::Outcome::Abandoned;
    }
    record.latency = latency;
    if let Some(caller) = caller {
        record.tenant = Some(caller.tenant.to_string());
        record.key_id = caller.key_id.as_deref().map(str::to_owned);
    }
    record
}

/// Where the request came from: the route's pattern, the client's address (from
/// the configured proxy header, else the peer), its user agent, and whether the
/// request id is the gateway's own.
fn origin(state: &AppState, request: &Request, route: &str, id_is_ours: bool) -> Origin {
    let headers = request.headers();
    let forwarded = state
        .config
        .audit
        .as_ref()
        .and_then(|a| a.client_ip_header.as_deref())
        .and_then(|name| headers.get(name)?.to_str().ok())
        .and_then(|v| v.split(',').next()?.trim().parse::<IpAddr>().ok());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| Arc::from(crate::encode::truncate(ua, 256)));
    Origin {
        route: route.into(),
        client_ip: forwarded.or(peer),
        user_agent,
        request_id_is_ours: id_is_ours,
    }
}

/// The caller a bearer key names: a client key's tenant, or the admin.
fn identify(state: &AppState, key: Option<HeaderValue>) -> Option<Caller> {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, key?);
    if super::admin::is_admin(state, &headers) {
        return Some(Caller::new("admin", Some("admin")));
    }
    super::auth::caller_of(&state.client_keys, &headers).ok()
}

/// The client's id if it is printable ASCII of sane length (it goes into logs and
/// headers), otherwise a new UUID; and whether the id is the gateway's own.
fn request_id(headers: &HeaderMap) -> (Arc<str>, bool) {
    let client = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    match client {
        Some(id) => (Arc::from(id), false),
        None => (uuid::Uuid::new_v4().to_string().into(), true),
    }
}
