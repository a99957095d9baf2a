//! The console over HTTP: sign-in with the admin key or a client key, the session
//! cookie's flags, CSRF on every change, the strict Content-Security-Policy, a
//! forged or altered cookie, a revoked key ending its session, and both languages.

use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::support::keys::{ADMIN, admin, new_key, sqlite_url};
use crate::support::{FakeProvider, Gateway, TempDir, config_over};

/// A gateway with the admin key, the fixed key `acme-key` of tenant `acme`, and a
/// key table in SQLite (refreshed every 100 ms).
async fn console_gateway(fake: &FakeProvider, dir: &TempDir) -> Gateway {
    let mut config = config_over(fake, &[("chat", &["ok"])]);
    config.push_str(
        "\n[auth]\nadmin_key_env = \"ADMIN\"\n\
         [[auth.keys]]\nid = \"acme\"\ntenant = \"acme\"\nkey_env = \"ACME\"\n\
         \n[governance]\ndatabase_env = \"DB\"\nrefresh_every = \"100ms\"\n",
    );
    let db = sqlite_url(dir);
    Gateway::start_with_env(
        &config,
        &[("ADMIN", ADMIN), ("ACME", "acme-key"), ("DB", db.as_str())],
    )
    .await
}

/// A browser's view: no redirects followed, cookies sent by hand.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `Set-Cookie` header that sets `name`, whole.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// `name=value` of a `Set-Cookie` header, as a browser sends it back.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// A form body (`application/x-www-form-urlencoded`).
fn form(fields: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    char::from(b).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The hidden `token` of the page's form.
fn form_token(page: &str) -> String {
    let at = page.find("name=\"token\" value=\"").expect("a form token") + 20;
    page[at..].split('"').next().unwrap().to_owned()
}

/// Signs in with `key`: the sign-in page's nonce cookie and token, then the form.
async fn sign_in(gw: &Gateway, key: &str) -> reqwest::Response {
    let page = browser()
        .get(format!("{}/console/sign-in", gw.url))
        .send()
        .await
        .unwrap();
    let nonce = pair(&set_cookie(page.headers(), "ragway_console_sign_in").unwrap());
    let token = form_token(&page.text().await.unwrap());
    browser()
        .post(format!("{}/console/sign-in", gw.url))
        .header("cookie", nonce)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("key", key), ("token", &token)]))
        .send()
        .await
        .unwrap()
}

/// The session cookie a successful sign-in sets, as `name=value`.
async fn session(gw: &Gateway, key: &str) -> String {
    let signed = sign_in(gw, key).await;
    assert_eq!(signed.status(), 303, "{key}");
    pair(&set_cookie(signed.headers(), "ragway_console").unwrap())
}

async fn page(gw: &Gateway, path: &str, cookie: &str) -> reqwest::Response {
    browser()
        .get(format!("{}{path}", gw.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_console_signs_in_with_a_key_and_guards_every_change() {
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_gateway(&fake, &dir).await;

    // Nobody signed in: the sign-in page, and no data.
    let first = page(&gw, "/console", "").await;
    assert_eq!(first.status(), 303);
    assert_eq!(first.headers()[LOCATION], "/console/sign-in");
    let data = page(&gw, "/console/api/overview", "").await;
    assert_eq!(data.status(), 401);
    let sign_in_page = page(&gw, "/console/sign-in", "").await;
    assert_eq!(sign_in_page.status(), 200);
    let csp = sign_in_page.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(rule), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"));
    let nonce = set_cookie(sign_in_page.headers(), "ragway_console_sign_in").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(nonce.contains(flag), "{nonce}");
    }
    assert!(!nonce.contains("Secure"), "plain HTTP: {nonce}");

    // A wrong key: the form again, no session.
    let wrong = sign_in(&gw, "sk-not-a-key").await;
    assert_eq!(wrong.status(), 401);
    assert!(set_cookie(wrong.headers(), "ragway_console").is_none());
    assert!(wrong.text().await.unwrap().contains("not valid"));
    // A forged token, or none, or no nonce cookie: 403 before the key is looked at.
    for (cookie, token) in [
        (pair(&nonce), "forged".to_owned()),
        (String::new(), "x".to_owned()),
    ] {
        let refused = browser()
            .post(format!("{}/console/sign-in", gw.url))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("key", ADMIN), ("token", &token)]))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403);
        assert!(set_cookie(refused.headers(), "ragway_console").is_none());
    }

    // The admin key: a session cookie, HttpOnly and SameSite=Strict.
    let signed = sign_in(&gw, ADMIN).await;
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()[LOCATION], "/console");
    let cookie = set_cookie(signed.headers(), "ragway_console").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains(ADMIN), "the key is never in the cookie");
    let admin_session = pair(&cookie);
    let overview = page(&gw, "/console", &admin_session).await;
    assert_eq!(overview.status(), 200);
    let html = overview.text().await.unwrap();
    assert!(html.contains("Signed in with the admin key"), "{html}");
    assert!(!html.contains("<script>"), "no inline script");
    let data: Value = page(&gw, "/console/api/overview", &admin_session)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        data["metrics"]["ragway_requests_total"].is_array(),
        "{data}"
    );
    assert!(data["time"].as_u64().unwrap() > 0);

    // An altered cookie is nobody.
    let (name, value) = admin_session.split_once('=').unwrap();
    let mut altered = value.to_owned().into_bytes();
    altered[3] = if altered[3] == b'A' { b'B' } else { b'A' };
    let altered = format!("{name}={}", String::from_utf8(altered).unwrap());
    assert_eq!(page(&gw, "/console", &altered).await.status(), 303);

    // Signing out is a change: without its token, 403 and still signed in.
    let token = form_token(&html);
    let refused = browser()
        .post(format!("{}/console/sign-out", gw.url))
        .header("cookie", &admin_session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", "forged")]))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(page(&gw, "/console", &admin_session).await.status(), 200);
    let out = browser()
        .post(format!("{}/console/sign-out", gw.url))
        .header("cookie", &admin_session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", token.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let cleared = set_cookie(out.headers(), "ragway_console").unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    // A client key sees its own tenant, and not the gateway-wide counters (they
    // name every alias and target); behind TLS the cookies are Secure.
    let acme_session = session(&gw, "acme-key").await;
    let acme = page(&gw, "/console", &acme_session).await;
    let html = acme.text().await.unwrap();
    assert!(
        html.contains("Signed in for tenant") && html.contains("acme"),
        "{html}"
    );
    assert!(!html.contains("console.js"), "{html}");
    let refused = page(&gw, "/console/api/overview", &acme_session).await;
    assert_eq!(refused.status(), 403);
    let behind_tls = browser()
        .get(format!("{}/console/sign-in", gw.url))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let nonce = set_cookie(behind_tls.headers(), "ragway_console_sign_in").unwrap();
    assert!(nonce.contains("; Secure"), "{nonce}");
}

#[tokio::test]
async fn a_revoked_key_ends_its_console_session() {
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_gateway(&fake, &dir).await;
    let key = new_key(&gw, json!({"tenant": "globex", "name": "lead"})).await;
    let cookie = session(&gw, &key).await;
    assert_eq!(page(&gw, "/console", &cookie).await.status(), 200);
    let listed: Value = admin(&gw, reqwest::Method::GET, "/admin/keys", None)
        .await
        .json()
        .await
        .unwrap();
    let id = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["tenant"] == "globex")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = admin(
        &gw,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    assert!(revoked.status().is_success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = page(&gw, "/console", &cookie).await.status();
        if status == 303 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still signed in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        page(&gw, "/console/api/overview", &cookie).await.status(),
        401
    );
}

#[tokio::test]
async fn the_console_speaks_the_browsers_language_and_remembers_a_choice() {
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_gateway(&fake, &dir).await;
    let zh = browser()
        .get(format!("{}/console/sign-in", gw.url))
        .header("accept-language", "zh-CN,zh;q=0.9")
        .send()
        .await
        .unwrap();
    let html = zh.text().await.unwrap();
    assert!(
        html.contains("lang=\"zh\"") && html.contains("登录"),
        "{html}"
    );
    let chosen = browser()
        .get(format!("{}/console/sign-in?lang=en", gw.url))
        .header("accept-language", "zh-CN")
        .send()
        .await
        .unwrap();
    let remembered = set_cookie(chosen.headers(), "ragway_console_lang").unwrap();
    assert!(
        remembered.starts_with("ragway_console_lang=en"),
        "{remembered}"
    );
    assert!(chosen.text().await.unwrap().contains("Sign in"));
    let asset = browser()
        .get(format!("{}/console/assets/console.js", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(asset.status(), 200);
    assert!(
        asset.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let missing = browser()
        .get(format!("{}/console/assets/../../etc/passwd", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// The console in headless Chromium: the sign-in form, the overview's live tiles
/// after API calls, no script error or CSP refusal in the page's log, a wrong key
/// sent back to the form, and the Chinese page; screenshots of each under the
/// tests' output directory.
#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    use crate::support::browser::Browser;
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_gateway(&fake, &dir).await;
    let Some(browser) = Browser::start("en-US").await else {
        return;
    };
    browser.goto(&format!("{}/console", gw.url)).await;
    assert!(browser.url().await.ends_with("/console/sign-in"));
    browser.screenshot("sign-in.png").await;
    browser.type_into("#key", "sk-wrong").await;
    browser.click("form button").await;
    let error = browser
        .wait_for(
            "return document.querySelector('.error')?.textContent",
            Duration::from_secs(5),
        )
        .await;
    assert!(error.as_str().unwrap().contains("not valid"), "{error}");
    // Reading the log empties it: the refused sign-in's 401 is expected there.
    let refused = browser.severe_logs().await;
    assert!(
        refused.iter().all(|line| line.contains("401")),
        "{refused:?}"
    );

    browser.type_into("#key", ADMIN).await;
    browser.click("form button").await;
    browser
        .wait_for(
            "return location.pathname === '/console'",
            Duration::from_secs(5),
        )
        .await;
    // Calls through the API, while the page polls: the tiles show them.
    let calls = async {
        for _ in 0..40 {
            let answer = gw
                .http()
                .post(format!("{}/v1/chat/completions", gw.url))
                .bearer_auth("acme-key")
                .json(&crate::support::ask("chat", "hello"))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let seen = async {
        browser
            .wait_for(
                "const v = document.querySelector('[data-metric=rps] output').textContent; \
                 return parseFloat(v) > 0 && document.querySelector('[data-metric=p50] output').textContent.endsWith('ms') ? v : null",
                Duration::from_secs(15),
            )
            .await
    };
    let ((), rps) = tokio::join!(calls, seen);
    assert!(rps.as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{rps}");
    let breakers = browser
        .eval("return document.querySelectorAll('#breakers tr').length")
        .await;
    assert_eq!(breakers, 1, "the one target's breaker");
    browser.screenshot("overview.png").await;
    let severe = browser.severe_logs().await;
    assert!(severe.is_empty(), "errors in the page: {severe:?}");

    browser.goto(&format!("{}/console?lang=zh", gw.url)).await;
    let title = browser
        .eval("return document.querySelector('h1').textContent")
        .await;
    assert!(title.as_str().unwrap().contains("总览"), "{title}");
    browser.screenshot("overview-zh.png").await;
    browser.quit().await;
}
