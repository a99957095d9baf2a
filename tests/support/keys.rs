//! Helpers for tests of managed keys and limits: the admin API, a client call by
//! key, and waiting for a condition.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Gateway, TempDir, ask};

pub const ADMIN: &str = "admin-secret";

pub fn sqlite_url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.0.join("keys.db").display())
}

pub async fn admin(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = gw
        .http()
        .request(method, format!("{}{path}", gw.url))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// A key made through `POST /admin/keys` with `body`; the key itself.
pub async fn new_key(gw: &Gateway, body: Value) -> String {
    let created = admin(gw, reqwest::Method::POST, "/admin/keys", Some(body)).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    created["key"].as_str().unwrap().to_owned()
}

/// `GET path` with a client key.
pub async fn get_as(gw: &Gateway, key: &str, path: &str) -> reqwest::Response {
    gw.http()
        .get(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

pub async fn chat_as(gw: &Gateway, key: &str, model: &str) -> reqwest::Response {
    gw.http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(&ask(model, "hello"))
        .send()
        .await
        .unwrap()
}

/// Polls `ok` every 10 ms; how long it took to hold (panics after 10 s).
pub async fn time_until(mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if ok().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s");
}

/// The gateway's count of a one-message prompt (`ask(model, text)`): four for the
/// message, a token per CJK character and per four bytes of the rest.
pub fn prompt_estimate(text: &str) -> f64 {
    (4 + ragway::tokens::text_tokens(text)) as f64
}
