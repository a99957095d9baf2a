//! Never hang, never hammer, never lie: each provider fault, with what the provider
//! saw (attempts, spacing) and what the client got.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::fake::{OK_TOKENS, resetting_listener};
use crate::support::{FakeProvider, Gateway, Sse, ask, ask_stream, config_with};

/// Deadlines short enough to keep the suite quick.
const QUICK: &str = "first_token_timeout = \"500ms\"\nidle_timeout = \"500ms\"";

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn fmt(durations: &[Duration]) -> String {
    let ms: Vec<String> = durations
        .iter()
        .map(|d| format!("{} ms", d.as_millis()))
        .collect();
    ms.join(", ")
}

/// The header is read off a real response (the waits themselves are measured under
/// the paused clock, in `paused`).
#[tokio::test]
async fn retry_after_is_read_from_the_response_then_the_next_target_answers() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["retry-after-1", "ok"])]).await;
    let response = gw.chat(ask("chat", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    let times = fake.attempt_times("retry-after-1");
    assert_eq!(times.len(), 3, "bounded: three attempts");
    println!("429 Retry-After 1: attempts {} apart", fmt(&gaps(&times)));
    for gap in gaps(&times) {
        assert!(
            gap >= Duration::from_millis(900),
            "Retry-After: 1 waited, got {gap:?}"
        );
    }
}

#[tokio::test]
async fn a_500_once_is_retried_on_the_same_target() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["fail-once", "ok"])]).await;
    let response = gw.chat(ask_stream("chat", "hi")).await;
    assert_eq!(response.headers()["x-ragway-target"], "fake:fail-once");
    assert_eq!(response.headers()["x-ragway-attempts"], "2");
    assert_eq!(Sse::read(response).await.text(), OK_TOKENS.concat());
    assert_eq!(fake.attempts("fail-once"), 2);
    assert_eq!(fake.attempts("ok"), 0);
}

#[tokio::test]
async fn a_503_forever_gets_three_attempts_then_the_next_target_answers() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["status-503", "ok"])]).await;
    let response = gw.chat(ask("chat", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    assert_eq!(response.headers()["x-ragway-attempts"], "4");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "fake:ok");
    assert_eq!(
        body["usage"]["completion_tokens"], 6,
        "billed to the target that served"
    );
    assert_eq!(fake.attempts("status-503"), 3);
}

#[tokio::test]
async fn a_reset_before_headers_is_retried_then_failed_over() {
    let fake = FakeProvider::start().await;
    let (reset_url, resets) = resetting_listener().await;
    let toml = format!(
        "[providers.reset]\nkind = \"openai\"\nbase_url = \"{reset_url}\"\n\
         [providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [models.chat]\ntargets = [\"reset:any\", \"fake:ok\"]\n",
        fake.base_url()
    );
    let gw = Gateway::start(&toml).await;
    let response = gw.chat(ask("chat", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_silent_provider_is_left_at_the_first_token_deadline_and_not_asked_again() {
    let fake = FakeProvider::start().await;
    let toml = config_with(&fake, QUICK, &[("chat", &["silent", "ok"])]);
    let gw = Gateway::start(&toml).await;
    for body in [ask("chat", "hi"), ask_stream("chat", "hi")] {
        let started = Instant::now();
        let response = gw.chat(body).await;
        assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
        let elapsed = started.elapsed();
        println!(
            "silent provider, 500 ms first-token deadline: answered by the next in {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(1500),
            "within the deadline: {elapsed:?}"
        );
    }
    assert_eq!(
        fake.attempts("silent"),
        2,
        "once per request, never retried"
    );
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(
        r#"ragway_upstream_attempts_total{outcome="first_token_timeout",target="fake:silent"} 2"#
    ));
}

#[tokio::test]
async fn a_slow_first_token_fails_over_within_its_deadline() {
    let fake = FakeProvider::start().await;
    let toml = config_with(
        &fake,
        QUICK,
        &[
            ("slow", &["slow-ttft-3000", "ok"]),
            ("fine", &["slow-ttft-200"]),
        ],
    );
    let gw = Gateway::start(&toml).await;
    let started = Instant::now();
    let sse = Sse::read(gw.chat(ask_stream("slow", "hi")).await).await;
    println!(
        "3 s first token, 500 ms deadline: answered by the next in {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(sse.events[0]["model"], "fake:ok");
    assert_eq!(fake.attempts("slow-ttft-3000"), 1);
    // A first token inside the deadline is simply slow, not a failure.
    let response = gw.chat(ask_stream("fine", "hi")).await;
    assert_eq!(response.headers()["x-ragway-target"], "fake:slow-ttft-200");
    assert!(Sse::read(response).await.done);
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_not_a_finish() {
    let fake = FakeProvider::start().await;
    let toml = config_with(&fake, QUICK, &[("chat", &["stall-after-3", "ok"])]);
    let gw = Gateway::start(&toml).await;
    let started = Instant::now();
    let sse = Sse::read(gw.chat(ask_stream("chat", "hi")).await).await;
    println!(
        "stall after 3 tokens, 500 ms idle deadline: in-band error after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the idle deadline ended it"
    );
    assert!(!sse.done && sse.finish_reasons().is_empty(), "{}", sse.raw);
    let error = sse.error().expect("an in-band error");
    assert!(
        error["message"].as_str().unwrap().contains("idle"),
        "{error}"
    );
    assert_eq!(sse.text(), "t0 t1 t2 ");
    // A whole answer has sent nothing yet, so the same stall fails over.
    let response = gw.chat(ask("chat", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    assert_eq!(gw.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn quiet_after_the_finish_chunk_ends_the_answer_cleanly() {
    let fake = FakeProvider::start().await;
    let toml = config_with(&fake, QUICK, &[("chat", &["finish-then-stall", "ok"])]);
    let gw = Gateway::start(&toml).await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "hi")).await).await;
    assert!(sse.done, "a finished answer stays finished: {}", sse.raw);
    assert!(sse.error().is_none());
    assert_eq!(sse.finish_reasons(), ["stop"]);
    let response = gw.chat(ask("chat", "hi")).await;
    assert_eq!(
        response.headers()["x-ragway-target"],
        "fake:finish-then-stall"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], OK_TOKENS.concat());
}

#[tokio::test]
async fn a_pause_longer_than_the_back_off_cap_moves_to_the_next_target() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(
        &fake,
        &[
            ("chat", &["retry-after-30", "ok"]),
            ("alone", &["retry-after-30#2"]),
        ],
    )
    .await;
    let started = Instant::now();
    let response = gw.chat(ask("chat", "hi")).await;
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    assert!(started.elapsed() < Duration::from_secs(2), "not waited on");
    assert_eq!(fake.attempts("retry-after-30"), 1);
    // With no other target, the client is told the provider's own pause.
    let response = gw.chat(ask("alone", "hi")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "30");
}

#[tokio::test]
async fn a_whole_answer_cut_mid_stream_is_retried_not_returned_short() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["cut-after-40", "tokens-60"])]).await;
    let body: Value = gw.chat(ask("chat", "count")).await.json().await.unwrap();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        text.split_whitespace().count(),
        60,
        "the complete answer, from the next target"
    );
    assert_eq!(body["model"], "fake:tokens-60");
    assert_eq!(fake.attempts("cut-after-40"), 3);
}

#[tokio::test]
async fn a_stream_without_done_is_finalised_at_once_with_usage() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["no-done"])]).await;
    let mut body = ask_stream("chat", "hi");
    body["stream_options"] = json!({"include_usage": true});
    let started = Instant::now();
    let sse = Sse::read(gw.chat(body).await).await;
    println!(
        "no [DONE]: finished {:?} after the request",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no wait for an idle deadline"
    );
    assert!(sse.done);
    let usage = sse
        .events
        .iter()
        .find_map(|e| e.get("usage"))
        .expect("usage");
    assert_eq!(usage["completion_tokens"], 6);
}

#[tokio::test]
async fn context_length_exceeded_moves_on_after_one_attempt() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(
        &fake,
        &[
            ("chat", &["context-length", "ok"]),
            ("only", &["context-length#2"]),
        ],
    )
    .await;
    let response = gw.chat(ask("chat", "a very long prompt")).await;
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    assert_eq!(fake.attempts("context-length"), 1);
    // With no target left, the client learns its prompt is too long — not an outage.
    let response = gw.chat(ask("only", "a very long prompt")).await;
    assert_eq!(response.status(), 400);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length")
    );
}

#[tokio::test]
async fn a_content_filter_can_be_configured_to_fail_over() {
    let fake = FakeProvider::start().await;
    let mut toml = config_with(&fake, "", &[("strict", &["content-filter", "ok"])]);
    toml.push_str("\n[models.lenient]\ntargets = [\"fake:content-filter#2\", \"fake:ok\"]\nfailover_on_content_filter = true\n");
    toml.push_str("\n[models.all-refuse]\ntargets = [\"fake:content-filter#3\", \"fake:content-filter#4\"]\nfailover_on_content_filter = true\n");
    let gw = Gateway::start(&toml).await;
    let response = gw.chat(ask("strict", "x")).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("inappropriate content")
    );
    assert_eq!(fake.attempts("content-filter"), 1);
    let response = gw.chat(ask("lenient", "x")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    assert_eq!(fake.attempts("content-filter#2"), 1);
    // Failing over, and every target refuses: still a refusal, not an outage.
    let response = gw.chat(ask("all-refuse", "x")).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "content_filter");
}

#[tokio::test]
async fn configuration_errors_are_counted_and_failed_over() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(
        &fake,
        &[("chat", &["price-not-set", "deepseek-40101", "ok"])],
    )
    .await;
    assert_eq!(gw.chat(ask("chat", "hi")).await.status(), 200);
    assert_eq!(fake.attempts("price-not-set"), 1);
    assert_eq!(fake.attempts("deepseek-40101"), 1);
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"ragway_config_errors_total{target="fake:price-not-set"} 1"#,
        r#"ragway_config_errors_total{target="fake:deepseek-40101"} 1"#,
        r#"ragway_failovers_total{from="fake:price-not-set",reason="http_5xx",to="fake:deepseek-40101"} 1"#,
        r#"ragway_failovers_total{from="fake:deepseek-40101",reason="http_4xx",to="fake:ok"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

/// The primary is down for three seconds, then healthy; a request every 200 ms.
#[tokio::test]
async fn a_flapping_primary_is_skipped_while_down_and_used_again_when_back() {
    let fake = FakeProvider::start().await;
    let toml = config_with(
        &fake,
        "retry.attempts = 1\nbreaker.failures = 3\nbreaker.open_for = \"1s\"\nbreaker.max_open_for = \"1s\"",
        &[("chat", &["flap-3000", "ok"])],
    );
    let gw = Gateway::start(&toml).await;
    let started = Instant::now();
    let mut served = Vec::new();
    let mut saw_open = false;
    while started.elapsed() < Duration::from_millis(5500) {
        let response = gw.chat(ask("chat", "hi")).await;
        assert_eq!(response.status(), 200, "every request is answered");
        let target = response.headers()["x-ragway-target"]
            .to_str()
            .unwrap()
            .to_owned();
        served.push((started.elapsed(), target));
        let metrics = gw.get("/metrics").await.text().await.unwrap();
        saw_open |= metrics.contains(r#"ragway_breaker_state{target="fake:flap-3000"} 2"#);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_open, "the breaker opened during the outage");
    let during: Vec<_> = served
        .iter()
        .filter(|(t, _)| *t < Duration::from_millis(2900))
        .collect();
    assert!(
        during.iter().all(|(_, target)| target == "fake:ok"),
        "{during:?}"
    );
    let back = served
        .iter()
        .find(|(t, target)| *t > Duration::from_secs(3) && target == "fake:flap-3000")
        .unwrap_or_else(|| panic!("never back on the primary: {served:?}"));
    println!(
        "flapping (3 s down, 1 s open): back on the primary at {:?}",
        back.0
    );
    assert!(
        back.0 < Duration::from_millis(4500),
        "back within the open period: {back:?}"
    );
    assert!(served.last().unwrap().1 == "fake:flap-3000", "{served:?}");
    // Down for 3 s at a request every ~200 ms: without the breaker the primary would
    // have seen each of them; with it, three failures and a probe a second.
    let times = fake.attempt_times("flap-3000");
    let in_outage = times
        .iter()
        .filter(|t| **t - times[0] < Duration::from_secs(3))
        .count();
    assert!(
        in_outage <= 6,
        "{in_outage} attempts during the outage, {} requests",
        during.len()
    );
}

#[tokio::test]
async fn two_hundred_concurrent_requests_do_not_hammer_a_down_primary() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["status-503", "ok"])]).await;
    // The primary goes down: the first requests find out (3 attempts, then 2 more
    // open the breaker).
    for _ in 0..2 {
        assert_eq!(gw.chat(ask("chat", "hi")).await.status(), 200);
    }
    assert_eq!(fake.attempts("status-503"), 5);
    let requests = (0..200).map(|_| gw.chat(ask("chat", "hi")));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    }
    assert_eq!(
        fake.attempts("status-503"),
        5,
        "the open breaker skips it at once"
    );
    assert_eq!(fake.attempts("ok"), 202);
}

/// The harder case: 200 requests arrive together before anything is known. Those
/// already sent when the first failure comes back cannot be recalled, but none of
/// them is retried on the failing primary: no request tries it three times.
#[tokio::test]
async fn a_cold_burst_onto_a_down_primary_is_not_multiplied_by_retries() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["status-503", "ok"])]).await;
    let requests = (0..200).map(|_| gw.chat(ask("chat", "hi")));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
    }
    let primary = fake.attempts("status-503");
    println!("a cold burst of 200: the primary saw {primary} attempts");
    assert!(
        primary <= 200 + 5,
        "the primary saw {primary} attempts for 200 requests"
    );
    assert_eq!(fake.attempts("ok"), 200);
}

#[tokio::test]
async fn the_admin_api_shows_breakers_behind_its_key() {
    let fake = FakeProvider::start().await;
    let mut toml = config_with(
        &fake,
        "retry.attempts = 1\nbreaker.failures = 2",
        &[("chat", &["status-503", "ok"])],
    );
    toml.push_str("\n[auth]\nadmin_key_env = \"ADMIN_KEY\"\n");
    let gw = Gateway::start_with_env(&toml, &[("ADMIN_KEY", "admin-secret")]).await;
    for _ in 0..2 {
        gw.chat(ask("chat", "hi")).await;
    }
    let url = format!("{}/admin/breakers", gw.url);
    assert_eq!(gw.http().get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        gw.http()
            .get(&url)
            .bearer_auth("nope")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let body: Value = gw
        .http()
        .get(&url)
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let breakers = body["breakers"].as_array().unwrap();
    let primary = breakers
        .iter()
        .find(|b| b["target"] == "fake:status-503")
        .unwrap();
    assert_eq!(primary["state"], "open");
    assert_eq!(primary["failures"], 2);
    assert!(primary["retry_in_secs"].as_f64().unwrap() > 25.0);
    let backup = breakers.iter().find(|b| b["target"] == "fake:ok").unwrap();
    assert_eq!(backup["state"], "closed");
    assert_eq!(backup["successes"], 2);
    // A third request skips the open primary at once.
    gw.chat(ask("chat", "hi")).await;
    assert_eq!(fake.attempts("status-503"), 2);

    // An operator's reset closes it: the next request tries the primary again.
    let reset = |target: &str, key: Option<&str>| {
        let mut request = gw
            .http()
            .post(format!("{}/admin/breakers/{target}/reset", gw.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(reset("fake:status-503", None).await.unwrap().status(), 401);
    let unknown = reset("fake:nothing", Some("admin-secret")).await.unwrap();
    assert_eq!(unknown.status(), 404);
    let closed: Value = reset("fake:status-503", Some("admin-secret"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(closed["state"], "closed", "{closed}");
    assert_eq!(closed["consecutive_failures"], 0, "{closed}");
    assert_eq!(closed["failures"], 2, "totals are kept: {closed}");
    gw.chat(ask("chat", "hi")).await;
    assert_eq!(fake.attempts("status-503"), 3);

    let off = Gateway::over(&fake, &[("chat", &["ok"])]).await;
    let response = off.get("/admin/breakers").await;
    assert_eq!(
        response.status(),
        403,
        "no admin key configured: the admin API is off"
    );
}

/// The flapping primary at full scale, with the default breaker (5 failures, 30 s
/// open, ×1.5 per reopening) and retry settings: down for 60 s, a request every 3 s.
/// The router runs in process against scripted providers, under tokio's paused
/// clock, so two simulated minutes take milliseconds.
mod paused {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use ragway::call::Caller;
    use ragway::generate::{
        ChatProvider, ChunkStream, Deadlines, Generate, Prompt, ProviderError, Route, Router,
        Target, UpstreamError,
    };
    use ragway::pipeline::RequestCtx;
    use ragway::resilience::{Breaker, BreakerPolicy, RetryPolicy};
    use ragway::telemetry::Metrics;
    use ragway::wire::{ChatChunk, ChatCompletion, ChatRequest};
    use serde_json::json;
    use tokio::time::Instant;

    /// Down (`status`, with `retry_after`) until `up_at`, then answers; records when
    /// it was called.
    struct Scripted {
        up_at: Instant,
        status: u16,
        retry_after: Option<Duration>,
        calls: Mutex<Vec<Instant>>,
    }

    impl Scripted {
        fn new(up_at: Instant) -> Arc<Scripted> {
            Scripted::failing(up_at, 503, None)
        }

        fn failing(up_at: Instant, status: u16, retry_after: Option<Duration>) -> Arc<Scripted> {
            Arc::new(Scripted {
                up_at,
                status,
                retry_after,
                calls: Mutex::default(),
            })
        }

        /// The gaps between its calls.
        fn gaps(&self) -> Vec<Duration> {
            let calls = self.calls.lock().unwrap();
            calls.windows(2).map(|w| w[1] - w[0]).collect()
        }
    }

    #[async_trait]
    impl ChatProvider for Scripted {
        async fn complete(
            &self,
            _: &str,
            _: &ChatRequest,
        ) -> Result<ChatCompletion, UpstreamError> {
            Err(UpstreamError::Protocol(
                "this scripted provider only streams".into(),
            ))
        }

        async fn stream(&self, _: &str, _: &ChatRequest) -> Result<ChunkStream, UpstreamError> {
            let now = Instant::now();
            self.calls.lock().unwrap().push(now);
            if now < self.up_at {
                return Err(UpstreamError::Status {
                    status: self.status,
                    detail: ProviderError {
                        message: "down".into(),
                        ..Default::default()
                    },
                    retry_after: self.retry_after,
                });
            }
            let chunk: ChatChunk = serde_json::from_value(json!({
                "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]
            }))
            .unwrap();
            Ok(Box::pin(futures_util::stream::iter([Ok(chunk)])))
        }
    }

    fn target(id: &str, provider: Arc<Scripted>) -> Arc<Target> {
        Arc::new(Target {
            id: id.into(),
            model: "m".into(),
            provider,
            breaker: Arc::new(Breaker::new(BreakerPolicy::default())),
            retry: RetryPolicy::default(),
            deadlines: Deadlines::default(),
            stream_upstream: true,
            raw_input: false,
            local: false,
            gates: Vec::new(),
        })
    }

    fn route(targets: Vec<Arc<Target>>) -> Arc<Route> {
        Arc::new(Route {
            alias: "chat".into(),
            kind: ragway::generate::ModelKind::Chat,
            rank_locally: false,
            targets,
            request_timeout: Duration::from_secs(120),
            failover_on_content_filter: false,
            hedge_after: None,
        })
    }

    /// One request through `router`: the target that answered it.
    async fn serve(router: &Router, route: &Arc<Route>) -> String {
        let prompt: ChatRequest = serde_json::from_value(json!({
            "model": "chat", "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        let ctx = RequestCtx::new(
            "r".into(),
            Caller::anonymous(),
            route.clone(),
            &prompt,
            Instant::now(),
        );
        let prompt = Prompt {
            sanitised: std::sync::Arc::new(prompt),
            raw: None,
        };
        let answer = router
            .generate(&ctx.call(), route, &prompt)
            .await
            .result
            .expect("every request is answered");
        answer.target.to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_exactly_then_the_next_target_answers() {
        let never = Instant::now() + Duration::from_secs(3600);
        let throttled = Scripted::failing(never, 429, Some(Duration::from_secs(2)));
        let backup = Scripted::new(Instant::now());
        let route = route(vec![
            target("throttled", throttled.clone()),
            target("backup", backup),
        ]);
        let router = Router::new(Arc::new(Metrics::new()));
        assert_eq!(serve(&router, &route).await, "backup");
        assert_eq!(
            throttled.gaps(),
            [Duration::from_secs(2); 2],
            "three attempts, each the asked-for 2 s after the last"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_retry_after_backs_off_with_full_jitter() {
        let router = Router::new(Arc::new(Metrics::new()));
        let (mut first, mut second) = (Vec::new(), Vec::new());
        // A fresh target each time: its breaker would open after two requests.
        for _ in 0..100 {
            let never = Instant::now() + Duration::from_secs(3600);
            let throttled = Scripted::failing(never, 429, None);
            let route = route(vec![
                target("throttled", throttled.clone()),
                target("backup", Scripted::new(Instant::now())),
            ]);
            assert_eq!(serve(&router, &route).await, "backup");
            let gaps = throttled.gaps();
            assert_eq!(gaps.len(), 2, "three attempts");
            first.push(gaps[0]);
            second.push(gaps[1]);
        }
        // Full jitter: uniform in [0, base · 2^(n−1)], 200 ms then 400 ms.
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let mean = |v: &[Duration]| v.iter().map(ms).sum::<f64>() / v.len() as f64;
        assert!(first.iter().all(|d| ms(d) <= 200.0), "{first:?}");
        assert!(second.iter().all(|d| ms(d) <= 400.0), "{second:?}");
        // Spread over the range, not a fixed wait: the means sit near the middle.
        assert!((60.0..140.0).contains(&mean(&first)), "{}", mean(&first));
        assert!((120.0..280.0).contains(&mean(&second)), "{}", mean(&second));
        assert!(first.iter().any(|d| ms(d) < 50.0) && first.iter().any(|d| ms(d) > 150.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sixty_second_outage_with_default_settings() {
        let start = Instant::now();
        let primary = Scripted::new(start + Duration::from_secs(60));
        let backup = Scripted::new(start);
        let route = route(vec![
            target("primary", primary.clone()),
            target("backup", backup.clone()),
        ]);
        let router = Router::new(Arc::new(Metrics::new()));
        let mut served = Vec::new();
        for i in 0..40u64 {
            tokio::time::sleep_until(start + Duration::from_secs(3 * i)).await;
            let target = serve(&router, &route).await;
            served.push((Instant::now() - start, target));
        }
        let calls: Vec<u64> = primary
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - start).as_secs())
            .collect();
        println!("primary called at (s): {calls:?}");
        // Outage: 5 failures open the breaker (3 attempts for the first request, 2 for
        // the second); one probe 30 s later fails and reopens it for 45 s.
        assert_eq!(calls.iter().filter(|&&t| t < 60).count(), 6, "{calls:?}");
        assert!(
            served
                .iter()
                .filter(|(t, _)| t.as_secs() < 60)
                .all(|(_, target)| target == "backup")
        );
        let back = served
            .iter()
            .find(|(_, target)| target == "primary")
            .expect("back on the primary")
            .0;
        println!("back on the primary at {back:?}");
        assert!(
            back > Duration::from_secs(60) && back <= Duration::from_secs(90),
            "back at {back:?}: within 30 s of recovery"
        );
        assert!(
            served
                .iter()
                .filter(|(t, _)| *t > back)
                .all(|(_, target)| target == "primary")
        );
    }
}
