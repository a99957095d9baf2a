//! The console over HTTP: sign-in with the admin key or a client key, the session
//! cookie's flags, CSRF on every change, the strict Content-Security-Policy, a
//! forged or altered cookie, a revoked key ending its session, and both languages.

use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::support::keys::{ADMIN, admin, new_key, sqlite_url};
use crate::support::{FakeProvider, Gateway, TempDir, config_over};

/// A gateway with the admin key, the fixed key `acme-key` of tenant `acme`, a key
/// table in SQLite (refreshed every 100 ms), and an audit trail there too, with
/// the one target priced (1 per prompt token, 2 per answer token), so budgets are
/// spent.
async fn console_gateway(fake: &FakeProvider, dir: &TempDir) -> Gateway {
    console_gateway_over(fake, dir, "ok", "").await
}

/// The body limit of [`console_rag_gateway`]'s chats, below a document's.
const CHAT_BODY_LIMIT: usize = 16 * 1024;

/// [`console_gateway`] with the cache (in memory), retrieval (MiniLM, an
/// embedded store under `dir`) and chats of at most [`CHAT_BODY_LIMIT`] bytes, the
/// alias `chat` answering with the user's text as the provider saw it.
async fn console_rag_gateway(fake: &FakeProvider, dir: &TempDir) -> Gateway {
    let retrieval = format!(
        "\n[server]\nmax_body_bytes = {CHAT_BODY_LIMIT}\n\n[cache]\n\n[embeddings]\nmodel = \"models/all-MiniLM-L6-v2\"\n\n[retrieval]\npath = \"{}\"\n",
        dir.0.join("qdrant").display()
    );
    console_gateway_over(fake, dir, "echo", &retrieval).await
}

/// The console's gateway with the alias `chat` on the fake's `behaviour`, and the
/// config sections `extra`.
async fn console_gateway_over(
    fake: &FakeProvider,
    dir: &TempDir,
    behaviour: &str,
    extra: &str,
) -> Gateway {
    let mut config = config_over(fake, &[("chat", &[behaviour])]);
    config.push_str(extra);
    config.push_str(&format!(
        "\n[auth]\nadmin_key_env = \"ADMIN\"\n\
         [[auth.keys]]\nid = \"acme\"\ntenant = \"acme\"\nkey_env = \"ACME\"\n\
         \n[governance]\ndatabase_env = \"DB\"\nrefresh_every = \"100ms\"\n\
         \n[audit]\ndatabase_env = \"DB\"\nspool_dir = \"{}\"\nflush_every = \"20ms\"\n\
         [audit.prices]\n\"fake:{behaviour}\" = {{ input = 1e6, output = 2e6 }}\n",
        dir.0.join("spool").display()
    ));
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

/// A call to the console's JSON API with a session `cookie` and, for a change,
/// the page's CSRF `token`.
async fn api(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = browser()
        .request(method, format!("{}{path}", gw.url))
        .header("cookie", cookie);
    if let Some(token) = token {
        request = request.header("x-csrf-token", token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// `GET path` of the console's API in the session `cookie`.
async fn get(gw: &Gateway, path: &str, cookie: &str) -> reqwest::Response {
    api(gw, reqwest::Method::GET, path, cookie, None, None).await
}

/// `GET /console/api/keys` in the session `cookie`.
async fn keys_seen(gw: &Gateway, cookie: &str) -> Value {
    let seen = get(gw, "/console/api/keys", cookie).await;
    assert_eq!(seen.status(), 200);
    seen.json().await.unwrap()
}

/// Headless Chromium signed in to the console with the admin key (`None`, the
/// test skipped, where there is no browser).
async fn admin_browser(gw: &Gateway) -> Option<crate::support::browser::Browser> {
    let browser = crate::support::browser::Browser::start("en-US").await?;
    browser.goto(&format!("{}/console/sign-in", gw.url)).await;
    sign_in_with_the_admin_key(&browser).await;
    Some(browser)
}

/// Fills the sign-in form in with the admin key and waits for the overview.
async fn sign_in_with_the_admin_key(browser: &crate::support::browser::Browser) {
    browser.type_into("#key", ADMIN).await;
    browser.click("form button").await;
    browser
        .wait_for(
            "return location.pathname === '/console'",
            Duration::from_secs(5),
        )
        .await;
}

/// The CSRF token of a signed-in page (its sign-out form carries it).
async fn csrf(gw: &Gateway, cookie: &str) -> String {
    let page = page(gw, "/console/keys", cookie).await;
    assert_eq!(page.status(), 200);
    form_token(&page.text().await.unwrap())
}

async fn chat_as(gw: &Gateway, key: &str) -> reqwest::StatusCode {
    gw.http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(&crate::support::ask("chat", "hello"))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn the_console_manages_keys_for_the_admin_and_shows_a_tenant_its_own() {
    use reqwest::Method;
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_gateway(&fake, &dir).await;
    let admin_cookie = session(&gw, ADMIN).await;
    let token = csrf(&gw, &admin_cookie).await;
    let listed: Value = keys_seen(&gw, &admin_cookie).await;
    assert_eq!(listed["managed"], true);
    assert_eq!(listed["keys"], json!([]));

    // A change without the page's token (what a forged cross-site request sends)
    // is refused and makes nothing; a wrong token too.
    let body = json!({"tenant": "globex", "name": "lead", "budget": {"amount": 100000, "period": "month"}});
    for token in [None, Some("forged")] {
        let refused = api(
            &gw,
            Method::POST,
            "/console/api/keys",
            &admin_cookie,
            token,
            Some(body.clone()),
        )
        .await;
        assert_eq!(refused.status(), 403);
        assert_eq!(
            refused.json::<Value>().await.unwrap()["error"]["type"],
            "permission_error"
        );
    }
    let none: Value = admin(&gw, Method::GET, "/admin/keys", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["data"], json!([]));
    // A bad field: the admin API's own 400, naming it.
    let bad = api(
        &gw,
        Method::POST,
        "/console/api/keys",
        &admin_cookie,
        Some(&token),
        Some(json!({"tenant": ""})),
    )
    .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["param"],
        "tenant"
    );

    let created = api(
        &gw,
        Method::POST,
        "/console/api/keys",
        &admin_cookie,
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let (key, id) = (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(chat_as(&gw, &key).await, 200);
    // Its spend shows against its budget.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let spent = loop {
        let listed: Value = keys_seen(&gw, &admin_cookie).await;
        let row = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .cloned()
            .unwrap();
        assert_eq!(row["status"], "active");
        assert!(
            row.get("key").is_none(),
            "a listed key is never shown: {row}"
        );
        let budget = &row["standing"][0]["budget"];
        assert_eq!(budget["amount"], 100000.0, "{row}");
        let spent = budget["spent"].as_f64().unwrap();
        if spent > 0.0 {
            break spent;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no spend shown: {row}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(spent < 100000.0, "{spent}");

    // The team lead's session: its tenant's keys only, read-only.
    admin(
        &gw,
        Method::POST,
        "/admin/keys",
        Some(json!({"tenant": "initech"})),
    )
    .await;
    let lead = session(&gw, &key).await;
    let lead_token = csrf(&gw, &lead).await;
    let seen: Value = keys_seen(&gw, &lead).await;
    let tenants: Vec<&str> = seen["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["globex"], "{seen}");
    for (method, path) in [
        (Method::POST, "/console/api/keys".to_owned()),
        (Method::DELETE, format!("/console/api/keys/{id}")),
        (Method::POST, format!("/console/api/keys/{id}/rotate")),
        (Method::PUT, "/console/api/tenants/globex".to_owned()),
    ] {
        let refused = api(
            &gw,
            method.clone(),
            &path,
            &lead,
            Some(&lead_token),
            Some(json!({"tenant": "globex"})),
        )
        .await;
        assert_eq!(refused.status(), 403, "{method} {path}");
    }
    let keys_page = page(&gw, "/console/keys", &lead)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !keys_page.contains("id=\"new-key\""),
        "no form for a client key"
    );
    // No session: 401, whatever the token.
    assert_eq!(get(&gw, "/console/api/keys", "").await.status(), 401);

    // Revoked from the console: the API refuses the key at once.
    let revoked = api(
        &gw,
        Method::DELETE,
        &format!("/console/api/keys/{id}"),
        &admin_cookie,
        Some(&token),
        None,
    )
    .await;
    assert_eq!(revoked.status(), 200);
    assert_eq!(revoked.json::<Value>().await.unwrap()["status"], "revoked");
    assert_eq!(chat_as(&gw, &key).await, 401);
}

/// The console's audit rows for `query`, once at least `at_least` are written.
async fn audit_rows(gw: &Gateway, cookie: &str, query: &str, at_least: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found = get(gw, &format!("/console/api/audit?{query}"), cookie).await;
        assert_eq!(found.status(), 200, "{query}");
        let rows = found.json::<Value>().await.unwrap()["data"]
            .as_array()
            .unwrap()
            .clone();
        if rows.len() >= at_least {
            return rows;
        }
        assert!(std::time::Instant::now() < deadline, "{query}: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_audit_page_searches_exports_and_verifies_the_chain() {
    use reqwest::Method;
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_gateway(&fake, &dir).await;
    let key = new_key(&gw, json!({"tenant": "globex"})).await;
    for caller in ["acme-key", "acme-key", key.as_str()] {
        assert_eq!(chat_as(&gw, caller).await, 200);
    }
    assert_eq!(chat_as(&gw, "sk-wrong").await, 401);
    let admin_cookie = session(&gw, ADMIN).await;
    let token = csrf(&gw, &admin_cookie).await;
    let audit_page = page(&gw, "/console/audit", &admin_cookie).await;
    assert_eq!(audit_page.status(), 200);
    assert!(
        audit_page
            .text()
            .await
            .unwrap()
            .contains("id=\"audit-verify\"")
    );

    // Search by tenant, by key and outcome, by request id.
    let acme = audit_rows(&gw, &admin_cookie, "tenant=acme", 2).await;
    assert!(acme.iter().all(|r| r["tenant"] == "acme"), "{acme:?}");
    let chats: Vec<&Value> = acme
        .iter()
        .filter(|r| r["route"] == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 2, "{acme:?}");
    let globex = audit_rows(&gw, &admin_cookie, "tenant=globex&outcome=ok", 1).await;
    let key_id = globex[0]["client_key"].as_str().unwrap().to_owned();
    let by_key = audit_rows(&gw, &admin_cookie, &format!("key={key_id}"), 1).await;
    assert!(
        by_key.iter().all(|r| r["client_key"] == key_id.as_str()),
        "{by_key:?}"
    );
    let errors = audit_rows(&gw, &admin_cookie, "outcome=error", 1).await;
    assert!(errors.iter().all(|r| r["outcome"] == "error"), "{errors:?}");
    assert!(
        errors.iter().any(|r| r["status"] == 401),
        "the refused call: {errors:?}"
    );
    let id = chats[0]["request_id"].as_str().unwrap();
    let one = audit_rows(&gw, &admin_cookie, &format!("request_id={id}"), 1).await;
    assert_eq!(one.len(), 1);
    assert!(
        one[0]["attempts"].is_array() && one[0]["pii"].is_object(),
        "{one:?}"
    );
    // A bad time is the admin API's 400, naming it.
    let bad = get(&gw, "/console/api/audit?since=yesterday-ish", &admin_cookie).await;
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["param"],
        "since"
    );

    // The same search as CSV.
    let csv = get(&gw, "/console/api/audit.csv?tenant=acme", &admin_cookie).await;
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let csv = csv.text().await.unwrap();
    assert!(
        csv.starts_with("at,instance,seq,request_id,tenant"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), acme.len() + 1, "{csv}");

    // Verify the chains: a change needs the token; intact, then altered.
    let verify = |token: Option<String>| {
        let (gw, cookie) = (&gw, admin_cookie.clone());
        async move {
            api(
                gw,
                Method::POST,
                "/console/api/audit/verify",
                &cookie,
                token.as_deref(),
                Some(json!({})),
            )
            .await
        }
    };
    assert_eq!(verify(None).await.status(), 403);
    let intact: Value = verify(Some(token.clone())).await.json().await.unwrap();
    assert_eq!(intact["ok"], true, "{intact}");
    assert!(
        intact["chains"][0]["rows"].as_u64().unwrap() >= 4,
        "{intact}"
    );
    let pool = sqlx::SqlitePool::connect(&sqlite_url(&dir)).await.unwrap();
    sqlx::query("UPDATE audit_calls SET answer = 'nothing was said' WHERE request_id = ?")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let broken: Value = verify(Some(token)).await.json().await.unwrap();
    assert_eq!(broken["ok"], false, "{broken}");
    assert!(
        broken["chains"][0]["report"]
            .as_str()
            .unwrap()
            .contains("FAILED"),
        "{broken}"
    );

    // A client key's session: its own tenant's rows, no other, no verifying.
    let lead = session(&gw, &key).await;
    let lead_token = csrf(&gw, &lead).await;
    let own = audit_rows(&gw, &lead, "", 1).await;
    assert!(own.iter().all(|r| r["tenant"] == "globex"), "{own:?}");
    // Its attempts without the errors' text (the admin's rows keep the field).
    let attempts = |rows: &[Value]| -> Vec<Value> {
        rows.iter()
            .flat_map(|r| r["attempts"].as_array().unwrap().clone())
            .collect()
    };
    assert!(
        attempts(&own)
            .iter()
            .all(|a| a.get("error").is_none() && a.get("outcome").is_some()),
        "{own:?}"
    );
    assert!(
        attempts(&acme).iter().all(|a| a.get("error").is_some()),
        "{acme:?}"
    );
    let other = get(&gw, "/console/api/audit?tenant=acme", &lead).await;
    assert_eq!(other.status(), 403);
    let other = get(&gw, "/console/api/audit.csv?tenant=acme", &lead).await;
    assert_eq!(other.status(), 403);
    let csv = get(&gw, "/console/api/audit.csv", &lead)
        .await
        .text()
        .await
        .unwrap();
    assert!(!csv.contains(",acme,"), "{csv}");
    let refused = api(
        &gw,
        Method::POST,
        "/console/api/audit/verify",
        &lead,
        Some(&lead_token),
        Some(json!({})),
    )
    .await;
    assert_eq!(refused.status(), 403);
    let lead_page = page(&gw, "/console/audit", &lead)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !lead_page.contains("id=\"audit-verify\""),
        "no verifying for a client key"
    );
}

#[tokio::test]
async fn the_usage_page_sums_spend_by_group_for_the_admin_and_a_tenant() {
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_gateway(&fake, &dir).await;
    let key = new_key(&gw, json!({"tenant": "globex", "name": "bot"})).await;
    for caller in ["acme-key", "acme-key", key.as_str()] {
        assert_eq!(chat_as(&gw, caller).await, 200);
    }
    let admin_cookie = session(&gw, ADMIN).await;
    // The sums by tenant, once the audit rows are written.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let by_tenant = loop {
        let sums: Value = get(
            &gw,
            "/console/api/usage?group_by=tenant&since=24h",
            &admin_cookie,
        )
        .await
        .json()
        .await
        .unwrap();
        let requests: i64 = sums["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_i64().unwrap())
            .sum();
        if requests >= 3 {
            break sums;
        }
        assert!(std::time::Instant::now() < deadline, "{sums}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = |sums: &Value, group: &str| {
        sums["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == group)
            .cloned()
    };
    let acme = row(&by_tenant, "acme").expect("acme's sums");
    let globex = row(&by_tenant, "globex").expect("globex's sums");
    assert_eq!(acme["requests"], 2);
    assert_eq!(globex["requests"], 1);
    // At 1 per prompt token and 2 per answer token.
    let cost = |r: &Value| {
        r["prompt_tokens"].as_f64().unwrap() + 2.0 * r["completion_tokens"].as_f64().unwrap()
    };
    assert!(
        (acme["cost"].as_f64().unwrap() - cost(&acme)).abs() < 1e-6,
        "{acme}"
    );
    assert_eq!(acme["currency"], "CNY");
    let csv = get(
        &gw,
        "/console/api/usage.csv?group_by=tenant&since=24h",
        &admin_cookie,
    )
    .await;
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("ragway-usage.csv")
    );
    let csv = csv.text().await.unwrap();
    assert!(csv.starts_with("tenant,requests,prompt_tokens"), "{csv}");
    assert!(csv.contains("\r\nacme,2,"), "{csv}");
    // A bad grouping: the admin API's 400.
    let bad = get(&gw, "/console/api/usage?group_by=colour", &admin_cookie).await;
    assert_eq!(bad.status(), 400);

    // A client key's session: its own tenant's sums, whatever it groups by.
    let lead = session(&gw, &key).await;
    let own: Value = get(&gw, "/console/api/usage?group_by=tenant", &lead)
        .await
        .json()
        .await
        .unwrap();
    let groups: Vec<&str> = own["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["group"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["globex"], "{own}");
    let other = get(&gw, "/console/api/usage?tenant=acme", &lead).await;
    assert_eq!(other.status(), 403);
    let other = get(&gw, "/console/api/usage.csv?tenant=acme", &lead).await;
    assert_eq!(other.status(), 403);
    assert_eq!(page(&gw, "/console/usage", &lead).await.status(), 200);
}

#[tokio::test]
async fn the_providers_page_shows_breakers_and_resets_one_in_a_real_browser() {
    use reqwest::Method;
    let fake = FakeProvider::start().await;
    let mut config = crate::support::config_with(
        &fake,
        "retry.attempts = 1\nbreaker.failures = 2",
        &[("chat", &["status-503", "ok"])],
    );
    let dir = TempDir::new();
    config.push_str(&format!(
        "\n[auth]\nadmin_key_env = \"ADMIN\"\n\
         [[auth.keys]]\nid = \"acme\"\ntenant = \"acme\"\nkey_env = \"ACME\"\n\
         \n[audit]\ndatabase = \"{}\"\nspool_dir = \"{}\"\nflush_every = \"20ms\"\n",
        sqlite_url(&dir),
        dir.0.join("spool").display()
    ));
    let gw = Gateway::start_with_env(&config, &[("ADMIN", ADMIN), ("ACME", "acme-key")]).await;
    for _ in 0..2 {
        assert_eq!(chat_as(&gw, "acme-key").await, 200);
    }
    let admin_cookie = session(&gw, ADMIN).await;
    let breakers: Value = get(&gw, "/console/api/breakers", &admin_cookie)
        .await
        .json()
        .await
        .unwrap();
    let state = |breakers: &Value, target: &str| {
        breakers["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["target"] == target)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(&breakers, "fake:status-503"), "open");
    let path = "/console/api/breakers/fake:status-503/reset";
    let forged = api(&gw, Method::POST, path, &admin_cookie, None, None).await;
    assert_eq!(forged.status(), 403);
    // A client key's session: no providers, no reset.
    let lead = session(&gw, "acme-key").await;
    let lead_token = csrf(&gw, &lead).await;
    assert_eq!(get(&gw, "/console/api/breakers", &lead).await.status(), 403);
    let refused = api(&gw, Method::POST, path, &lead, Some(&lead_token), None).await;
    assert_eq!(refused.status(), 403);
    let page_text = page(&gw, "/console/providers", &lead)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !page_text.contains("providers.js"),
        "no data for a client key"
    );
    let still: Value = get(&gw, "/console/api/breakers", &admin_cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state(&still, "fake:status-503"), "open", "nothing reset it");

    let Some(browser) = admin_browser(&gw).await else {
        return;
    };
    browser.goto(&format!("{}/console/providers", gw.url)).await;
    let row = browser
        .wait_for(
            "const row = document.querySelector('#provider-table tr[data-target=\"fake:status-503\"]'); \
             return row && row.querySelector('button.reset') ? row.textContent : null",
            Duration::from_secs(5),
        )
        .await;
    assert!(row.as_str().unwrap().contains("open"), "{row}");
    assert!(
        row.as_str().unwrap().contains("http_5xx 2"),
        "attempts by outcome: {row}"
    );
    let errors = browser
        .wait_for(
            "const rows = document.querySelectorAll('#recent-errors tbody tr'); \
             return rows.length && rows[0].children.length === 5 ? rows[0].textContent : null",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        errors.as_str().unwrap().contains("fake:status-503"),
        "{errors}"
    );
    browser.screenshot("providers.png").await;
    browser
        .click("#provider-table tr[data-target=\"fake:status-503\"] button.reset")
        .await;
    browser
        .wait_for(
            "const row = document.querySelector('#provider-table tr[data-target=\"fake:status-503\"]'); \
             return row && !row.querySelector('button.reset') && row.children[1].textContent === 'closed'",
            Duration::from_secs(5),
        )
        .await;
    let severe = browser.severe_logs().await;
    assert!(severe.is_empty(), "errors in the page: {severe:?}");
    browser.quit().await;
    let after: Value = get(&gw, "/console/api/breakers", &admin_cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state(&after, "fake:status-503"), "closed");
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

    sign_in_with_the_admin_key(&browser).await;
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

#[tokio::test]
async fn keys_usage_and_audit_work_in_a_real_browser() {
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_gateway(&fake, &dir).await;
    let Some(browser) = admin_browser(&gw).await else {
        return;
    };
    browser.goto(&format!("{}/console/keys", gw.url)).await;
    assert_eq!(
        browser
            .eval("return document.querySelector('h1').textContent")
            .await,
        "Keys and tenants"
    );

    // Create a key with a budget: it is shown once, with a copy button.
    browser.type_into("#new-key [name=tenant]", "globex").await;
    browser
        .type_into("#new-key [name=name]", "support bot")
        .await;
    browser.type_into("#new-key [name=budget]", "100000").await;
    browser.click("#new-key button").await;
    let key = browser
        .wait_for(
            "return document.getElementById('new-key-value').textContent",
            Duration::from_secs(5),
        )
        .await;
    let key = key.as_str().unwrap().to_owned();
    assert!(
        browser
            .eval("return !document.getElementById('shown-key').hidden")
            .await
            == true,
        "the key is shown"
    );
    browser.click("#copy-key").await;
    browser.screenshot("keys-created.png").await;

    // Calls with it: its spend appears against its budget after a reload.
    for _ in 0..3 {
        assert_eq!(chat_as(&gw, &key).await, 200);
    }
    let spent = async {
        loop {
            browser.goto(&format!("{}/console/keys", gw.url)).await;
            let spent = browser
                .wait_for(
                    "const cell = document.querySelector('#key-table tbody tr td:nth-child(4)'); \
                     return cell && cell.querySelector('meter') ? Number(cell.dataset.spent) + 1 : null",
                    Duration::from_secs(5),
                )
                .await;
            if spent.as_f64().unwrap() > 1.0 {
                return spent.as_f64().unwrap() - 1.0;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let spent = tokio::time::timeout(Duration::from_secs(10), spent)
        .await
        .expect("the spend appears");
    assert!(spent > 0.0);
    let row = browser
        .eval("return document.querySelector('#key-table tbody tr').textContent")
        .await;
    assert!(row.as_str().unwrap().contains("support bot"), "{row}");
    assert!(
        row.as_str().unwrap().contains("100000 CNY per month"),
        "{row}"
    );
    browser.screenshot("keys-spend.png").await;

    // The tenant's own budget, which the key shares: set on the page, shown for it.
    browser
        .type_into("#tenant-settings [name=tenant]", "globex")
        .await;
    browser
        .type_into("#tenant-settings [name=rpm]", "600")
        .await;
    browser
        .type_into("#tenant-settings [name=budget]", "500000")
        .await;
    browser.click("#tenant-settings button").await;
    let tenant_row = browser
        .wait_for(
            "return document.querySelector('#tenant-table tbody tr')?.textContent",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        tenant_row.as_str().unwrap().contains("rpm 600"),
        "{tenant_row}"
    );
    assert!(
        tenant_row.as_str().unwrap().contains("500000"),
        "{tenant_row}"
    );
    let tenant_budget = browser
        .wait_for(
            "return document.querySelector('#key-table tbody tr td:nth-child(5) meter') ? \
             document.querySelector('#key-table tbody tr td:nth-child(5)').textContent : null",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        tenant_budget
            .as_str()
            .unwrap()
            .contains("of 500000 CNY per month"),
        "{tenant_budget}"
    );
    browser.screenshot("keys-tenant.png").await;

    // The key's spend on the usage page, by key.
    browser.goto(&format!("{}/console/usage", gw.url)).await;
    browser.eval("const s = document.querySelector('#usage-search [name=group_by]'); s.value = 'key'; s.dispatchEvent(new Event('change', {bubbles: true})); return true").await;
    let usage = browser
        .wait_for(
            "const rows = [...document.querySelectorAll('#usage-table tbody tr')].filter((r) => r.children.length === 8); \
             return rows.length === 1 && rows[0].children[1].textContent === '3' ? rows[0].textContent : null",
            Duration::from_secs(5),
        )
        .await;
    assert!(usage.as_str().unwrap().contains("CNY"), "{usage}");
    browser.screenshot("usage.png").await;
    // Over time: the same spend under today's date.
    browser.eval("const s = document.querySelector('#usage-search [name=group_by]'); s.value = 'day'; s.dispatchEvent(new Event('change', {bubbles: true})); return true").await;
    let today = browser
        .wait_for(
            "const rows = [...document.querySelectorAll('#usage-table tbody tr')].filter((r) => r.children.length === 8); \
             return rows.length === 1 && /^\\d{4}-\\d{2}-\\d{2}$/.test(rows[0].children[0].textContent) ? rows[0].children[0].textContent : null",
            Duration::from_secs(5),
        )
        .await;
    let utc_today = time::OffsetDateTime::now_utc().date().to_string();
    assert_eq!(today, utc_today.as_str());

    // The key's calls in the audit trail: searched, one opened, the chain verified.
    browser.goto(&format!("{}/console/audit", gw.url)).await;
    browser
        .type_into("#audit-search [name=tenant]", "globex")
        .await;
    browser.click("#audit-search button").await;
    let rows = browser
        .wait_for(
            "const rows = [...document.querySelectorAll('#audit-table tbody tr.clickable')]; \
             return rows.length >= 3 && rows.every((r) => r.children[2].textContent === 'globex') ? rows.length : null",
            Duration::from_secs(5),
        )
        .await;
    assert!(rows.as_u64().unwrap() >= 3, "{rows}");
    browser.click("#audit-table tbody tr.clickable").await;
    let shown = browser
        .wait_for(
            "return document.getElementById('audit-row').hidden ? null : document.getElementById('audit-row-body').textContent",
            Duration::from_secs(5),
        )
        .await;
    let shown: Value = serde_json::from_str(shown.as_str().unwrap()).unwrap();
    assert_eq!(shown["tenant"], "globex");
    assert!(shown["attempts"].is_array(), "{shown}");
    let csv = browser
        .eval("return document.getElementById('audit-csv').getAttribute('href')")
        .await;
    assert_eq!(csv, "/console/api/audit.csv?tenant=globex&limit=100");
    browser.click("#audit-verify button").await;
    let verified = browser
        .wait_for(
            "const v = document.getElementById('verify-result').textContent; return v.length > 1 ? v : null",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        verified.as_str().unwrap().starts_with("Intact:"),
        "{verified}"
    );
    browser.screenshot("audit.png").await;
    browser.goto(&format!("{}/console/keys", gw.url)).await;
    browser
        .wait_for(
            "return document.querySelector('#key-table button.revoke')",
            Duration::from_secs(5),
        )
        .await;

    // Revoked (after the page's confirmation): the row says so, the API refuses it.
    browser.click("#key-table button.revoke").await;
    browser.accept_dialog().await;
    browser
        .wait_for(
            "return document.querySelector('#key-table tbody tr td:nth-child(3)').textContent === 'revoked'",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(chat_as(&gw, &key).await, 401);
    browser.screenshot("keys-revoked.png").await;
    let severe = browser.severe_logs().await;
    assert!(severe.is_empty(), "errors in the page: {severe:?}");

    browser
        .goto(&format!("{}/console/keys?lang=zh", gw.url))
        .await;
    let title = browser
        .eval("return document.querySelector('h1').textContent")
        .await;
    assert_eq!(title, "密钥与租户");
    browser.quit().await;
}

/// The document the documents and playground tests upload.
const RETURNS: &str = "# Lumio returns\n\n## Refunds\n\nRefunds for the Lumio desk lamp are paid \
within 14 business days, to the card that paid.\n\n## Shipping\n\nOrders above 300 yuan ship free \
with SF Express; smaller orders pay 12 yuan.\n";

/// The question that finds [`RETURNS`], with a mobile number in it.
const REFUND_QUESTION: &str = "How many days does a Lumio refund take? Call me on 13912345678.";

/// `returns.md` uploaded through the console as a browser's script sends it:
/// multipart, with the page's token when `token` is given.
async fn upload_returns(
    gw: &Gateway,
    cookie: &str,
    token: Option<&str>,
    tenant: Option<&str>,
) -> reqwest::Response {
    let file = reqwest::multipart::Part::bytes(RETURNS.as_bytes().to_vec())
        .file_name("returns.md")
        .mime_str("text/markdown")
        .unwrap();
    let mut form = reqwest::multipart::Form::new().part("file", file);
    if let Some(tenant) = tenant {
        form = form.text("tenant", tenant.to_owned());
    }
    let mut request = browser()
        .post(format!("{}/console/api/documents", gw.url))
        .header("cookie", cookie)
        .multipart(form);
    if let Some(token) = token {
        request = request.header("x-csrf-token", token);
    }
    request.send().await.unwrap()
}

/// The ids of the documents a console session lists (`query`: `?tenant=…`).
async fn documents_listed(gw: &Gateway, cookie: &str, query: &str) -> Vec<String> {
    let listed = get(gw, &format!("/console/api/documents{query}"), cookie).await;
    assert_eq!(listed.status(), 200);
    let listed: Value = listed.json().await.unwrap();
    listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_console_manages_documents_and_asks_them() {
    use reqwest::Method;
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_rag_gateway(&fake, &dir).await;
    let acme = session(&gw, "acme-key").await;
    let token = csrf(&gw, &acme).await;

    let forged = upload_returns(&gw, &acme, Some("forged"), None).await;
    assert_eq!(forged.status(), 403);
    assert_eq!(upload_returns(&gw, &acme, None, None).await.status(), 403);
    assert!(documents_listed(&gw, &acme, "").await.is_empty());
    let stored = upload_returns(&gw, &acme, Some(&token), None).await;
    assert_eq!(stored.status(), 201);
    let stored: Value = stored.json().await.unwrap();
    assert!(stored["chunks"].as_u64().unwrap() >= 2, "{stored}");
    assert_eq!(documents_listed(&gw, &acme, "").await, ["returns.md"]);
    let again = upload_returns(&gw, &acme, Some(&token), None).await;
    assert_eq!(again.status(), 200, "the same document again is unchanged");
    // A client key's session manages its own tenant's documents only.
    let other = upload_returns(&gw, &acme, Some(&token), Some("globex")).await;
    assert_eq!(other.status(), 403);
    let other = get(&gw, "/console/api/documents?tenant=globex", &acme).await;
    assert_eq!(other.status(), 403);

    let ask = |cookie: String, token: Option<String>, body: Value| {
        let gw = &gw;
        async move {
            api(
                gw,
                Method::POST,
                "/console/api/search",
                &cookie,
                token.as_deref(),
                Some(body),
            )
            .await
        }
    };
    let question = json!({"question": "How many days does a Lumio refund take?"});
    let found = ask(acme.clone(), Some(token.clone()), question.clone()).await;
    assert_eq!(found.status(), 200);
    let found: Value = found.json().await.unwrap();
    let first = &found["data"][0];
    assert_eq!(first["doc_id"], "returns.md", "{found}");
    assert_eq!(first["relevant"], true);
    assert!(
        first["text"].as_str().unwrap().contains("14 business days"),
        "{first}"
    );
    assert!(found["data"].as_array().unwrap().len() <= 5);
    let unguarded = ask(acme.clone(), None, question.clone()).await;
    assert_eq!(unguarded.status(), 403);
    for (bad, param) in [
        (json!({"question": " "}), "question"),
        (json!({"question": "x".repeat(2_001)}), "question"),
        (json!({"question": "refund", "limit": 50}), "limit"),
        (json!({"question": "refund", "limit": 0}), "limit"),
    ] {
        let refused = ask(acme.clone(), Some(token.clone()), bad).await;
        let error = crate::support::expect_error(refused, 400).await;
        assert_eq!(error["param"], param, "{error}");
    }
    let unknown = ask(
        acme.clone(),
        Some(token.clone()),
        json!({"question": "refund", "model": "x"}),
    )
    .await;
    crate::support::expect_error(unknown, 400).await;
    let elsewhere = ask(
        acme.clone(),
        Some(token.clone()),
        json!({"question": "refund", "tenant": "globex"}),
    )
    .await;
    assert_eq!(elsewhere.status(), 403);

    // The admin names the tenant.
    let admin_cookie = session(&gw, ADMIN).await;
    let admin_token = csrf(&gw, &admin_cookie).await;
    let unnamed = get(&gw, "/console/api/documents", &admin_cookie).await;
    let error = crate::support::expect_error(unnamed, 400).await;
    assert_eq!(error["param"], "tenant");
    assert_eq!(
        documents_listed(&gw, &admin_cookie, "?tenant=acme").await,
        ["returns.md"]
    );
    assert!(
        documents_listed(&gw, &admin_cookie, "?tenant=globex")
            .await
            .is_empty()
    );
    let mut for_acme = question.clone();
    for_acme["tenant"] = json!("acme");
    let found = ask(admin_cookie.clone(), Some(admin_token.clone()), for_acme).await;
    let found: Value = found.json().await.unwrap();
    assert_eq!(found["data"][0]["doc_id"], "returns.md", "{found}");

    // A larger body than a chat's is taken as a document: the document limit holds.
    let long: String = RETURNS.repeat(CHAT_BODY_LIMIT / RETURNS.len() + 1);
    let stored = api(
        &gw,
        Method::POST,
        "/console/api/documents",
        &acme,
        Some(&token),
        Some(json!({"id": "../kb/long.md", "text": long})),
    )
    .await;
    assert_eq!(stored.status(), 201);
    // An id with `..` in it is deleted by its name in the query.
    let path = "/console/api/documents?id=..%2Fkb%2Flong.md";
    let deleted = api(&gw, Method::DELETE, path, &acme, Some(&token), None).await;
    assert_eq!(deleted.status(), 200);
    let unsigned = api(&gw, Method::GET, "/console/api/documents", "", None, None).await;
    crate::support::expect_error(unsigned, 401).await;

    let path = "/console/api/documents?id=returns.md";
    let unguarded = api(&gw, Method::DELETE, path, &acme, None, None).await;
    assert_eq!(unguarded.status(), 403);
    assert_eq!(documents_listed(&gw, &acme, "").await, ["returns.md"]);
    let deleted = api(&gw, Method::DELETE, path, &acme, Some(&token), None).await;
    assert_eq!(deleted.status(), 200);
    assert!(documents_listed(&gw, &acme, "").await.is_empty());
    let found = ask(acme.clone(), Some(token.clone()), question).await;
    let found: Value = found.json().await.unwrap();
    assert_eq!(found["data"], json!([]), "{found}");
    let gone = api(&gw, Method::DELETE, path, &acme, Some(&token), None).await;
    assert_eq!(gone.status(), 404);
}

/// The final chunk's citations and the text of a streamed answer.
fn streamed(body: &str) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut citations = Vec::new();
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(delta);
        }
        if let Some(cited) = chunk["ragway"]["citations"].as_array() {
            citations.extend(cited.iter().cloned());
        }
    }
    (text, citations)
}

#[tokio::test]
async fn the_playground_chats_through_the_whole_pipeline_as_the_signed_in_key() {
    use reqwest::Method;
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_rag_gateway(&fake, &dir).await;
    let acme = session(&gw, "acme-key").await;
    let token = csrf(&gw, &acme).await;
    assert_eq!(
        upload_returns(&gw, &acme, Some(&token), None)
            .await
            .status(),
        201
    );
    // At temperature 0, which the cache keeps by default.
    let chat = json!({
        "model": "chat",
        "stream": true,
        "temperature": 0,
        "messages": [{"role": "user", "content": REFUND_QUESTION}],
    });

    let unguarded = api(
        &gw,
        Method::POST,
        "/console/api/chat",
        &acme,
        None,
        Some(chat.clone()),
    )
    .await;
    assert_eq!(unguarded.status(), 403);
    assert_eq!(fake.total_attempts(), 0, "nothing reached the provider");

    let answered = api(
        &gw,
        Method::POST,
        "/console/api/chat",
        &acme,
        Some(&token),
        Some(chat.clone()),
    )
    .await;
    assert_eq!(answered.status(), 200);
    let header = |name: &str| {
        answered
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(header("x-ragway-target").as_deref(), Some("fake:echo"));
    assert_eq!(header("x-ragway-cache").as_deref(), Some("miss"));
    let request_id = header("x-request-id").unwrap();
    let (text, citations) = streamed(&answered.text().await.unwrap());
    // The provider saw a placeholder; the user gets the number back.
    assert_eq!(text, REFUND_QUESTION);
    let seen = fake.last_request().body.to_string();
    assert!(
        !seen.contains("13912345678") && seen.contains("14 business days"),
        "{seen}"
    );
    assert_eq!(citations[0]["doc_id"], "returns.md", "{citations:?}");
    let again = api(
        &gw,
        Method::POST,
        "/console/api/chat",
        &acme,
        Some(&token),
        Some(chat.clone()),
    )
    .await;
    assert_eq!(again.headers()["x-ragway-cache"], "hit-l1");
    let (text, citations) = streamed(&again.text().await.unwrap());
    assert_eq!(text, REFUND_QUESTION);
    assert_eq!(citations[0]["doc_id"], "returns.md", "{citations:?}");
    assert_eq!(fake.total_attempts(), 1, "the repeat came from the cache");

    // The call is the acme key's, audited with what was replaced.
    let rows = audit_rows(&gw, &acme, &format!("request_id={request_id}"), 1).await;
    assert_eq!(rows[0]["route"], "/console/api/chat");
    assert_eq!(rows[0]["tenant"], "acme");
    assert_eq!(rows[0]["client_key"], "acme");
    assert_eq!(rows[0]["pii"], json!({"mobile": 1}));
    let prompt = rows[0]["prompt"].as_str().unwrap();
    assert!(!prompt.contains("13912345678"), "{prompt}");
    assert_eq!(
        rows[0]["passages"][0]["doc_id"], "returns.md",
        "{}",
        rows[0]
    );

    // The admin chats as a tenant it names, under the key id `admin`.
    let admin_cookie = session(&gw, ADMIN).await;
    let admin_token = csrf(&gw, &admin_cookie).await;
    let unnamed = api(
        &gw,
        Method::POST,
        "/console/api/chat",
        &admin_cookie,
        Some(&admin_token),
        Some(chat.clone()),
    )
    .await;
    let error = crate::support::expect_error(unnamed, 400).await;
    assert_eq!(error["param"], "tenant");
    let mut whole = chat.clone();
    whole["stream"] = json!(false);
    let answered = api(
        &gw,
        Method::POST,
        "/console/api/chat?tenant=acme",
        &admin_cookie,
        Some(&admin_token),
        Some(whole),
    )
    .await;
    assert_eq!(answered.status(), 200);
    let request_id = answered.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let answer: Value = answered.json().await.unwrap();
    assert_eq!(answer["ragway"]["citations"][0]["doc_id"], "returns.md");
    let rows = audit_rows(&gw, &admin_cookie, &format!("request_id={request_id}"), 1).await;
    assert_eq!(
        (&rows[0]["tenant"], &rows[0]["client_key"]),
        (&json!("acme"), &json!("admin"))
    );

    // Playground calls spend like any call: the usage page sums them.
    let usage = get(&gw, "/console/api/usage?group_by=key", &admin_cookie).await;
    let usage: Value = usage.json().await.unwrap();
    let requests = |key: &str| {
        usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["group"] == key)
            .map(|row| row["requests"].clone())
    };
    assert_eq!(requests("acme"), Some(json!(2)), "{usage}");
    assert_eq!(requests("admin"), Some(json!(1)), "{usage}");
    // A model the key may not use does not exist for it.
    let unknown = api(
        &gw,
        Method::POST,
        "/console/api/chat",
        &acme,
        Some(&token),
        Some(json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    crate::support::expect_error(unknown, 404).await;
    // A client key's session chats as its own tenant, whatever it names.
    let elsewhere = api(
        &gw,
        Method::POST,
        "/console/api/chat?tenant=globex",
        &acme,
        Some(&token),
        Some(json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(elsewhere.status(), 200);
    let request_id = elsewhere.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let rows = audit_rows(&gw, &admin_cookie, &format!("request_id={request_id}"), 1).await;
    assert_eq!(rows[0]["tenant"], "acme", "{}", rows[0]);
}

#[tokio::test]
async fn documents_and_the_playground_work_in_a_real_browser() {
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_rag_gateway(&fake, &dir).await;
    let Some(browser) = admin_browser(&gw).await else {
        return;
    };
    browser.goto(&format!("{}/console/documents", gw.url)).await;
    browser
        .type_into("#documents-scope input[name=tenant]", "acme")
        .await;
    browser.click("#documents-scope button").await;
    browser
        .wait_for(
            "return document.querySelector('#documents-table tbody').textContent.includes('No documents')",
            Duration::from_secs(5),
        )
        .await;
    // A file dropped on the page, as a drag from the desktop delivers it.
    let drop = format!(
        "const data = new DataTransfer(); \
         data.items.add(new File([{}], 'returns.md', {{type: 'text/markdown'}})); \
         document.getElementById('drop').dispatchEvent(new DragEvent('drop', \
           {{dataTransfer: data, bubbles: true, cancelable: true}})); \
         return true;",
        serde_json::to_string(RETURNS).unwrap()
    );
    browser.eval(&drop).await;
    let status = browser
        .wait_for(
            "return document.querySelector('#uploads li.done .status')?.textContent",
            Duration::from_secs(30),
        )
        .await;
    assert!(status.as_str().unwrap().starts_with("stored"), "{status}");
    browser
        .wait_for(
            "return document.querySelector('#documents-table tr[data-id=\"returns.md\"]') !== null",
            Duration::from_secs(5),
        )
        .await;
    browser
        .type_into(
            "#ask input[name=question]",
            "How many days does a Lumio refund take?",
        )
        .await;
    browser.click("#ask button").await;
    let passage = browser
        .wait_for(
            "return document.querySelector('#passages li.relevant')?.textContent",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        passage.as_str().unwrap().contains("14 business days"),
        "{passage}"
    );
    browser
        .eval("document.getElementById('passages').scrollIntoView(); return true")
        .await;
    browser.screenshot("documents.png").await;

    browser
        .goto(&format!("{}/console/playground", gw.url))
        .await;
    browser
        .type_into("#chat-settings input[name=tenant]", "acme")
        .await;
    browser
        .type_into("#chat-settings input[name=temperature]", "0")
        .await;
    browser
        .type_into("#chat-input textarea", REFUND_QUESTION)
        .await;
    browser.click("#send").await;
    let answered = browser
        .wait_for(
            "const a = document.querySelector('.turn.assistant.done'); \
             const pii = a?.querySelector('.pii')?.textContent || ''; \
             return a && pii.includes('mobile') ? { \
               text: a.querySelector('.content').textContent, \
               target: a.querySelector('.served-by')?.textContent, \
               cache: a.querySelector('.cache-result')?.textContent, \
               citations: a.querySelector('.citations')?.textContent, \
               sent: a.querySelector('.sent-as code')?.textContent } : null",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(answered["text"], REFUND_QUESTION, "{answered}");
    assert_eq!(answered["target"], "fake:echo");
    assert_eq!(answered["cache"], "miss");
    assert!(
        answered["citations"]
            .as_str()
            .unwrap()
            .contains("returns.md"),
        "{answered}"
    );
    let sent = answered["sent"].as_str().unwrap();
    assert!(
        sent.starts_with("How many days") && !sent.contains("13912345678"),
        "{sent}"
    );
    browser.screenshot("playground.png").await;
    let severe = browser.severe_logs().await;
    assert!(severe.is_empty(), "errors in the page: {severe:?}");
    browser.quit().await;
}

#[tokio::test]
async fn a_search_is_admitted_against_the_keys_limits() {
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let gw = console_rag_gateway(&fake, &dir).await;
    let key = new_key(&gw, json!({"tenant": "acme", "limits": {"rpm": 1}})).await;
    let search = || {
        gw.http()
            .post(format!("{}/v1/search", gw.url))
            .bearer_auth(&key)
            .json(&json!({"question": "How long do refunds take?"}))
            .send()
    };
    assert_eq!(search().await.unwrap().status(), 200);
    let refused = search().await.unwrap();
    assert_eq!(
        refused.status(),
        429,
        "a search embeds its question: it counts"
    );
    assert!(refused.headers().contains_key("retry-after"));
}
