//! The console at `/console`: pages for operators (the admin key) and team leads
//! (a client key, its own tenant only), served by the gateway itself.
//!
//! Everything it shows is rendered here from templates and assets compiled into
//! the binary: no CDN, no font, no front-end build (air-gapped sites). The pages
//! are server-rendered, with a little JavaScript that polls this module's JSON.
//! Every response carries a strict Content-Security-Policy (scripts and styles from
//! this origin only, nothing inline, no frames). Sign-in and sessions: see
//! [`session`].

mod api;
mod audit;
mod page;
pub mod session;
mod usage;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::state::AppState;
use page::{LANG_COOKIE, Lang, render};
use session::{Session, Who};

const SESSION_COOKIE: &str = "ragway_console";
const SIGN_IN_COOKIE: &str = "ragway_console_sign_in";

/// No script, style, image or connection but this origin's; no frames, forms only
/// to this origin, no plugins, no `<base>`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The metric families the overview reads.
const OVERVIEW_METRICS: &[&str] = &[
    "ragway_requests_total",
    "ragway_request_duration_seconds",
    "ragway_failovers_total",
    "ragway_cache_lookups_total",
    "ragway_upstream_attempts_total",
    "ragway_breaker_state",
];

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/console", signed_in_page("overview"))
        .route("/console/keys", signed_in_page("keys"))
        .route("/console/audit", signed_in_page("audit"))
        .route("/console/usage", signed_in_page("usage"))
        .route("/console/providers", signed_in_page("providers"))
        .route("/console/documents", signed_in_page("documents"))
        .route("/console/playground", signed_in_page("playground"))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/api/overview", get(overview_data))
        .route("/console/assets/{file}", get(asset))
        .merge(api::router(state))
        .layer(axum::middleware::map_response(secure_headers))
}

/// What every console response carries.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    lang: Option<String>,
}

/// The signed-in caller of a console request, re-checked against the key table.
struct Visitor {
    session: Session,
    /// A client key's caller; `None` for the admin.
    caller: Option<crate::call::Caller>,
}

impl Visitor {
    fn of(state: &AppState, headers: &HeaderMap) -> Option<Visitor> {
        let value = cookie(headers, SESSION_COOKIE)?;
        let session = sessions(state).read(value, now())?;
        let caller = match session.who {
            Who::Admin => {
                state.config.auth.admin_key.as_ref()?;
                None
            }
            Who::Key(hash) => Some(state.client_keys.caller_of_hash(&hash).ok()?),
        };
        Some(Visitor { session, caller })
    }

    fn is_admin(&self) -> bool {
        self.session.who == Who::Admin
    }

    fn tenant(&self) -> Option<&str> {
        self.caller.as_ref().map(|c| &*c.tenant)
    }
}

/// `GET` of the page `name` (its template `{name}.html`) for the signed-in
/// visitor, or the way to the sign-in form.
fn signed_in_page(name: &'static str) -> axum::routing::MethodRouter<AppState> {
    get(
        move |State(state): State<AppState>, Query(query): Query<PageQuery>, headers: HeaderMap| async move {
            page_for(&state, &query, &headers, name)
        },
    )
}

fn page_for(state: &AppState, query: &PageQuery, headers: &HeaderMap, name: &str) -> Response {
    let lang = Lang::of(query.lang.as_deref(), headers);
    let Some(visitor) = Visitor::of(state, headers) else {
        return Redirect::to("/console/sign-in").into_response();
    };
    // The chat aliases the visitor may use (the playground's choice).
    let aliases: Vec<&str> = state
        .routes
        .aliases()
        .filter(|alias| {
            visitor
                .caller
                .as_ref()
                .is_none_or(|c| c.models.allows(alias))
        })
        .collect();
    let context = json!({
        "page": name,
        "csrf": sessions(state).csrf(&visitor.session),
        "admin": visitor.is_admin(),
        "tenant": visitor.tenant(),
        "aliases": aliases,
        "retrieval": state.corpus.is_some(),
    });
    with_lang(
        html(render(&format!("{name}.html"), lang, context)),
        lang,
        query,
        headers,
    )
}

async fn sign_in_page(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::of(query.lang.as_deref(), &headers);
    let form = sign_in_form(&state, &headers, lang, None, StatusCode::OK);
    with_lang(form, lang, &query, &headers)
}

/// The sign-in form with a fresh nonce cookie (and `error`, after a failed try).
fn sign_in_form(
    state: &AppState,
    headers: &HeaderMap,
    lang: Lang,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let (nonce, token) = sessions(state).sign_in_nonce(now());
    let can_sign_in = state.config.auth.admin_key.is_some()
        || !state.config.auth.tenants.is_empty()
        || state.client_keys.store().is_some();
    let context = json!({ "token": token, "error": error, "can_sign_in": can_sign_in });
    let mut response = (status, html(render("sign_in.html", lang, context))).into_response();
    set_cookie(
        &mut response,
        SIGN_IN_COOKIE,
        &nonce,
        600,
        over_tls(headers),
    );
    response
}

#[derive(Debug, Deserialize)]
struct SignIn {
    key: String,
    token: String,
}

async fn sign_in(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
    form: Result<Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    let lang = Lang::of(query.lang.as_deref(), &headers);
    let Ok(Form(form)) = form else {
        return forbidden();
    };
    let nonce = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if nonce.is_empty() || !sessions(&state).sign_in_matches(nonce, &form.token, now()) {
        return forbidden();
    }
    let Some((who, caller)) = who_is(&state, form.key.trim()) else {
        let wrong = page::text(lang, "wrong_key");
        return sign_in_form(
            &state,
            &headers,
            lang,
            Some(wrong),
            StatusCode::UNAUTHORIZED,
        );
    };
    let (_, value) = sessions(&state).issue(who, now());
    let mut response = Redirect::to("/console").into_response();
    // The sign-in's audit row names the client key (the admin's names none).
    if let Some(caller) = caller {
        response.extensions_mut().insert(caller);
    }
    let tls = over_tls(&headers);
    set_cookie(
        &mut response,
        SESSION_COOKIE,
        &value,
        session::LIFETIME_SECS,
        tls,
    );
    set_cookie(&mut response, SIGN_IN_COOKIE, "", 0, tls);
    response
}

/// Who a presented key signs in as: the admin, or a working client key and its
/// caller (never "anonymous": with authentication off, only the admin key signs in).
fn who_is(state: &AppState, key: &str) -> Option<(Who, Option<crate::call::Caller>)> {
    if key.is_empty() {
        return None;
    }
    let admin = state.config.auth.admin_key.as_ref();
    if admin.is_some_and(|admin| super::admin::is_admin_key(admin.expose(), key)) {
        return Some((Who::Admin, None));
    }
    let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let caller = state.client_keys.caller_of_hash(&presented).ok()?;
    Some((Who::Key(presented), Some(caller)))
}

#[derive(Debug, Deserialize)]
struct Token {
    token: String,
}

async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<Token>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(visitor) = Visitor::of(&state, &headers) else {
        return Redirect::to("/console/sign-in").into_response();
    };
    match form {
        Ok(Form(form)) if sessions(&state).csrf_matches(&visitor.session, &form.token) => {
            let mut response = Redirect::to("/console/sign-in").into_response();
            set_cookie(&mut response, SESSION_COOKIE, "", 0, over_tls(&headers));
            response
        }
        _ => forbidden(),
    }
}

/// The overview's counters, gateway-wide: the admin's only. (They name every
/// alias and target, which a client key may not be allowed to see; a tenant's own
/// figures come with the usage page.)
async fn overview_data(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match Visitor::of(&state, &headers) {
        None => {
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": "sign in"}))).into_response();
        }
        Some(visitor) if !visitor.is_admin() => {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "the admin's view"})),
            )
                .into_response();
        }
        Some(_) => {}
    }
    let local: Vec<&str> = state
        .routes
        .targets()
        .filter(|t| t.local)
        .map(|t| t.id.as_ref())
        .collect();
    let body = json!({
        "time": now_millis(),
        "metrics": state.metrics.snapshot(OVERVIEW_METRICS),
        "local_targets": local,
    });
    Json(body).into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind): (&'static str, &'static str) = match file.as_str() {
        "console.css" => (
            include_str!("assets/console.css"),
            "text/css; charset=utf-8",
        ),
        "console.js" => (
            include_str!("assets/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "keys.js" => (
            include_str!("assets/keys.js"),
            "text/javascript; charset=utf-8",
        ),
        "audit.js" => (
            include_str!("assets/audit.js"),
            "text/javascript; charset=utf-8",
        ),
        "usage.js" => (
            include_str!("assets/usage.js"),
            "text/javascript; charset=utf-8",
        ),
        "providers.js" => (
            include_str!("assets/providers.js"),
            "text/javascript; charset=utf-8",
        ),
        "common.js" => (
            include_str!("assets/common.js"),
            "text/javascript; charset=utf-8",
        ),
        "documents.js" => (
            include_str!("assets/documents.js"),
            "text/javascript; charset=utf-8",
        ),
        "playground.js" => (
            include_str!("assets/playground.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        html("<!doctype html><title>403</title><p>Forbidden.</p>".to_owned()),
    )
        .into_response()
}

/// Remembers a language chosen with `?lang=`.
fn with_lang(
    mut response: Response,
    lang: Lang,
    query: &PageQuery,
    headers: &HeaderMap,
) -> Response {
    if query.lang.is_some() {
        let tls = over_tls(headers);
        set_cookie(&mut response, LANG_COOKIE, lang.code(), 365 * 86_400, tls);
    }
    response
}

/// Adds a console cookie: only for `/console`, never to scripts, never from
/// another site, and only over TLS when the page came over TLS (`max_age` 0
/// removes it).
fn set_cookie(response: &mut Response, name: &str, value: &str, max_age: u64, tls: bool) {
    let cookie = format!(
        "{name}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if tls { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Whether the page reached the browser over TLS: the gateway listens in plain
/// HTTP behind a proxy that ends TLS and says so in `X-Forwarded-Proto`. (Believing
/// a client here can only add `Secure` to its own cookies.)
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The value of cookie `name` in the request, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// The sessions of this gateway (keyed by its admin key: see [`session`]).
fn sessions(state: &AppState) -> session::Sessions {
    session::Sessions::new(state.config.auth.admin_key.as_ref().map(|k| k.expose()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
