//! The provider client against the quirks of the providers users call: stream
//! formats, moderation, reasoning, per-model URLs, error bodies, and API keys.

use serde_json::Value;

use crate::support::fake::OK_TOKENS;
use crate::support::{FakeProvider, Gateway, Sse, ask, ask_stream};

#[tokio::test]
async fn infini_bare_json_stream_is_read() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["bare-json"])]).await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "hi")).await).await;
    assert_eq!(sse.text(), OK_TOKENS.concat());
    assert_eq!(sse.finish_reasons(), ["stop"]);
    assert!(
        sse.done,
        "the client gets a proper SSE end although upstream sent none"
    );
    for event in &sse.events {
        assert_eq!(
            event["object"], "chat.completion.chunk",
            "filled in for every chunk"
        );
        assert!(event["created"].as_u64().unwrap() > 1_600_000_000);
    }
}

#[tokio::test]
async fn a_stream_without_done_is_finished_after_its_finish_chunk() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["no-done"])]).await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "hi")).await).await;
    assert!(sse.done);
    assert!(sse.error().is_none());
    assert_eq!(sse.text(), OK_TOKENS.concat());
}

#[tokio::test]
async fn blocked_ends_the_stream_with_content_filter() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["blocked"])]).await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "hi")).await).await;
    assert_eq!(sse.finish_reasons(), ["content_filter"]);
    assert_eq!(
        sse.text(),
        OK_TOKENS[..2].concat(),
        "nothing after the block"
    );
    assert!(
        !sse.raw.contains("\"blocked\""),
        "the flag itself is not passed on"
    );
    let whole: Value = gw.chat(ask("chat", "hi")).await.json().await.unwrap();
    assert_eq!(whole["choices"][0]["finish_reason"], "content_filter");
    assert!(whole.get("blocked").is_none());
}

#[tokio::test]
async fn reasoning_content_passes_through() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("r1", &["reasoning"])]).await;
    let whole: Value = gw.chat(ask("r1", "think")).await.json().await.unwrap();
    assert_eq!(
        whole["choices"][0]["message"]["reasoning_content"],
        "Let me think."
    );
    assert_eq!(
        whole["choices"][0]["message"]["content"],
        OK_TOKENS.concat()
    );
    let sse = Sse::read(gw.chat(ask_stream("r1", "think")).await).await;
    let reasoning: String = sse
        .events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Let me think.");
    assert_eq!(sse.text(), OK_TOKENS.concat());
}

#[tokio::test]
async fn the_search_suffix_reaches_the_provider_untouched() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("deepseek-v3-search", &["ok?search"])]).await;
    let response = gw.chat(ask("deepseek-v3-search", "news?")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok?search");
    let seen = fake.last_request();
    assert_eq!(seen.body["model"], "ok?search");
    assert_eq!(seen.path, "/v1/chat/completions");
}

#[tokio::test]
async fn a_per_model_url_template_is_expanded() {
    let fake = FakeProvider::start().await;
    let toml = format!(
        "[providers.infini]\nkind = \"openai\"\nbase_url = \"http://{}/maas/{{model}}/nvidia\"\n\
         [models.chat]\ntargets = [\"infini:bare-json\"]\n",
        fake.addr
    );
    let gw = Gateway::start(&toml).await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "hi")).await).await;
    assert_eq!(sse.text(), OK_TOKENS.concat());
    assert_eq!(
        fake.last_request().path,
        "/maas/bare-json/nvidia/chat/completions"
    );
}

#[tokio::test]
async fn the_api_key_is_sent_as_a_bearer_and_never_shown() {
    let fake = FakeProvider::start().await;
    let toml = format!(
        "[providers.qiniu]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"QINIU_API_KEY\"\n\
         [models.chat]\ntargets = [\"qiniu:ok\"]\n",
        fake.base_url()
    );
    let env = [("QINIU_API_KEY", "sk-qiniu-very-secret")];
    let gw = Gateway::start_with_env(&toml, &env).await;
    assert_eq!(gw.chat(ask("chat", "hi")).await.status(), 200);
    assert_eq!(
        fake.last_request().authorization.as_deref(),
        Some("Bearer sk-qiniu-very-secret")
    );
    let config =
        ragway::config::Config::from_toml(&toml, &ragway::config::Env::from_pairs(env)).unwrap();
    assert!(!format!("{config:?}").contains("very-secret"));
    assert!(!config.to_redacted_toml().contains("very-secret"));
    assert!(config.to_redacted_toml().contains("QINIU_API_KEY"));
}

#[tokio::test]
async fn provider_errors_are_typed_and_reported() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(
        &fake,
        &[
            ("price", &["price-not-set"]),
            ("auth", &["auth-missing"]),
            ("ds-auth", &["deepseek-40101"]),
            ("ds-rate", &["deepseek-42901"]),
            ("in-body", &["error-body-200"]),
        ],
    )
    .await;
    // Transient errors are reported with the provider's own words and code.
    for (alias, text) in [("ds-rate", "42901"), ("in-body", "50003")] {
        let response = gw.chat(ask(alias, "hi")).await;
        assert_eq!(response.status(), 503, "{alias}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(text), "{alias}: {message}");
    }
    // Configuration errors are recognised from each provider's shape (Qiniu's
    // "price of the model is not set", its "authorization header missing",
    // DeepSeek's 40101) and counted; their text stays in the gateway's log, since
    // such bodies can quote part of a key.
    for (alias, provider_text) in [
        ("price", "the price of the model is not set"),
        ("auth", "authorization header missing"),
        ("ds-auth", "deepseek error 40101"),
    ] {
        let response = gw.chat(ask(alias, "hi")).await;
        assert_eq!(response.status(), 503, "{alias}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("misconfigured"), "{alias}: {message}");
        assert!(!message.contains(provider_text), "{alias}: {message}");
    }
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    for target in ["price-not-set", "auth-missing", "deepseek-40101"] {
        let line = format!("ragway_config_errors_total{{target=\"fake:{target}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    assert_eq!(
        fake.attempts("price-not-set"),
        1,
        "a configuration error is not retried"
    );
    assert_eq!(fake.attempts("deepseek-42901"), 3, "a rate limit is");
}

#[tokio::test]
async fn a_content_policy_refusal_goes_back_to_the_client() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["content-filter", "ok"])]).await;
    let response = gw.chat(ask("chat", "something bad")).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "content_filter");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("inappropriate content")
    );
    assert_eq!(fake.attempts("ok"), 0, "a refusal is not failed over");
}
