//! CORS for browser front-ends (`server.cors_origins`): off by default; a
//! configured origin's preflight and calls get the headers, another's do not; the
//! console and the admin API never do; and a page on another origin, in headless
//! Chromium, reads an answer only when its origin is allowed.

use std::time::Duration;

use serde_json::json;

use crate::support::{FakeProvider, Gateway, config_over};

const PAGE_ORIGIN: &str = "https://chat.example.com";

fn with_origins(fake: &FakeProvider, origins: &str) -> String {
    format!(
        "[server]\ncors_origins = {origins}\n\n{}\n[auth]\nadmin_key_env = \"ADMIN\"\n",
        config_over(fake, &[("chat", &["ok"])])
    )
}

async fn preflight(gw: &Gateway, path: &str, origin: &str) -> reqwest::Response {
    gw.http()
        .request(reqwest::Method::OPTIONS, format!("{}{path}", gw.url))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cross_origin_calls_are_allowed_only_for_the_configured_origins() {
    let fake = FakeProvider::start().await;
    // Off by default: no preflight answered, no header on an answer.
    let gw = Gateway::start(&config_over(&fake, &[("chat", &["ok"])])).await;
    let refused = preflight(&gw, "/v1/chat/completions", PAGE_ORIGIN).await;
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_ne!(refused.status(), 204);

    let gw = Gateway::start_with_env(
        &with_origins(&fake, &format!("[\"{PAGE_ORIGIN}\"]")),
        &[("ADMIN", "admin")],
    )
    .await;
    let allowed = preflight(&gw, "/v1/chat/completions", PAGE_ORIGIN).await;
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        PAGE_ORIGIN
    );
    let headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(headers.contains("authorization") && headers.contains("content-type"));
    let answered = gw
        .http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("origin", PAGE_ORIGIN)
        .json(&crate::support::ask("chat", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    assert_eq!(
        answered.headers()["access-control-allow-origin"],
        PAGE_ORIGIN
    );
    let exposed = answered.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-ragway-target"), "{exposed}");

    // Another site: refused at preflight; its calls carry no permission.
    let other = preflight(&gw, "/v1/chat/completions", "https://evil.example").await;
    assert_eq!(other.status(), 403);
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // The console and the admin API are never for other sites.
    for path in ["/console/api/keys", "/admin/keys"] {
        let response = preflight(&gw, path, PAGE_ORIGIN).await;
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{path}"
        );
    }
}

#[test]
fn an_origin_is_checked_with_the_config() {
    use ragway::config::{Config, Env};
    let parse = |origins: &str| {
        Config::from_toml(
            &format!("[server]\ncors_origins = {origins}\n"),
            &Env::from_pairs(std::iter::empty::<(&str, &str)>()),
        )
    };
    assert!(parse("[\"https://chat.example.com\", \"http://localhost:3000\", \"*\"]").is_ok());
    for bad in [
        "[\"https://chat.example.com/app\"]",
        "[\"chat.example.com\"]",
        "[\"ftp://x\"]",
    ] {
        let error = parse(bad).unwrap_err().to_string();
        assert!(error.contains("server.cors_origins[0]"), "{bad}: {error}");
    }
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_reads_the_answer_in_a_real_browser() {
    let fake = FakeProvider::start().await;
    // The page is served from its own origin: another port on loopback.
    let page = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html("<!doctype html><title>chat</title>") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, page).await.unwrap() });
    for (allowed, origins) in [
        (true, format!("[\"{page_origin}\"]")),
        (false, "[\"https://elsewhere.example\"]".to_owned()),
    ] {
        let gw =
            Gateway::start_with_env(&with_origins(&fake, &origins), &[("ADMIN", "admin")]).await;
        let Some(browser) = crate::support::browser::Browser::start("en-US").await else {
            return;
        };
        browser.goto(&format!("{page_origin}/")).await;
        let call = format!(
            "window.result = null; fetch('{}/v1/chat/completions', {{method: 'POST', \
             headers: {{'content-type': 'application/json', 'authorization': 'Bearer none'}}, \
             body: JSON.stringify({})}}).then(r => r.json()).then(a => window.result = \
             a.choices[0].message.content).catch(e => window.result = 'refused: ' + e); return true;",
            gw.url,
            json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
        );
        browser.eval(&call).await;
        let result = browser
            .wait_for("return window.result", Duration::from_secs(10))
            .await;
        let text = result.as_str().unwrap();
        match allowed {
            true => assert_eq!(text, "Hello from the fake provider."),
            false => assert!(text.starts_with("refused"), "{text}"),
        }
        browser.quit().await;
    }
}
