//! The HTTP API's happy paths: chat (whole and streamed), models, health, metrics,
//! request ids, and client keys.

use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::fake::OK_TOKENS;
use crate::support::{FakeProvider, Gateway, Sse, ask, ask_stream, config_over};

#[tokio::test]
async fn chat_returns_the_answer_and_names_the_target() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["ok"])]).await;
    let response = gw.chat(ask("chat", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    assert_eq!(response.headers()["x-ragway-attempts"], "1");
    assert_eq!(response.headers()["x-ragway-cache"], "bypass");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake:ok");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["content"], OK_TOKENS.concat());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 6);
    assert_eq!(fake.attempts("ok"), 1);
    let seen = fake.last_request();
    assert_eq!(
        seen.body["model"], "ok",
        "the upstream model is sent, not the alias"
    );
    // A whole answer is streamed from upstream and assembled, so that a silent
    // provider is noticed within the first-token deadline.
    assert_eq!(seen.body["stream"], true);
}

#[tokio::test]
async fn a_provider_that_cannot_stream_is_asked_for_whole_answers() {
    let fake = FakeProvider::start().await;
    let toml = crate::support::config_with(
        &fake,
        "stream_upstream = false",
        &[("chat", &["reasoning"])],
    );
    let gw = Gateway::start(&toml).await;
    let body: Value = gw.chat(ask("chat", "hi")).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], OK_TOKENS.concat());
    assert_eq!(
        body["choices"][0]["message"]["reasoning_content"],
        "Let me think."
    );
    assert_eq!(fake.last_request().body["stream"], false);
}

#[tokio::test]
async fn streaming_sends_chunks_then_done() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["ok"])]).await;
    let response = gw.chat(ask_stream("chat", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    let sse = Sse::read(response).await;
    assert!(sse.done, "ends with [DONE]: {}", sse.raw);
    assert_eq!(sse.text(), OK_TOKENS.concat());
    assert_eq!(sse.finish_reasons(), ["stop"]);
    let ids: std::collections::BTreeSet<_> =
        sse.events.iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "one id for the whole stream");
    for event in &sse.events {
        assert_eq!(event["object"], "chat.completion.chunk");
        assert_eq!(event["model"], "fake:ok");
    }
    assert!(
        sse.events.iter().all(|e| e.get("usage").is_none()),
        "no usage chunk unless asked for"
    );
    // ragway asks for usage upstream anyway, for its own accounting.
    assert_eq!(
        fake.last_request().body["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn chunks_reach_the_client_as_they_arrive() {
    let fake = FakeProvider::start().await;
    // Six tokens, 300 ms apart: the whole answer takes about two seconds.
    let gw = Gateway::over(&fake, &[("chat", &["drip-300"])]).await;
    let started = std::time::Instant::now();
    let mut response = gw.chat(ask_stream("chat", "hi")).await;
    let mut first_token_at = None;
    let mut body = String::new();
    while let Some(piece) = response.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&piece));
        if first_token_at.is_none() && body.contains("\"content\":\"Hello\"") {
            first_token_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let first = first_token_at.expect("the first token arrived");
    assert!(total.as_millis() >= 1500, "the fake drips: {total:?}");
    assert!(
        first.as_millis() < 1000,
        "the first token is forwarded at once, not buffered: {first:?} of {total:?}"
    );
}

#[tokio::test]
async fn include_usage_adds_the_usage_chunk() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["ok"])]).await;
    let mut body = ask_stream("chat", "hi");
    body["stream_options"] = json!({"include_usage": true});
    let sse = Sse::read(gw.chat(body).await).await;
    assert!(sse.done);
    let usage: Vec<_> = sse
        .events
        .iter()
        .filter(|e| e.get("usage").is_some())
        .collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["usage"]["completion_tokens"], 6);
    assert_eq!(usage[0]["choices"], json!([]));
}

#[tokio::test]
async fn client_fields_pass_through_to_the_provider() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["echo"])]).await;
    let body = json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
            ]}
        ],
        "temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "stop": ["\n\n"], "seed": 7, "n": 1,
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "user": "alice",
        "enable_thinking": false,
        "ragway": {"rag": false}
    });
    let response = gw.chat(body.clone()).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "what is this?");
    let seen = fake.last_request().body;
    for field in [
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "seed",
        "n",
        "tools",
        "tool_choice",
        "response_format",
        "user",
        "enable_thinking",
    ] {
        assert_eq!(seen[field], body[field], "{field} passes through");
    }
    assert!(
        seen.get("ragway").is_none(),
        "ragway's own options stay home"
    );
}

#[tokio::test]
async fn models_lists_the_aliases() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["ok"]), ("deepseek-v3", &["ok"])]).await;
    let list: Value = gw.get("/v1/models").await.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat", "deepseek-v3"]);
    let one: Value = gw.get("/v1/models/deepseek-v3").await.json().await.unwrap();
    assert_eq!(one["object"], "model");
    let missing = gw.get("/v1/models/nope").await;
    assert_eq!(missing.status(), 404);
    let err: Value = missing.json().await.unwrap();
    assert_eq!(err["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["ok"])]).await;
    assert_eq!(gw.get("/healthz").await.status(), 200);
    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    gw.chat(ask("chat", "hi")).await;
    gw.chat(ask_stream("chat", "hi"))
        .await
        .text()
        .await
        .unwrap();
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            r#"ragway_requests_total{model="chat",route="/v1/chat/completions",status="200"} 2"#
        ),
        "{metrics}"
    );
    for name in [
        "ragway_request_duration_seconds_bucket",
        "ragway_upstream_duration_seconds_bucket{target=\"fake:ok\"",
        "ragway_time_to_first_token_seconds_bucket{model=\"chat\"",
        // The process series dashboards expect.
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let resident: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(resident > 1e6, "a real reading: {resident} bytes");
    gw.state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        gw.get("/readyz").await.status(),
        503,
        "a draining replica is not ready"
    );
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["ok"])]).await;
    let response = gw
        .http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-request-id", "trace-abc-123")
        .json(&ask("chat", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-trace-abc-123");
    // An id with spaces or control characters is replaced, not echoed into logs.
    let response = gw
        .http()
        .get(format!("{}/healthz", gw.url))
        .header("x-request-id", "bad id\twith tab")
        .send()
        .await
        .unwrap();
    let made = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(made.len(), 36, "a fresh UUID: {made}");
    let error = gw.get("/v1/models/nope").await;
    assert!(
        error.headers().contains_key("x-request-id"),
        "errors carry it too"
    );
}

#[tokio::test]
async fn client_keys_map_to_tenants() {
    let fake = FakeProvider::start().await;
    let mut toml = config_over(&fake, &[("chat", &["ok"])]);
    toml.push_str(
        "\n[[auth.keys]]\nid = \"bot\"\ntenant = \"acme\"\nkey_env = \"ACME_KEY\"\n\n\
         [[auth.keys]]\nid = \"hashed\"\ntenant = \"globex\"\n\
         sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n",
    );
    let gw = Gateway::start_with_env(&toml, &[("ACME_KEY", "sk-acme-secret")]).await;
    let post = |key: Option<&'static str>| {
        let mut request = gw
            .http()
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&ask("chat", "hi"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move { request.send().await.unwrap() }
    };
    let missing = post(None).await;
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(post(Some("sk-wrong")).await.status(), 401);
    assert_eq!(post(Some("sk-acme-secret")).await.status(), 200);
    assert_eq!(
        post(Some("test")).await.status(),
        200,
        "sha256 of `test` is configured"
    );
    let models = gw.get("/v1/models").await;
    assert_eq!(models.status(), 401, "the API needs a key");
    assert_eq!(gw.get("/healthz").await.status(), 200, "probes do not");
}

/// The router alone, without a socket: `app(state)` is a plain tower service.
#[tokio::test]
async fn the_router_serves_in_process() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["ok"])]).await;
    let app = ragway::app(gw.state.clone());
    let request = axum::http::Request::get("/v1/models")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let list: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(list["data"][0]["id"], "chat");
}
