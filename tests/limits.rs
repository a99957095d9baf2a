//! Limits at admission: each kind refused exactly at its number, with OpenAI's
//! headers and a record; tokens settled on the provider's count; places in flight
//! freed; counters shared by two gateways through Redis, and held locally while
//! Redis is away.

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::keys::{
    ADMIN, admin, chat_as, get_as, new_key, prompt_estimate, sqlite_url, time_until,
};
use crate::support::{FakeProvider, Gateway, TempDir, ask, config_over, expect_error};

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
        response.status() == 200 && gw.state.client_keys.tenant_grant("shared").is_some()
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

#[tokio::test]
async fn tokens_per_day_refuse_at_the_number_and_wait_for_the_day_to_refill() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let audit = std::sync::Arc::new(crate::support::MemoryAudit::default());
    let gw = governed_with_audit(&fake, &sqlite_url(&dir), audit).await;
    let key = new_key(&gw, json!({"tenant": "t", "limits": {"tpd": 100}})).await;
    let mut body = ask("chat", "hello");
    body["max_tokens"] = json!(20);
    // Each call reserves its prompt as counted and 20, and settles on the fake's
    // 13 (7 prompt + 6 completion): admitted while what was used and the
    // reservation fit in 100.
    let reservation = prompt_estimate("hello") as i64 + 20;
    let mut used = 0;
    let mut expected = 0;
    while used + reservation <= 100 {
        used += 13;
        expected += 1;
    }
    for n in 0..expected {
        let ok = chat_body(&gw, &key, body.clone()).await;
        assert_eq!(ok.status(), 200, "call {n} of {expected}");
        assert_eq!(
            header(&ok, "x-ratelimit-limit-tokens").as_deref(),
            Some("100")
        );
        gw.idle().await;
    }
    let refused = chat_body(&gw, &key, body).await;
    // The day's allowance refills at 100 a day: the next 20-odd tokens are
    // minutes away, not the seconds a per-minute limit would ask.
    let wait: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!(wait > 600, "retry-after {wait}");
    let error = expect_error(refused, 429).await;
    assert_eq!(
        (error["code"].as_str(), error["type"].as_str()),
        (Some("rate_limit_exceeded"), Some("tokens"))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("tokens per day"),
        "{error}"
    );
    assert_eq!(fake.attempts("ok"), expected as usize);
    gw.metric_reads("ragway_ratelimit_rejections_total{kind=\"tpd\",scope=\"key\"} 1")
        .await;
}

/// Two gateways over one key table (a SQLite file) counting limits in the Redis
/// at `redis` under `prefix`.
async fn shared_pair(
    fake: &FakeProvider,
    db: &str,
    redis: &str,
    prefix: &str,
    on_down: &str,
) -> (Gateway, Gateway) {
    let mut config = config_over(fake, &[("chat", &["ok"])]);
    // Priced (19 a call: 7 prompt tokens at 1, 6 written at 2) for the budgets.
    config.push_str(&format!(
        "\n[auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase_env = \"DB\"\n\
         refresh_every = \"100ms\"\nredis_url = \"{redis}\"\nredis_key_prefix = \"{prefix}\"\n\
         on_redis_down = \"{on_down}\"\nreserve_output_tokens = 16\nredis_timeout = \"2s\"\n\
         [audit]\ndatabase = \"{db}\"\nspool_dir = \"{}\"\n\
         [audit.prices]\n\"fake:ok\" = {{ input = 1e6, output = 2e6 }}\n",
        std::env::temp_dir()
            .join(format!("ragway-spool-{}", uuid::Uuid::new_v4()))
            .display()
    ));
    let env = [("ADMIN", ADMIN), ("DB", db)];
    (
        Gateway::start_with_env(&config, &env).await,
        Gateway::start_with_env(&config, &env).await,
    )
}

fn test_prefix() -> String {
    format!("ragway:test:{}:", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn two_gateways_sharing_redis_admit_within_one_percent_of_the_limit() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let (one, two) = shared_pair(
        &fake,
        &sqlite_url(&dir),
        "redis://127.0.0.1:6379",
        &test_prefix(),
        "local",
    )
    .await;
    let key = new_key(&one, json!({"tenant": "t", "limits": {"rpm": 600}})).await;
    // Each gateway's Redis connection is made before the clock starts, by a call
    // of another key (the measured key's counters stay untouched).
    let warm = new_key(&one, json!({"tenant": "w", "limits": {"rpm": 600}})).await;
    time_until(async || gw_knows(&two, &key).await && gw_knows(&two, &warm).await).await;
    for gw in [&one, &two] {
        assert_eq!(chat_as(gw, &warm, "chat").await.status(), 200);
    }
    let gateways = [one.url.clone(), two.url.clone()];
    let http = one.http();
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = futures_util::stream::iter(0..10_000)
        .map(|i| {
            let (http, url, key) = (http.clone(), gateways[i % 2].clone(), key.clone());
            async move {
                http.post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&ask("chat", "hi"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = statuses.iter().filter(|s| **s == 200).count() as f64;
    let refused = statuses.iter().filter(|s| **s == 429).count() as f64;
    assert_eq!(admitted + refused, 10_000.0, "only admitted or refused");
    // A minute's allowance at once, then 10 a second: what 600 RPM allows.
    let allowed = 600.0 + 10.0 * elapsed;
    let off = (admitted - allowed).abs() / allowed;
    println!(
        "admitted {admitted} of 10000 in {elapsed:.2} s against {allowed:.0} allowed: {:.2} % off",
        off * 100.0
    );
    // Every call was decided in Redis (a slow Redis would have sent some to each
    // replica's local share, which this figure is not about).
    for gw in [&one, &two] {
        assert_eq!(metric(gw, "ragway_limits_fallback_total").await, None);
    }
    assert!(
        off <= 0.01,
        "admitted {admitted}, allowed {allowed:.1} ({:.2} % off)",
        off * 100.0
    );
    // The two warm-up calls, and the admitted ones: no refused call reached it.
    assert_eq!(
        fake.attempts("ok") as f64,
        admitted + 2.0,
        "a refused call never reached a provider"
    );
}

async fn gw_knows(gw: &Gateway, key: &str) -> bool {
    get_as(gw, key, "/v1/models").await.status() == 200
}

async fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let text = gw.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn while_redis_is_away_each_gateway_holds_its_share_and_nothing_is_lost() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let proxy = crate::support::postgres::Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let redis = format!("redis://{}", proxy.addr);
    let (one, two) = shared_pair(&fake, &sqlite_url(&dir), &redis, &test_prefix(), "local").await;
    let key = new_key(
        &one,
        json!({"tenant": "t", "limits": {"rpm": 10}, "budget": {"amount": 1000, "period": "day"}}),
    )
    .await;
    time_until(async || gw_knows(&two, &key).await).await;
    // Each has counted both (they say they are alive every 5 s).
    time_until(async || {
        metric(&one, "ragway_limits_replicas").await == Some(2.0)
            && metric(&two, "ragway_limits_replicas").await == Some(2.0)
    })
    .await;
    assert_eq!(chat_as(&one, &key, "chat").await.status(), 200);
    assert_eq!(metric(&one, "ragway_limits_shared").await, Some(1.0));

    proxy.cut();
    // Each holds half of the 10 a minute (5), counted in its own memory.
    let mut admitted = [0, 0];
    for (i, gw) in [&one, &two].into_iter().enumerate() {
        for _ in 0..8 {
            if chat_as(gw, &key, "chat").await.status() == 200 {
                admitted[i] += 1;
            }
        }
    }
    assert_eq!(admitted, [5, 5], "each replica's share while Redis is away");
    assert_eq!(metric(&one, "ragway_limits_shared").await, Some(0.0));
    assert!(
        metric(&one, "ragway_limits_fallback_total{mode=\"local\"}")
            .await
            .unwrap()
            >= 8.0
    );
    one.idle().await;
    two.idle().await;

    proxy.restore();
    // Back: what was spent meanwhile (10 calls at 19) is in Redis's budget, beside
    // the call before the outage; both gateways read the same.
    // (Each adds its own at its next heartbeat.)
    time_until(async || close(spent(&two, &key).await, 19.0 * 11.0)).await;
    assert!(close(spent(&one, &key).await, 19.0 * 11.0));
    assert!(close(spent(&two, &key).await, 19.0 * 11.0));
    assert_eq!(metric(&one, "ragway_limits_shared").await, Some(1.0));
}

#[tokio::test]
async fn closed_means_refused_while_redis_is_away() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let proxy = crate::support::postgres::Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let redis = format!("redis://{}", proxy.addr);
    let (one, _two) = shared_pair(&fake, &sqlite_url(&dir), &redis, &test_prefix(), "closed").await;
    let key = new_key(&one, json!({"tenant": "t", "limits": {"rpm": 100}})).await;
    assert_eq!(chat_as(&one, &key, "chat").await.status(), 200);
    proxy.cut();
    let error = expect_error(chat_as(&one, &key, "chat").await, 503).await;
    assert!(
        error["message"].as_str().unwrap().contains("limits"),
        "{error}"
    );
    // A key without limits is not held by the counters at all.
    let free = new_key(&one, json!({"tenant": "u"})).await;
    assert_eq!(chat_as(&one, &free, "chat").await.status(), 200);
    proxy.restore();
    time_until(async || chat_as(&one, &key, "chat").await.status() == 200).await;
}

/// A governed gateway whose targets have prices: 1 per prompt token, 2 per
/// completion token (0.1 per cached prompt token where the target says so), and
/// an answer cache.
async fn priced(fake: &FakeProvider, dir: &TempDir) -> Gateway {
    let audit_db = format!("sqlite://{}", dir.0.join("audit.db").display());
    priced_on(fake, dir, &audit_db).await
}

/// [`priced`], with its audit trail in `audit_db`.
async fn priced_on(fake: &FakeProvider, dir: &TempDir, audit_db: &str) -> Gateway {
    let mut config = config_over(
        fake,
        &[
            ("chat", &["ok"]),
            ("cached", &["cached-5"]),
            ("hit", &["cache-hit-5"]),
            ("cut", &["cut-after-3"]),
            ("slow", &["drip-200"]),
        ],
    );
    config.push_str(&format!(
        "\n[auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase_env = \"DB\"\n\
         refresh_every = \"100ms\"\nreserve_output_tokens = 16\n[cache]\n\
         [audit]\ndatabase_env = \"AUDIT_DB\"\nspool_dir = \"{}\"\nflush_every = \"20ms\"\n\
         [audit.prices]\n\
         \"fake:ok\" = {{ input = 1e6, output = 2e6 }}\n\
         \"fake:cut-after-3\" = {{ input = 1e6, output = 2e6 }}\n\
         \"fake:drip-200\" = {{ input = 1e6, output = 2e6 }}\n\
         \"fake:cached-5\" = {{ input = 1e6, cached_input = 1e5, output = 2e6 }}\n\
         \"fake:cache-hit-5\" = {{ input = 1e6, cached_input = 1e5, output = 2e6 }}\n",
        dir.0.join("spool").display(),
    ));
    let keys_db = sqlite_url(dir);
    let env = [
        ("ADMIN", ADMIN),
        ("DB", keys_db.as_str()),
        ("AUDIT_DB", audit_db),
    ];
    Gateway::start_with_env(&config, &env).await
}

/// The key's budget spent so far this period, as `GET /v1/usage` tells it.
async fn spent(gw: &Gateway, key: &str) -> f64 {
    gw.idle().await;
    let usage: Value = get_as(gw, key, "/v1/usage").await.json().await.unwrap();
    let scope = usage["scopes"]
        .as_array()
        .unwrap_or_else(|| panic!("{usage}"))
        .iter()
        .find(|s| s["scope"] == "key")
        .unwrap_or_else(|| panic!("{usage}"));
    scope["budget"]["spent"].as_f64().unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[tokio::test]
async fn a_budget_is_spent_at_the_targets_prices_and_refused_when_gone() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let gw = priced(&fake, &dir).await;
    let key = new_key(
        &gw,
        json!({"tenant": "t", "budget": {"amount": 50, "period": "day"}}),
    )
    .await;
    let mut body = ask("chat", "hello");
    body["max_tokens"] = json!(10);
    body["temperature"] = json!(0.7); // not cached: each call reaches the provider
    let first = chat_body(&gw, &key, body.clone()).await;
    assert_eq!(first.status(), 200);
    // Reserved at the prompt as counted (at 1) and the 10 it may write (at 2).
    let left: f64 = header(&first, "x-ragway-budget-remaining")
        .unwrap()
        .parse()
        .unwrap();
    let reserved = 50.0 - left;
    assert!((26.0..=40.0).contains(&reserved), "reserved {reserved}");
    // Settled on what it cost: 7 prompt tokens and 6 written.
    assert!(close(spent(&gw, &key).await, 19.0));
    assert_eq!(chat_body(&gw, &key, body.clone()).await.status(), 200);
    assert!(close(spent(&gw, &key).await, 38.0));
    // 12 left, less than a call's reservation: refused, and said so.
    let refused = chat_body(&gw, &key, body).await;
    assert!(refused.headers().get("retry-after").is_some());
    let error = expect_error(refused, 429).await;
    assert_eq!(
        (error["code"].as_str(), error["type"].as_str()),
        (Some("insufficient_quota"), Some("insufficient_quota"))
    );
    assert!(
        error["message"].as_str().unwrap().contains("budget"),
        "{error}"
    );
    gw.metric_reads("ragway_ratelimit_rejections_total{kind=\"budget\",scope=\"key\"} 1")
        .await;
    // The soft share (80 %) was passed on the way: reported once.
    gw.metric_reads("ragway_budget_soft_crossings_total{scope=\"key\"} 1")
        .await;
    // The chat calls' audit rows (two answers, one refusal) cost what the budget was
    // charged.
    let mut rows = Value::Null;
    time_until(async || {
        rows = admin(&gw, reqwest::Method::GET, "/admin/audit?tenant=t", None)
            .await
            .json()
            .await
            .unwrap();
        chats(&rows).count() == 3
    })
    .await;
    let costs: f64 = chats(&rows).filter_map(|r| r["cost"].as_f64()).sum();
    assert!(close(costs, 38.0), "{rows}");
    // And the spend and token counters say the same.
    gw.metric_reads("ragway_spend_total{alias=\"chat\",currency=\"CNY\",tenant=\"t\"} 38")
        .await;
    gw.metric_reads("ragway_tokens_total{alias=\"chat\",kind=\"completion\",tenant=\"t\"} 12")
        .await;
}

fn chats(rows: &Value) -> impl Iterator<Item = &Value> {
    rows["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["route"] == "/v1/chat/completions")
}

#[tokio::test]
async fn cached_prompt_tokens_cost_the_cached_price_in_either_providers_words() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let gw = priced(&fake, &dir).await;
    let key = new_key(
        &gw,
        json!({"tenant": "t", "budget": {"amount": 1000, "period": "month"}}),
    )
    .await;
    // 7 prompt tokens, 5 of them cached: 2 × 1 + 5 × 0.1 + 6 × 2 = 14.5.
    assert_eq!(chat_as(&gw, &key, "cached").await.status(), 200);
    assert!(close(spent(&gw, &key).await, 14.5));
    assert_eq!(chat_as(&gw, &key, "hit").await.status(), 200);
    assert!(close(spent(&gw, &key).await, 29.0));
    // The answer keeps the provider's count for the client.
    let answer: Value = chat_as(&gw, &key, "cached").await.json().await.unwrap();
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
}

#[tokio::test]
async fn streamed_cut_abandoned_and_cached_answers_settle_what_they_used() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let gw = priced(&fake, &dir).await;
    let key = new_key(
        &gw,
        json!({"tenant": "t", "budget": {"amount": 1000, "period": "week"}}),
    )
    .await;
    let stream = |model: &str| {
        let mut body = ask(model, "hello");
        body["stream"] = json!(true);
        body
    };
    // A whole stream: the provider's count, 19.
    let whole = chat_body(&gw, &key, stream("chat"))
        .await
        .text()
        .await
        .unwrap();
    assert!(whole.contains("[DONE]"));
    let after_whole = spent(&gw, &key).await;
    assert!(close(after_whole, 19.0), "{after_whole}");
    // Cut after 3 pieces ("t0 t1 t2 ", 3 tokens) with no count: the prompt as
    // counted (at 1) and what was delivered (at 2).
    let cut = chat_body(&gw, &key, stream("cut"))
        .await
        .text()
        .await
        .unwrap();
    assert!(cut.contains("t2"), "{cut}");
    let cut_cost = spent(&gw, &key).await - after_whole;
    let prompt = prompt_estimate("hello");
    assert!(close(cut_cost, prompt + 6.0), "cut cost {cut_cost}");
    // Abandoned after its first piece: no more than the prompt and the 6 pieces.
    let mut abandoned = chat_body(&gw, &key, stream("slow")).await;
    let _first = abandoned.chunk().await.unwrap();
    drop(abandoned);
    let before = after_whole + cut_cost;
    time_until(async || spent(&gw, &key).await > before).await;
    let abandoned_cost = spent(&gw, &key).await - before;
    assert!(
        abandoned_cost >= prompt && abandoned_cost <= prompt + 12.0,
        "{abandoned_cost}"
    );
    // The same question again is answered from the cache: it costs nothing.
    let now = spent(&gw, &key).await;
    let mut question = ask("chat", "a question asked twice");
    question["temperature"] = json!(0);
    let again = chat_body(&gw, &key, question.clone()).await;
    assert_eq!(header(&again, "x-ragway-cache").as_deref(), Some("miss"));
    gw.idle().await;
    let cached = chat_body(&gw, &key, question).await;
    assert_eq!(header(&cached, "x-ragway-cache").as_deref(), Some("hit-l1"));
    assert!(
        close(spent(&gw, &key).await, now + 19.0),
        "only the first of the two cost"
    );
}

#[tokio::test]
async fn usage_shows_each_scope_as_it_stands() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let gw = priced(&fake, &dir).await;
    admin(
        &gw,
        reqwest::Method::PUT,
        "/admin/tenants/t",
        Some(json!({"limits": {"rpm": 100}, "budget": {"amount": 5000, "period": "month"}})),
    )
    .await;
    let key = new_key(&gw, json!({"tenant": "t", "limits": {"rpm": 10, "concurrency": 3}, "budget": {"amount": 100, "period": "day"}})).await;
    time_until(async || gw.state.client_keys.tenant_grant("t").is_some()).await;
    assert_eq!(chat_as(&gw, &key, "chat").await.status(), 200);
    gw.idle().await;
    let usage: Value = get_as(&gw, &key, "/v1/usage").await.json().await.unwrap();
    let scopes = usage["scopes"].as_array().unwrap();
    let key_scope = &scopes[0];
    assert_eq!(key_scope["scope"], "key");
    let limit = |scope: &Value, kind: &str| {
        scope["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["kind"] == kind)
            .cloned()
            .unwrap()
    };
    assert_eq!(limit(key_scope, "rpm")["remaining"], 9);
    assert_eq!(limit(key_scope, "concurrency")["remaining"], 3);
    assert!(close(key_scope["budget"]["spent"].as_f64().unwrap(), 19.0));
    assert_eq!(key_scope["budget"]["currency"], "CNY");
    assert_eq!(scopes[1]["scope"], "tenant");
    assert_eq!(limit(&scopes[1], "rpm")["remaining"], 99);
    assert!(close(
        scopes[1]["budget"]["remaining"].as_f64().unwrap(),
        5000.0 - 19.0
    ));
    // A key without limits has nothing to show, and says so plainly.
    let free = new_key(&gw, json!({"tenant": "u"})).await;
    let usage: Value = get_as(&gw, &free, "/v1/usage").await.json().await.unwrap();
    assert_eq!(usage["scopes"], json!([]));
}

/// What `GET /admin/usage` tells of one group: requests, prompt, cached and
/// completion tokens, cost.
type Sums = [f64; 5];

/// The audit rows summed by `field` (`tenant`, `client_key`, `alias`, `target`).
fn sums_of(rows: &[Value], field: &str) -> std::collections::BTreeMap<String, Sums> {
    let mut sums = std::collections::BTreeMap::<String, Sums>::new();
    for row in rows {
        let group = row[field].as_str().unwrap_or("(none)").to_owned();
        let entry = sums.entry(group).or_default();
        entry[0] += 1.0;
        for (i, column) in [
            "prompt_tokens",
            "cached_tokens",
            "completion_tokens",
            "cost",
        ]
        .iter()
        .enumerate()
        {
            entry[i + 1] += row[*column].as_f64().unwrap_or(0.0);
        }
    }
    sums
}

/// `GET /admin/usage`'s rows in the same form.
fn sums_told(usage: &Value) -> std::collections::BTreeMap<String, Sums> {
    usage["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{usage}"))
        .iter()
        .map(|row| {
            assert_eq!(row["currency"], "CNY");
            let group = row["group"].as_str().unwrap_or("(none)").to_owned();
            let number = |c: &str| row[c].as_f64().unwrap_or_else(|| panic!("{c}: {row}"));
            let told = [
                number("requests"),
                number("prompt_tokens"),
                number("cached_tokens"),
                number("completion_tokens"),
                number("cost"),
            ];
            (group, told)
        })
        .collect()
}

fn same_sums(
    a: &std::collections::BTreeMap<String, Sums>,
    b: &std::collections::BTreeMap<String, Sums>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ga, sa), (gb, sb))| ga == gb && sa.iter().zip(sb).all(|(x, y)| close(*x, *y)))
}

async fn usage_matches_the_audit_rows(audit_db: &str) {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let gw = priced_on(&fake, &dir, audit_db).await;
    let a = new_key(
        &gw,
        json!({"tenant": "a", "budget": {"amount": 1000, "period": "day"}}),
    )
    .await;
    let b = new_key(
        &gw,
        json!({"tenant": "b", "budget": {"amount": 40, "period": "day"}}),
    )
    .await;
    // Priced answers, cached prompt tokens in both providers' words, and a call
    // refused for the budget (b's second: 21 left of 40, less than the prompt and
    // the 16 tokens reserved for the answer).
    let calls = [
        (&a, "chat", 200),
        (&a, "cached", 200),
        (&a, "hit", 200),
        (&b, "chat", 200),
        (&b, "chat", 429),
    ];
    for (key, model, status) in calls {
        let mut body = ask(model, "hello");
        body["temperature"] = json!(0.7);
        let answer = chat_body(&gw, key, body).await;
        assert_eq!(answer.status(), status, "{model}");
        gw.idle().await;
    }
    let mut rows = Vec::new();
    time_until(async || {
        let all: Value = admin(&gw, reqwest::Method::GET, "/admin/audit?limit=1000", None)
            .await
            .json()
            .await
            .unwrap();
        // Not yet readable while the trail's first write (and migration) is on its way.
        let Some(data) = all["data"].as_array() else {
            return false;
        };
        // The admin API's own calls are audited too; usage is the spending calls'.
        rows = data
            .iter()
            .filter(|r| r["route"] == "/v1/chat/completions")
            .cloned()
            .collect();
        rows.len() == calls.len()
    })
    .await;
    // The provider's cached prompt tokens are on the row.
    let cached: Vec<_> = rows
        .iter()
        .filter_map(|r| r["cached_tokens"].as_i64())
        .collect();
    assert_eq!(cached, vec![5, 5], "{rows:?}");
    for (group, field) in [
        ("tenant", "tenant"),
        ("key", "client_key"),
        ("alias", "alias"),
        ("target", "target"),
    ] {
        let usage: Value = admin(
            &gw,
            reqwest::Method::GET,
            &format!("/admin/usage?group_by={group}"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
        let (expected, told) = (sums_of(&rows, field), sums_told(&usage));
        assert!(
            same_sums(&expected, &told),
            "{group}: {expected:?} != {told:?}"
        );
    }
    // By day: each row under the UTC day of its time.
    let dated: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["day"] = json!(r["at"].as_str().unwrap()[..10]);
            r
        })
        .collect();
    let by_day: Value = admin(&gw, reqwest::Method::GET, "/admin/usage?group_by=day", None)
        .await
        .json()
        .await
        .unwrap();
    let (expected, told) = (sums_of(&dated, "day"), sums_told(&by_day));
    assert!(same_sums(&expected, &told), "day: {expected:?} != {told:?}");
    // Tenant a: 3 calls, 19 + 14.5 + 14.5; b: 2 calls (one refused), 19.
    let by_tenant: Value = admin(&gw, reqwest::Method::GET, "/admin/usage", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_tenant["group_by"], "tenant");
    let told = sums_told(&by_tenant);
    assert!(close(told["a"][4], 48.0) && told["a"][0] == 3.0, "{told:?}");
    assert!(close(told["b"][4], 19.0) && told["b"][0] == 2.0, "{told:?}");
    // Filtered to a tenant, and to a range that holds nothing yet.
    let only_b: Value = admin(
        &gw,
        reqwest::Method::GET,
        "/admin/usage?group_by=key&tenant=b",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(only_b["data"].as_array().unwrap().len(), 1, "{only_b}");
    let future: Value = admin(
        &gw,
        reqwest::Method::GET,
        "/admin/usage?since=2999-01-01",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(future["data"], json!([]), "{future}");
    // The key's own view says what its rows say, today and this month.
    let own: Value = get_as(&gw, &a, "/v1/usage").await.json().await.unwrap();
    let key_rows: Vec<Value> = rows
        .iter()
        .filter(|r| r["tenant"] == "a")
        .cloned()
        .collect();
    let expected = sums_of(&key_rows, "client_key");
    for period in own["spend"].as_array().unwrap_or_else(|| panic!("{own}")) {
        let told = sums_told(&json!({"data": [period]}));
        assert!(same_sums(&expected, &told), "{period}: {expected:?}");
    }
    assert_eq!(own["spend"][0]["period"], "day");
    assert_eq!(own["spend"][1]["period"], "month");
    // Bad questions are told which part is wrong.
    for (query, param) in [
        ("group_by=model", "group_by"),
        ("since=yesterday-ish", "since"),
    ] {
        let bad = admin(
            &gw,
            reqwest::Method::GET,
            &format!("/admin/usage?{query}"),
            None,
        )
        .await;
        let error = expect_error(bad, 400).await;
        assert_eq!(error["param"], param, "{error}");
    }
    expect_error(get_as(&gw, &a, "/admin/usage").await, 401).await;
}

#[tokio::test]
async fn usage_endpoints_match_the_audit_rows_sums_on_sqlite() {
    let dir = TempDir::new();
    usage_matches_the_audit_rows(&format!("sqlite://{}", dir.0.join("audit.db").display())).await;
}

#[tokio::test]
async fn usage_endpoints_match_the_audit_rows_sums_on_postgres() {
    usage_matches_the_audit_rows(&crate::support::postgres::fresh_database().await).await;
}

#[tokio::test]
async fn a_target_at_its_own_limit_is_passed_over_for_the_next() {
    let fake = FakeProvider::start().await;
    // `ok` may be called twice a minute, the provider five times over all models.
    let mut config = crate::support::config_with(
        &fake,
        "limits = { rpm = 5 }\nmodel_limits = { ok = { rpm = 2 } }",
        &[("chat", &["ok", "echo"]), ("only", &["ok"])],
    );
    config.push('\n');
    let gw = Gateway::start(&config).await;
    let served = async || {
        let response = gw.chat(ask("chat", "hi")).await;
        assert_eq!(response.status(), 200);
        header(&response, "x-ragway-target").unwrap()
    };
    assert_eq!(served().await, "fake:ok");
    assert_eq!(served().await, "fake:ok");
    // `ok` is at its limit: the route goes on to the next target, as past an
    // open breaker, without calling `ok` again.
    assert_eq!(served().await, "fake:echo");
    assert_eq!(fake.attempts("ok"), 2);
    let only = expect_error(gw.chat(ask("only", "hi")).await, 503).await;
    assert!(
        only["message"].as_str().unwrap().contains("limit"),
        "{only}"
    );
    // The provider's own five: two `ok`, one `echo`, then two more `echo`.
    assert_eq!(served().await, "fake:echo");
    assert_eq!(served().await, "fake:echo");
    expect_error(gw.chat(ask("chat", "hi")).await, 503).await;
    assert_eq!(fake.attempts("echo"), 3);
    // Passed over: `ok` on each of the last five calls, `echo` on the last.
    gw.metric_reads("ragway_ratelimit_rejections_total{kind=\"rpm\",scope=\"target\"} 6")
        .await;
    gw.metric_reads(
        "ragway_failovers_total{from=\"fake:ok\",reason=\"target_limit\",to=\"fake:echo\"} 4",
    )
    .await;
}

#[test]
fn limits_in_the_config_are_checked_by_name() {
    let toml = "[providers.p]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
                limits = { rpm = 0 }\nmodel_limits = { m = { tpm = 0 } }\n\
                [models.chat]\ntargets = [\"p:m\"]\n\
                [governance]\nrefresh_every = \"2s\"\ncurrency = \"¥\"\nsoft_budget = 1.5\n\
                budget_utc_offset = \"8\"\non_redis_down = \"maybe\"\n";
    let error = ragway::config::Config::from_toml(
        toml,
        &ragway::config::Env::from_pairs(std::iter::empty::<(&str, &str)>()),
    )
    .unwrap_err()
    .to_string();
    for key in [
        "providers.p.limits.rpm",
        "providers.p.model_limits.m.tpm",
        "governance.refresh_every",
        "governance.currency",
        "governance.soft_budget",
        "governance.budget_utc_offset",
    ] {
        assert!(error.contains(key), "{key} not named in: {error}");
    }
    let toml = "[providers.p]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
                limits = { rps = 3 }\n[models.chat]\ntargets = [\"p:m\"]\n";
    let error = ragway::config::Config::from_toml(
        toml,
        &ragway::config::Env::from_pairs(std::iter::empty::<(&str, &str)>()),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("rps"), "{error}");
}

#[tokio::test]
async fn embeddings_are_admitted_at_the_same_point_as_chat() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let mut config = config_over(&fake, &[("chat", &["ok"])]);
    config.push_str(
        "\n[embeddings]\nmodel = \"models/all-MiniLM-L6-v2\"\n\
         [auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase_env = \"DB\"\n",
    );
    let gw = Gateway::start_with_env(&config, &[("ADMIN", ADMIN), ("DB", &sqlite_url(&dir))]).await;
    let key = new_key(&gw, json!({"tenant": "t", "limits": {"rpm": 3}})).await;
    let embed = async || {
        gw.http()
            .post(format!("{}/v1/embeddings", gw.url))
            .bearer_auth(&key)
            .json(&json!({"model": "embeddings", "input": ["hello", "world"]}))
            .send()
            .await
            .unwrap()
    };
    let first = embed().await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-ratelimit-remaining-requests").as_deref(),
        Some("2")
    );
    // One minute's allowance is shared by both endpoints.
    assert_eq!(chat_as(&gw, &key, "chat").await.status(), 200);
    assert_eq!(embed().await.status(), 200);
    let refused = expect_error(embed().await, 429).await;
    assert_eq!(refused["code"], "rate_limit_exceeded");
    expect_error(chat_as(&gw, &key, "chat").await, 429).await;
}
