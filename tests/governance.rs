//! Keys as data (`[governance]`): made, changed, rotated and revoked at run time,
//! through the admin API and `ragway keys`, on a SQLite file and on Postgres; a
//! revocation seen by every gateway on the table within a second.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::keys::{ADMIN, admin, chat_as, get_as, sqlite_url, time_until};
use crate::support::postgres::fresh_database;
use crate::support::{FakeProvider, Gateway, TempDir, ask, config_over, expect_error};

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

async fn models_of(gw: &Gateway, key: &str) -> Vec<String> {
    let list: Value = get_as(gw, key, "/v1/models").await.json().await.unwrap();
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
