//! Keys as data (`[governance]`): made, changed, rotated and revoked at run time,
//! through the admin API and `ragway keys`, on a SQLite file and on Postgres; a
//! revocation seen by every gateway on the table within a second.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::postgres::fresh_database;
use crate::support::{FakeProvider, Gateway, TempDir, ask, config_over, expect_error};

const ADMIN: &str = "admin-secret";

/// A gateway over `fake` (aliases `chat-a`, `chat-b`, `other`) with its key table
/// at the database `DB` names, and the fixed key `fixed-key` of tenant `fixed`.
async fn governed(fake: &FakeProvider, db: &str) -> Gateway {
    let mut config = config_over(
        fake,
        &[("chat-a", &["ok"]), ("chat-b", &["ok"]), ("other", &["ok"])],
    );
    config.push_str(
        "\n[auth]\nadmin_key_env = \"ADMIN\"\n\
         [[auth.keys]]\nid = \"fixed\"\ntenant = \"fixed\"\nkey_env = \"FIXED\"\n\
         \n[governance]\ndatabase_env = \"DB\"\nrefresh_every = \"100ms\"\n",
    );
    Gateway::start_with_env(
        &config,
        &[("ADMIN", ADMIN), ("FIXED", "fixed-key"), ("DB", db)],
    )
    .await
}

fn sqlite_url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.0.join("keys.db").display())
}

async fn admin(
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

async fn chat_as(gw: &Gateway, key: &str, model: &str) -> reqwest::Response {
    gw.http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(&ask(model, "hello"))
        .send()
        .await
        .unwrap()
}

async fn models_of(gw: &Gateway, key: &str) -> Vec<String> {
    let list: Value = gw
        .http()
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The whole life of a key through the API: every step checked by using the key.
async fn lifecycle(db: &str) {
    let fake = FakeProvider::start().await;
    let gw = governed(&fake, db).await;
    // Without any key, nothing is served (the key table makes authentication on).
    expect_error(gw.chat(ask("chat-a", "hi")).await, 401).await;

    let created = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({
            "name": "ci bot", "tenant": "acme", "models": ["chat-*"],
            "limits": {"rpm": 600, "concurrency": 4},
            "budget": {"amount": 100.0, "period": "month"},
            "metadata": {"team": "search"}
        })),
    )
    .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["tenant"], "acme");
    assert_eq!(created["limits"], json!({"rpm": 600, "concurrency": 4}));
    assert_eq!(created["status"], "active");

    // Shown once: never again, by any read.
    let shown = admin(
        &gw,
        reqwest::Method::GET,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    let shown_text = shown.text().await.unwrap();
    assert!(!shown_text.contains(&key), "{shown_text}");
    let listed: Value = admin(&gw, reqwest::Method::GET, "/admin/keys?tenant=acme", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&key));
    let none: Value = admin(&gw, reqwest::Method::GET, "/admin/keys?tenant=nobody", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["data"], json!([]));

    // Its models, and no other.
    assert_eq!(chat_as(&gw, &key, "chat-a").await.status(), 200);
    let refused = expect_error(chat_as(&gw, &key, "other").await, 404).await;
    assert_eq!(refused["code"], "model_not_found");
    assert_eq!(models_of(&gw, &key).await, ["chat-a", "chat-b"]);
    assert_eq!(
        models_of(&gw, "fixed-key").await,
        ["chat-a", "chat-b", "other"]
    );
    // The fixed key of the config still works beside it.
    assert_eq!(chat_as(&gw, "fixed-key", "other").await.status(), 200);

    // A change takes effect at once on the gateway that made it.
    let patched = admin(
        &gw,
        reqwest::Method::PATCH,
        &format!("/admin/keys/{id}"),
        Some(json!({"models": ["other"], "budget": null, "name": "renamed"})),
    )
    .await;
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(
        (patched["name"].as_str(), &patched["budget"]),
        (Some("renamed"), &Value::Null)
    );
    assert_eq!(patched["limits"]["rpm"], 600, "fields not named are kept");
    assert_eq!(chat_as(&gw, &key, "other").await.status(), 200);
    expect_error(chat_as(&gw, &key, "chat-a").await, 404).await;

    // Rotation: the old key stops, the new one works, the id stays.
    let rotated: Value = admin(
        &gw,
        reqwest::Method::POST,
        &format!("/admin/keys/{id}/rotate"),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    assert_eq!(rotated["id"], id.as_str());
    let old = expect_error(chat_as(&gw, &key, "other").await, 401).await;
    assert_eq!(old["code"], "invalid_api_key");
    assert_eq!(chat_as(&gw, &new_key, "other").await.status(), 200);

    // Revoked: refused, kept on the table, and beyond change.
    let revoked: Value = admin(
        &gw,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(revoked["status"], "revoked");
    expect_error(chat_as(&gw, &new_key, "other").await, 401).await;
    let again: Value = admin(
        &gw,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        again["revoked_at"], revoked["revoked_at"],
        "revoking twice changes nothing"
    );
    expect_error(
        admin(
            &gw,
            reqwest::Method::POST,
            &format!("/admin/keys/{id}/rotate"),
            None,
        )
        .await,
        400,
    )
    .await;
    expect_error(
        admin(&gw, reqwest::Method::GET, "/admin/keys/key_missing", None).await,
        404,
    )
    .await;

    // Tenants: settings of their own, replaced whole.
    let put = admin(
        &gw,
        reqwest::Method::PUT,
        "/admin/tenants/acme",
        Some(json!({"limits": {"tpm": 10000}, "budget": {"amount": 500, "period": "week"}})),
    )
    .await;
    assert_eq!(put.status(), 200);
    let tenant: Value = admin(&gw, reqwest::Method::GET, "/admin/tenants/acme", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tenant["limits"], json!({"tpm": 10000}));
    assert_eq!(tenant["budget"], json!({"amount": 500.0, "period": "week"}));
    let tenants: Value = admin(&gw, reqwest::Method::GET, "/admin/tenants", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tenants["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_lives_and_ends_through_the_api_on_sqlite() {
    let dir = TempDir::new();
    lifecycle(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn a_key_lives_and_ends_through_the_api_on_postgres() {
    lifecycle(&fresh_database().await).await;
}

/// Polls `ok` every 10 ms; how long it took to hold (panics after 5 s).
async fn time_until(mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if ok().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s");
}

#[tokio::test]
async fn a_revocation_reaches_every_gateway_on_the_table_within_a_second() {
    let db = fresh_database().await;
    let fake = FakeProvider::start().await;
    let mut config = config_over(&fake, &[("chat", &["ok"])]);
    // The default refresh (500 ms), as a deployment runs it.
    config.push_str("\n[auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase_env = \"DB\"\n");
    let env = [("ADMIN", ADMIN), ("DB", db.as_str())];
    let (one, two) = (
        Gateway::start_with_env(&config, &env).await,
        Gateway::start_with_env(&config, &env).await,
    );
    let created: Value = admin(
        &one,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"tenant": "t"})),
    )
    .await
    .json()
    .await
    .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let seen = time_until(async || chat_as(&two, &key, "chat").await.status() == 200).await;
    assert!(
        seen < Duration::from_secs(1),
        "a new key reached the other gateway after {seen:?}"
    );

    let revoked = admin(
        &one,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(revoked.status(), 200);
    let refused = time_until(async || chat_as(&two, &key, "chat").await.status() == 401).await;
    assert!(
        refused < Duration::from_secs(1),
        "the revocation took {refused:?}"
    );
    // And it stays refused on both.
    expect_error(chat_as(&one, &key, "chat").await, 401).await;
    expect_error(chat_as(&two, &key, "chat").await, 401).await;
}

#[tokio::test]
async fn an_expired_key_is_refused_and_says_so() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let gw = governed(&fake, &sqlite_url(&dir)).await;
    let expires = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created: Value = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"tenant": "t", "expires_at": expires})),
    )
    .await
    .json()
    .await
    .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(chat_as(&gw, &key, "chat-a").await.status(), 200);
    time_until(async || chat_as(&gw, &key, "chat-a").await.status() == 401).await;
    let error = expect_error(chat_as(&gw, &key, "chat-a").await, 401).await;
    assert!(
        error["message"].as_str().unwrap().contains("expired"),
        "{error}"
    );
    let shown: Value = admin(
        &gw,
        reqwest::Method::GET,
        &format!("/admin/keys/{}", created["id"].as_str().unwrap()),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(shown["status"], "expired");
}

#[tokio::test]
async fn malformed_admin_requests_are_refused_and_change_nothing() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let gw = governed(&fake, &sqlite_url(&dir)).await;
    let created: Value = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"tenant": "t", "name": "kept", "limits": {"rpm": 5}})),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let before = admin(&gw, reqwest::Method::GET, "/admin/keys", None)
        .await
        .text()
        .await
        .unwrap();

    let bad_creates = [
        (json!({}), "tenant"),
        (json!({"tenant": "t", "limits": {"rpm": 0}}), "limits.rpm"),
        (json!({"tenant": "t", "limits": {"rpm": -3}}), "limits.rpm"),
        (json!({"tenant": "t", "limits": {"rps": 3}}), "limits"),
        (json!({"tenant": "t", "budget": {"amount": 5}}), "budget"),
        (
            json!({"tenant": "t", "budget": {"amount": -5, "period": "day"}}),
            "budget.amount",
        ),
        (
            json!({"tenant": "t", "expires_at": "next week"}),
            "expires_at",
        ),
        (json!({"tenant": "t", "models": "chat-*"}), "models"),
        (json!({"tenant": "", "name": "x"}), "tenant"),
        (json!({"tenant": "t", "key": "sk-chosen"}), "key"),
    ];
    for (body, field) in bad_creates {
        let error = expect_error(
            admin(
                &gw,
                reqwest::Method::POST,
                "/admin/keys",
                Some(body.clone()),
            )
            .await,
            400,
        )
        .await;
        let said = error.to_string();
        assert!(said.contains(field), "{body} → {said}");
    }
    let not_json = gw
        .http()
        .post(format!("{}/admin/keys", gw.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{tenant")
        .send()
        .await
        .unwrap();
    expect_error(not_json, 400).await;
    for body in [
        json!({"limits": {"tpm": 0}}),
        json!({"tenant": "other"}),
        json!({"expires_at": "2001-01-01T00:00:00Z"}),
    ] {
        expect_error(
            admin(
                &gw,
                reqwest::Method::PATCH,
                &format!("/admin/keys/{id}"),
                Some(body),
            )
            .await,
            400,
        )
        .await;
    }
    expect_error(
        admin(
            &gw,
            reqwest::Method::PUT,
            "/admin/tenants/t",
            Some(json!({"limits": {"concurrency": 0}})),
        )
        .await,
        400,
    )
    .await;
    // A client key is not an admin key.
    let client = gw
        .http()
        .get(format!("{}/admin/keys", gw.url))
        .bearer_auth("fixed-key")
        .send()
        .await
        .unwrap();
    expect_error(client, 401).await;

    let after = admin(&gw, reqwest::Method::GET, "/admin/keys", None)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(before, after, "a refused request changed the table");
    let tenants: Value = admin(&gw, reqwest::Method::GET, "/admin/tenants", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tenants["data"], json!([]));
}

#[tokio::test]
async fn the_cli_manages_the_table_a_running_gateway_follows() {
    let dir = TempDir::new();
    let db = sqlite_url(&dir);
    let fake = FakeProvider::start().await;
    let gw = governed(&fake, &db).await;
    let config = dir.0.join("ragway.toml");
    // The file names a provider whose key the operator does not hold: `keys`
    // reads only the key table's settings.
    std::fs::write(
        &config,
        "[providers.echo]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         api_key_env = \"ECHO_KEY\"\n\n[models.chat]\ntargets = [\"echo:m\"]\n\n\
         [governance]\ndatabase_env = \"DB\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ragway"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("DB", &db)
            .env_remove("ECHO_KEY")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&[
        "keys", "create", "--tenant", "ops", "--name", "cron", "--model", "chat-*", "--rpm", "60",
        "--budget", "12.5", "--period", "day",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["limits"], json!({"rpm": 60}));
    assert_eq!(created["budget"], json!({"amount": 12.5, "period": "day"}));
    // The gateway picks the key up from the table.
    time_until(async || chat_as(&gw, &key, "chat-a").await.status() == 200).await;
    expect_error(chat_as(&gw, &key, "other").await, 404).await;

    let (code, out, _) = run(&["keys", "list", "--tenant", "ops"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&id) && !out.contains(&key), "{out}");
    let (code, out, _) = run(&["keys", "show", &id]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["name"], "cron");

    let (code, out, _) = run(&["keys", "rotate", &id]);
    assert_eq!(code, Some(0));
    let new_key = serde_json::from_str::<Value>(&out).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    time_until(async || chat_as(&gw, &key, "chat-a").await.status() == 401).await;
    assert_eq!(chat_as(&gw, &new_key, "chat-a").await.status(), 200);

    let (code, out, _) = run(&["keys", "revoke", &id]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["status"],
        "revoked"
    );
    time_until(async || chat_as(&gw, &new_key, "chat-a").await.status() == 401).await;

    // Mistakes are named, and exit 2.
    let (code, _, err) = run(&["keys", "show", "key_nope"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("key_nope"), "{err}");
    let (code, _, err) = run(&["keys", "create", "--tenant", "ops", "--rpm", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("limits.rpm"), "{err}");
}

#[tokio::test]
async fn without_governance_the_key_endpoints_say_how_to_turn_them_on() {
    let fake = FakeProvider::start().await;
    let mut config = config_over(&fake, &[("chat", &["ok"])]);
    config.push_str("\n[auth]\nadmin_key_env = \"ADMIN\"\n");
    let gw = Gateway::start_with_env(&config, &[("ADMIN", ADMIN)]).await;
    let error = expect_error(
        admin(&gw, reqwest::Method::GET, "/admin/keys", None).await,
        404,
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("[governance]"),
        "{error}"
    );
    // And authentication stays off, as before.
    assert_eq!(gw.chat(ask("chat", "hi")).await.status(), 200);
}

/// A governed gateway over `fake` whose audit sink `audit` keeps every record.
async fn governed_with_audit(
    fake: &FakeProvider,
    db: &str,
    audit: std::sync::Arc<crate::support::MemoryAudit>,
) -> Gateway {
    let mut config = config_over(fake, &[("chat", &["ok"]), ("slow", &["drip-300"])]);
    config.push_str(
        "\n[auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase_env = \"DB\"\nrefresh_every = \"100ms\"\n",
    );
    Gateway::start_customized(&config, &[("ADMIN", ADMIN), ("DB", db)], |pipeline| {
        pipeline.audit = audit;
    })
    .await
}

async fn new_key(gw: &Gateway, body: Value) -> String {
    let created = admin(gw, reqwest::Method::POST, "/admin/keys", Some(body)).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    created["key"].as_str().unwrap().to_owned()
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn chat_body(gw: &Gateway, key: &str, body: Value) -> reqwest::Response {
    gw.http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn requests_per_minute_refuse_at_the_number_with_openai_headers_and_a_record() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let audit = std::sync::Arc::new(crate::support::MemoryAudit::default());
    let gw = governed_with_audit(&fake, &sqlite_url(&dir), audit.clone()).await;
    let key = new_key(&gw, json!({"tenant": "t", "limits": {"rpm": 3}})).await;
    for remaining in ["2", "1", "0"] {
        let ok = chat_as(&gw, &key, "chat").await;
        assert_eq!(ok.status(), 200);
        assert_eq!(
            header(&ok, "x-ratelimit-limit-requests").as_deref(),
            Some("3")
        );
        assert_eq!(
            header(&ok, "x-ratelimit-remaining-requests").as_deref(),
            Some(remaining)
        );
    }
    let refused = chat_as(&gw, &key, "chat").await;
    assert_eq!(
        header(&refused, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    // A place frees every 20 s at 3 a minute.
    let wait: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "retry-after {wait}");
    let reset = header(&refused, "x-ratelimit-reset-requests").unwrap();
    assert!(reset.ends_with('s'), "{reset}");
    let error = expect_error(refused, 429).await;
    assert_eq!(
        (error["code"].as_str(), error["type"].as_str()),
        (Some("rate_limit_exceeded"), Some("requests"))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("requests per minute"),
        "{error}"
    );
    assert_eq!(
        fake.attempts("ok"),
        3,
        "the refused call never reached a provider"
    );
    gw.idle().await;
    let records = audit.records();
    let refusals: Vec<_> = records.iter().filter(|r| r.status == 429).collect();
    assert_eq!(refusals.len(), 1, "every refusal is on the record");
    assert_eq!(refusals[0].error, Some("rate_limit_exceeded"));
    gw.metric_reads("ragway_ratelimit_rejections_total{kind=\"rpm\",scope=\"key\"} 1")
        .await;
}

#[tokio::test]
async fn a_tenant_limit_holds_across_its_keys() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let audit = std::sync::Arc::new(crate::support::MemoryAudit::default());
    let gw = governed_with_audit(&fake, &sqlite_url(&dir), audit).await;
    let put = admin(
        &gw,
        reqwest::Method::PUT,
        "/admin/tenants/shared",
        Some(json!({"limits": {"rpm": 2}})),
    )
    .await;
    assert_eq!(put.status(), 200);
    // Each key may do more than the tenant: the tenant's limit still holds.
    let one = new_key(&gw, json!({"tenant": "shared", "limits": {"rpm": 10}})).await;
    let two = new_key(&gw, json!({"tenant": "shared"})).await;
    let other = new_key(&gw, json!({"tenant": "elsewhere"})).await;
    // The tenant's settings reach the gateway at its next read of the table.
    time_until(async || {
        let response = chat_as(&gw, &other, "chat").await;
        response.status() == 200 && gw.state.client_keys.tenant("shared").is_some()
    })
    .await;
    assert_eq!(chat_as(&gw, &one, "chat").await.status(), 200);
    assert_eq!(chat_as(&gw, &two, "chat").await.status(), 200);
    let refused = expect_error(chat_as(&gw, &one, "chat").await, 429).await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("tenant shared"),
        "{refused}"
    );
    expect_error(chat_as(&gw, &two, "chat").await, 429).await;
    // Another tenant is not held by it.
    assert_eq!(chat_as(&gw, &other, "chat").await.status(), 200);
    gw.metric_reads("ragway_ratelimit_rejections_total{kind=\"rpm\",scope=\"tenant\"} 2")
        .await;
}

#[tokio::test]
async fn calls_in_flight_are_held_to_the_number_and_freed_when_they_end() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let audit = std::sync::Arc::new(crate::support::MemoryAudit::default());
    let gw = governed_with_audit(&fake, &sqlite_url(&dir), audit).await;
    let key = new_key(&gw, json!({"tenant": "t", "limits": {"concurrency": 2}})).await;
    let stream = |key: String| {
        let mut body = ask("slow", "hold");
        body["stream"] = json!(true);
        let gw_url = gw.url.clone();
        let http = gw.http();
        async move {
            http.post(format!("{gw_url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    // Two streams open (their heads are back: both were admitted) …
    let (first, second) = tokio::join!(stream(key.clone()), stream(key.clone()));
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    // … so a third call is refused while they run.
    let refused = expect_error(chat_as(&gw, &key, "chat").await, 429).await;
    assert!(
        refused["message"].as_str().unwrap().contains("in flight"),
        "{refused}"
    );
    // Read them to their end: their places come back.
    let (a, b) = tokio::join!(first.text(), second.text());
    assert!(a.unwrap().contains("[DONE]") && b.unwrap().contains("[DONE]"));
    gw.idle().await;
    assert_eq!(chat_as(&gw, &key, "chat").await.status(), 200);
    // An abandoned stream gives its place back too.
    let abandoned = stream(key.clone()).await;
    assert_eq!(abandoned.status(), 200);
    drop(abandoned);
    time_until(async || {
        gw.idle().await;
        let (x, y) = tokio::join!(stream(key.clone()), stream(key.clone()));
        let both = x.status() == 200 && y.status() == 200;
        drop((x, y));
        both
    })
    .await;
}

#[tokio::test]
async fn tokens_are_reserved_then_settled_on_the_providers_count() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let audit = std::sync::Arc::new(crate::support::MemoryAudit::default());
    let gw = governed_with_audit(&fake, &sqlite_url(&dir), audit).await;
    let key = new_key(&gw, json!({"tenant": "t", "limits": {"tpm": 1000}})).await;
    let mut body = ask("chat", "hello");
    body["max_tokens"] = json!(100);
    let first = chat_body(&gw, &key, body.clone()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-ratelimit-limit-tokens").as_deref(),
        Some("1000")
    );
    let remaining: i64 = header(&first, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    // The reservation: the prompt as counted and the 100 it may write.
    let reserved = 1000 - remaining;
    assert!((101..=120).contains(&reserved), "reserved {reserved}");
    gw.idle().await;
    // Settled on the fake's count (7 prompt + 6 completion tokens): the second
    // reservation sits on 13 used, not on the first reservation.
    let second = chat_body(&gw, &key, body.clone()).await;
    let remaining: i64 = header(&second, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    let expected = 1000 - 13 - reserved;
    assert!(
        (expected..=expected + 2).contains(&remaining),
        "{remaining}, expected {expected}"
    );
    gw.idle().await;
    // A call asking for more than the limit itself can never fit: no Retry-After.
    body["max_tokens"] = json!(5000);
    let too_large = chat_body(&gw, &key, body.clone()).await;
    assert!(too_large.headers().get("retry-after").is_none());
    let error = expect_error(too_large, 429).await;
    assert_eq!(error["type"], "tokens");
    assert!(
        error["message"].as_str().unwrap().contains("too large"),
        "{error}"
    );
    // One that fits the limit but not what is left now waits, and says for how long.
    body["max_tokens"] = json!(990);
    let later = chat_body(&gw, &key, body).await;
    assert!(header(&later, "retry-after").is_some());
    expect_error(later, 429).await;
}
