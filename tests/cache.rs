//! The answer cache through the whole gateway, against a real Redis: hits per tier,
//! promotion, policy and Cache-Control, tenant isolation, corpus generations,
//! another user's data, streams (replayed, never stored cut), coalescing, expiry,
//! and Redis going away and coming back.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{FakeProvider, Gateway, Sse, ask, ask_stream, config_over};

/// A fresh key prefix per test, so tests sharing the Redis never see each other.
fn cache_section(redis: Option<&str>, extra: &str) -> String {
    let mut section = format!("\n[cache]\n{extra}\n");
    if let Some(url) = redis {
        section.push_str(&format!(
            "redis_url = \"{url}\"\nredis_key_prefix = \"ragway:test:{}:\"\n",
            uuid::Uuid::new_v4()
        ));
    }
    section
}

const REDIS: &str = "redis://127.0.0.1:6379";

fn deterministic(text: &str) -> Value {
    let mut body = ask("chat", text);
    body["temperature"] = json!(0);
    body
}

async fn send(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> (String, Value) {
    let mut request = gw
        .http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let tier = response.headers()["x-ragway-cache"]
        .to_str()
        .unwrap()
        .to_owned();
    (tier, response.json().await.unwrap())
}

async fn tier_of(gw: &Gateway, body: &Value) -> String {
    send(gw, body, &[]).await.0
}

async fn over(model: &str, cache: &str) -> (FakeProvider, Gateway) {
    let fake = FakeProvider::start().await;
    let config = format!("{}{cache}", config_over(&fake, &[("chat", &[model])]));
    let gw = Gateway::start(&config).await;
    (fake, gw)
}

#[tokio::test]
async fn a_repeated_question_is_answered_from_memory_then_from_redis() {
    let (fake, gw) = over("ok", &cache_section(Some(REDIS), "")).await;
    let body = deterministic("What is ragway?");
    let (first, answer) = send(&gw, &body, &[]).await;
    assert_eq!(first, "miss");
    let (second, cached) = send(&gw, &body, &[]).await;
    assert_eq!(second, "hit-l1");
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(
        cached["choices"][0]["message"]["content"],
        answer["choices"][0]["message"]["content"]
    );
    assert_ne!(cached["id"], answer["id"]);

    // Another replica sharing the Redis (same prefix): an L2 hit, then promoted.
    let config = gw.state.config.clone();
    let replica = Gateway::start(&format!(
        "{}\n[cache]\nredis_url = \"{REDIS}\"\nredis_key_prefix = \"{}\"\n",
        config_over(&fake, &[("chat", &["ok"])]),
        config
            .cache
            .as_ref()
            .unwrap()
            .redis
            .as_ref()
            .unwrap()
            .key_prefix
    ))
    .await;
    // Stores run in the background: wait for the first one to reach Redis.
    let mut tier = String::new();
    for _ in 0..50 {
        tier = tier_of(&replica, &body).await;
        if tier == "hit-l2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tier, "hit-l2");
    assert_eq!(tier_of(&replica, &body).await, "hit-l1");
}

#[tokio::test]
async fn policy_and_cache_control_decide_what_is_looked_up_and_kept() {
    let (fake, gw) = over("ok", &cache_section(None, "")).await;
    // Not deterministic: bypassed.
    let warm = ask("chat", "Tell me a story");
    assert_eq!(tier_of(&gw, &warm).await, "bypass");
    assert_eq!(tier_of(&gw, &warm).await, "bypass");
    assert_eq!(fake.requests().len(), 2);
    // A seed makes it deterministic.
    let mut seeded = ask("chat", "Tell me a story");
    seeded["seed"] = json!(7);
    assert_eq!(tier_of(&gw, &seeded).await, "miss");
    assert_eq!(tier_of(&gw, &seeded).await, "hit-l1");

    // no-store: answered, not kept.
    let body = deterministic("Store nothing");
    let (tier, _) = send(&gw, &body, &[("cache-control", "no-store")]).await;
    assert_eq!(tier, "miss");
    gw.idle().await;
    assert_eq!(tier_of(&gw, &body).await, "miss");
    // no-cache: not looked up (a fresh answer), but kept.
    let (tier, _) = send(&gw, &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(tier, "miss");
    gw.idle().await;
    assert_eq!(tier_of(&gw, &body).await, "hit-l1");
    let (tier, _) = send(&gw, &body, &[("cache-control", "no-cache, no-store")]).await;
    assert_eq!(tier, "bypass");

    // An alias with `cache = "always"` keeps even warm answers; "off" none.
    let fake2 = FakeProvider::start().await;
    let config = format!(
        "{}\ncache = \"always\"\n\n[models.\"never\"]\ntargets = [\"fake:ok\"]\ncache = \"off\"\n{}",
        config_over(&fake2, &[("chat", &["ok"])]),
        cache_section(None, "")
    );
    let gw2 = Gateway::start(&config).await;
    assert_eq!(tier_of(&gw2, &warm).await, "miss");
    gw2.idle().await;
    assert_eq!(tier_of(&gw2, &warm).await, "hit-l1");
    let mut off = deterministic("hi");
    off["model"] = json!("never");
    assert_eq!(tier_of(&gw2, &off).await, "bypass");
}

#[tokio::test]
async fn tenants_never_share_an_answer() {
    let fake = FakeProvider::start().await;
    let config = format!(
        "{}\n[[auth.keys]]\nid = \"a\"\ntenant = \"acme\"\nkey_env = \"KEY_A\"\n\n\
         [[auth.keys]]\nid = \"b\"\ntenant = \"globex\"\nkey_env = \"KEY_B\"\n{}",
        config_over(&fake, &[("chat", &["echo"])]),
        cache_section(Some(REDIS), "")
    );
    let gw = Gateway::start_with_env(&config, &[("KEY_A", "key-a"), ("KEY_B", "key-b")]).await;
    let body = deterministic("Our refund policy?");
    let auth = |key: &str| format!("Bearer {key}");
    let (a1, _) = send(&gw, &body, &[("authorization", &auth("key-a"))]).await;
    gw.idle().await;
    let (b1, _) = send(&gw, &body, &[("authorization", &auth("key-b"))]).await;
    let (a2, _) = send(&gw, &body, &[("authorization", &auth("key-a"))]).await;
    assert_eq!(
        (a1.as_str(), b1.as_str(), a2.as_str()),
        ("miss", "miss", "hit-l1")
    );
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_hit_shows_the_next_user_their_own_number() {
    let (fake, gw) = over("echo", &cache_section(Some(REDIS), "")).await;
    let (tier, first) = send(&gw, &deterministic("请回拨 13812345678，谢谢"), &[]).await;
    assert_eq!(tier, "miss");
    assert_eq!(
        first["choices"][0]["message"]["content"],
        "请回拨 13812345678，谢谢"
    );
    gw.idle().await;
    let (tier, second) = send(&gw, &deterministic("请回拨 13987654321，谢谢"), &[]).await;
    assert_eq!(tier, "hit-l1");
    assert_eq!(
        second["choices"][0]["message"]["content"],
        "请回拨 13987654321，谢谢"
    );
    assert_eq!(fake.requests().len(), 1);
    assert!(!fake.last_request().body.to_string().contains("13812345678"));
}

#[tokio::test]
async fn a_streamed_answer_is_kept_when_whole_and_replayed_as_sse() {
    let (fake, gw) = over("ok", &cache_section(None, "")).await;
    let mut body = ask_stream("chat", "Stream it");
    body["temperature"] = json!(0);
    let first = Sse::read(gw.chat(body.clone()).await).await;
    assert!(first.done);
    gw.idle().await;
    let response = gw.chat(body.clone()).await;
    assert_eq!(response.headers()["x-ragway-cache"], "hit-l1");
    let replay = Sse::read(response).await;
    assert!(replay.done, "{}", replay.raw);
    assert_eq!(replay.text(), first.text());
    assert_eq!(replay.finish_reasons(), ["stop"]);
    // And a whole request for the same question is served from it.
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    assert_eq!(tier_of(&gw, &whole).await, "hit-l1");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_cut_stream_is_not_kept() {
    let (fake, gw) = over("cut-after-3", &cache_section(None, "")).await;
    let mut body = ask_stream("chat", "Cut me");
    body["temperature"] = json!(0);
    let cut = Sse::read(gw.chat(body.clone()).await).await;
    assert!(!cut.done && cut.error().is_some(), "{}", cut.raw);
    gw.idle().await;
    let again = gw.chat(body).await;
    assert_eq!(again.headers()["x-ragway-cache"], "miss");
    Sse::read(again).await;
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_call() {
    let (fake, gw) = over("slow-ttft-300", &cache_section(Some(REDIS), "")).await;
    let body = deterministic("Everyone asks this at once");
    let calls = (0..50).map(|i| {
        let mut body = body.clone();
        if i % 5 == 0 {
            body["stream"] = json!(true);
        }
        let request = gw
            .http()
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.text().await.unwrap()
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    assert_eq!(fake.requests().len(), 1);
    assert!(
        answers
            .iter()
            .all(|a| a.contains("ok") || a.contains("[DONE]"))
    );
}

#[tokio::test]
async fn answers_expire() {
    let (fake, gw) = over("ok", &cache_section(None, "ttl = \"1s\"")).await;
    let body = deterministic("Fresh?");
    assert_eq!(tier_of(&gw, &body).await, "miss");
    gw.idle().await;
    assert_eq!(tier_of(&gw, &body).await, "hit-l1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(tier_of(&gw, &body).await, "miss");
    assert_eq!(fake.requests().len(), 2);
}

/// A Redis of the test's own, on a port of its own, to stop and start again.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { port, child }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn redis_going_away_is_not_an_outage_and_its_return_is_noticed() {
    let port = free_port();
    let redis = OwnRedis::start(port);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let (fake, gw) = over("echo", &cache_section(Some(&url), "")).await;
    assert_eq!(tier_of(&gw, &deterministic("one")).await, "miss");

    drop(redis);
    // Every request still answers; new questions miss; errors are counted.
    for i in 0..10 {
        assert_eq!(
            tier_of(&gw, &deterministic(&format!("down {i}"))).await,
            "miss"
        );
    }
    assert_eq!(tier_of(&gw, &deterministic("one")).await, "hit-l1");
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ragway_cache_backend_errors_total{backend=\"redis\"}"),
        "{metrics}"
    );

    // Redis is back: after the breaker's pause, answers reach it again.
    let _back = OwnRedis::start(port);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut stored = false;
    // Up to 15 s: under a loaded machine the breaker may have doubled its pause
    // more than once while Redis was away. Each try asks a new question: a repeated
    // one would be served from memory, never stored again.
    for i in 0..150 {
        tier_of(&gw, &deterministic(&format!("after the return {i}"))).await;
        let mut redis = redis::Client::open(url.as_str()).unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut redis)
            .unwrap_or_default();
        if !keys.is_empty() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "nothing reached Redis after it came back");
    assert!(fake.requests().len() >= 12);
}

#[tokio::test]
async fn an_ingest_makes_earlier_answers_unreachable() {
    let fake = FakeProvider::start().await;
    let dir = std::env::temp_dir().join(format!("ragway-cache-{}", uuid::Uuid::new_v4()));
    let config = format!(
        "{}\n[embeddings]\nmodel = \"models/all-MiniLM-L6-v2\"\n\n[retrieval]\npath = \"{}\"\n{}",
        config_over(&fake, &[("chat", &["echo"])]),
        dir.display(),
        cache_section(Some(REDIS), "")
    );
    let gw = Gateway::start(&config).await;
    let body = deterministic("How long do Lumio refunds take?");
    assert_eq!(tier_of(&gw, &body).await, "miss");
    gw.idle().await;
    assert_eq!(tier_of(&gw, &body).await, "hit-l1");
    let stored = gw
        .http()
        .post(format!("{}/v1/documents", gw.url))
        .json(&json!({"id": "refunds.md", "text": "# Refunds\n\nLumio refunds take 14 days."}))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    // The same question now has passages to be grounded in: a new answer.
    let (tier, answer) = send(&gw, &body, &[]).await;
    assert_eq!(tier, "miss");
    assert_eq!(answer["ragway"]["citations"][0]["doc_id"], "refunds.md");
    gw.idle().await;
    // A hit carries the citations it was answered with.
    let (tier, hit) = send(&gw, &body, &[]).await;
    assert_eq!(tier, "hit-l1");
    assert_eq!(hit["ragway"]["citations"][0]["doc_id"], "refunds.md");
    // So does a hit replayed as a stream, on its final chunk.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let replay = Sse::read(gw.chat(streamed).await).await;
    let last = replay.events.last().unwrap();
    assert_eq!(
        last["ragway"]["citations"][0]["doc_id"], "refunds.md",
        "{}",
        replay.raw
    );
    assert_eq!(fake.requests().len(), 2);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_semantic_tier_reuses_paraphrases_and_refuses_near_misses() {
    let fake = FakeProvider::start().await;
    let config = format!(
        "{}\n[embeddings]\nmodel = \"models/all-MiniLM-L6-v2\"\n{}",
        config_over(&fake, &[("chat", &["echo"])]),
        cache_section(None, "semantic_threshold = 0.85")
    );
    let gw = Gateway::start(&config).await;
    assert_eq!(
        tier_of(&gw, &deterministic("How do I reset my password?")).await,
        "miss"
    );
    gw.idle().await;
    let (tier, answer) = send(
        &gw,
        &deterministic("What is the way to reset my password?"),
        &[],
    )
    .await;
    assert_eq!(tier, "hit-l1");
    // The reused answer is the first question's.
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "How do I reset my password?"
    );
    assert_eq!(
        tier_of(&gw, &deterministic("How do I enable search?")).await,
        "miss"
    );
    gw.idle().await;
    assert_eq!(
        tier_of(&gw, &deterministic("How do I disable search?")).await,
        "miss"
    );
    assert_eq!(fake.requests().len(), 3);
}

/// The paraphrase and near-miss pairs of tests/data/cache: at the thresholds an
/// operator might pick, how often a paraphrase reuses the answer and how often a
/// near miss wrongly does, without and with the guard, for each embedder (e5's
/// centered search vectors). With the guard, no near miss may hit at the example's
/// threshold, 0.85.
#[tokio::test]
async fn semantic_false_hits_on_near_misses() {
    for (model, recommended) in [
        ("models/all-MiniLM-L6-v2", 0.85f32),
        ("models/e5-small-q4.bin", 0.85),
    ] {
        let false_hits = semantic_rates(model, recommended).await;
        assert_eq!(false_hits, 0, "{model} at {recommended}");
    }
}

/// Prints the rates for one embedder; returns the guarded false hits at `at`.
async fn semantic_rates(model: &str, at: f32) -> usize {
    use ragway::cache::semantic::{Probe, Semantic};
    let device = ragway_engine::device("cpu").unwrap();
    let embedder = std::sync::Arc::new(
        ragway_engine::Embedder::load(std::path::Path::new(model), &device).unwrap(),
    );
    let semantic = Semantic::new(embedder, 0.9, Duration::from_secs(60));
    let probe = |text: String| {
        let request: ragway::wire::ChatRequest =
            serde_json::from_value(deterministic(&text)).unwrap();
        let semantic = &semantic;
        async move {
            semantic
                .probe("t", "chat", None, 0, &request)
                .await
                .unwrap()
        }
    };
    let mut pairs: Vec<(Probe, Probe, bool)> = Vec::new();
    let text = std::fs::read_to_string("tests/data/cache/semantic.jsonl").unwrap();
    for line in text.lines() {
        let pair: Value = serde_json::from_str(line).unwrap();
        let a = probe(pair["a"].as_str().unwrap().to_owned()).await;
        let b = probe(pair["b"].as_str().unwrap().to_owned()).await;
        pairs.push((a, b, pair["same"].as_bool().unwrap()));
    }
    let paraphrases = pairs.iter().filter(|p| p.2).count();
    let near = pairs.len() - paraphrases;
    assert!(paraphrases >= 20 && near >= 20);
    let mut guarded_false_hits = usize::MAX;
    for threshold in [0.80f32, 0.85, 0.90, 0.95] {
        let hits = |same: bool, guard: bool| {
            pairs
                .iter()
                .filter(|(a, b, s)| {
                    *s == same && a.similarity(b) >= threshold && (!guard || a.agrees(b))
                })
                .count()
        };
        eprintln!(
            "{model} threshold {threshold:.2}: paraphrases reused {}/{paraphrases} (guarded {}/{paraphrases}); \
             near misses reused {}/{near} (guarded {}/{near})",
            hits(true, false),
            hits(true, true),
            hits(false, false),
            hits(false, true),
        );
        if threshold == at {
            guarded_false_hits = hits(false, true);
        }
    }
    guarded_false_hits
}

#[tokio::test]
async fn without_a_memory_tier_redis_alone_serves() {
    let (fake, gw) = over("ok", &cache_section(Some(REDIS), "memory_bytes = 0")).await;
    let body = deterministic("Only Redis");
    assert_eq!(tier_of(&gw, &body).await, "miss");
    let mut tier = String::new();
    for _ in 0..50 {
        tier = tier_of(&gw, &body).await;
        if tier != "miss" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tier, "hit-l2");
    assert_eq!(tier_of(&gw, &body).await, "hit-l2");
    assert!(fake.requests().len() < 50);
}

#[tokio::test]
async fn the_admin_purges_one_tenant_or_all() {
    let fake = FakeProvider::start().await;
    let config = format!(
        "{}\n[auth]\nadmin_key_env = \"ADMIN\"\n{}",
        config_over(&fake, &[("chat", &["ok"])]),
        cache_section(Some(REDIS), "")
    );
    let gw = Gateway::start_with_env(&config, &[("ADMIN", "admin-key")]).await;
    let body = deterministic("Purge me");
    assert_eq!(tier_of(&gw, &body).await, "miss");
    gw.idle().await;
    assert_eq!(tier_of(&gw, &body).await, "hit-l1");
    let purge = |json: Value| {
        gw.http()
            .post(format!("{}/admin/cache/purge", gw.url))
            .bearer_auth("admin-key")
            .json(&json)
            .send()
    };
    // Another tenant's purge leaves this one's answers.
    assert_eq!(
        purge(json!({"tenant": "someone-else"}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(tier_of(&gw, &body).await, "hit-l1");
    assert_eq!(
        purge(json!({"tenant": "default"})).await.unwrap().status(),
        200
    );
    assert_eq!(tier_of(&gw, &body).await, "miss");
    gw.idle().await;
    assert_eq!(purge(json!({})).await.unwrap().status(), 200);
    assert_eq!(tier_of(&gw, &body).await, "miss");
    let refused = gw
        .http()
        .post(format!("{}/admin/cache/purge", gw.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}

#[tokio::test]
async fn a_purge_reaches_every_replica_within_a_second() {
    let fake = FakeProvider::start().await;
    let section = cache_section(Some(REDIS), "");
    let config = format!(
        "{}\n[auth]\nadmin_key_env = \"ADMIN\"\n{section}",
        config_over(&fake, &[("chat", &["ok"])])
    );
    // Two replicas sharing the Redis (and its prefix), each with its own memory.
    let one = Gateway::start_with_env(&config, &[("ADMIN", "admin-key")]).await;
    let two = Gateway::start_with_env(&config, &[("ADMIN", "admin-key")]).await;
    let body = deterministic("Purged everywhere?");
    assert_eq!(tier_of(&one, &body).await, "miss");
    one.idle().await;
    assert_eq!(tier_of(&two, &body).await, "hit-l2");
    assert_eq!(tier_of(&two, &body).await, "hit-l1");
    let purged = one
        .http()
        .post(format!("{}/admin/cache/purge", one.url))
        .bearer_auth("admin-key")
        .json(&json!({"tenant": "default"}))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    assert_eq!(tier_of(&one, &body).await, "miss");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The other replica's memory still holds the answer, under the old key.
    assert_ne!(tier_of(&two, &body).await, "hit-l1");
}

/// An answer that reached the request's own `max_tokens` is that request's whole
/// answer (the limit is in the key): it is kept.
#[tokio::test]
async fn an_answer_cut_at_max_tokens_is_kept() {
    let config = "[providers.local]\nkind = \"local\"\nmodel = \"models/SmolLM2-135M-Instruct.Q4_1.gguf\"\n\n[cache]\n";
    let gw = Gateway::start(config).await;
    let mut body = ask("local", "Tell me about the sea.");
    body["temperature"] = json!(0);
    body["max_tokens"] = json!(4);
    let (tier, first) = send(&gw, &body, &[]).await;
    assert_eq!(tier, "miss");
    assert_eq!(first["choices"][0]["finish_reason"], "length");
    gw.idle().await;
    let (tier, second) = send(&gw, &body, &[]).await;
    assert_eq!(tier, "hit-l1");
    assert_eq!(
        second["choices"][0]["message"]["content"],
        first["choices"][0]["message"]["content"]
    );
}
