//! `POST /v1/completions`, the legacy prompt completion, through the chat
//! pipeline: whole and streamed in its own shape, personal data replaced upstream
//! and restored, failover, one audit row on its route, and what it refuses.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::support::{FakeProvider, Gateway, MemoryAudit, Sse, config_over, expect_error};

async fn complete(gw: &Gateway, body: Value) -> reqwest::Response {
    gw.http()
        .post(format!("{}/v1/completions", gw.url))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_prompt_is_completed_through_the_chat_pipeline() {
    let fake = FakeProvider::start().await;
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    // The first target fails: the completion fails over like a chat.
    let toml = config_over(&fake, &[("chat", &["status-503", "echo"])]);
    let gw = Gateway::start_customized(&toml, &[], move |p| p.audit = sink).await;
    let prompt = "Call 13912345678 back";
    let whole = complete(
        &gw,
        json!({"model": "chat", "prompt": prompt, "max_tokens": 16}),
    )
    .await;
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["x-ragway-target"], "fake:echo");
    let answer: Value = whole.json().await.unwrap();
    assert_eq!(answer["object"], "text_completion");
    assert!(
        answer["id"].as_str().unwrap().starts_with("cmpl-"),
        "{answer}"
    );
    assert_eq!(answer["choices"][0]["text"], prompt);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert!(answer["usage"]["completion_tokens"].as_u64().is_some());
    let seen = fake.last_request().body;
    assert_eq!(seen["messages"][0]["role"], "user");
    assert!(!seen.to_string().contains("13912345678"), "{seen}");
    assert_eq!(seen["max_tokens"], 16);

    let streamed = complete(
        &gw,
        json!({"model": "chat", "prompt": [prompt], "stream": true}),
    )
    .await;
    assert_eq!(streamed.status(), 200);
    let sse = Sse::read(streamed).await;
    assert!(sse.done);
    let text: String = sse
        .events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, prompt);
    assert!(
        sse.events.iter().all(|e| e["object"] == "text_completion"),
        "{}",
        sse.raw
    );
    assert_eq!(
        sse.events.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    gw.idle().await;
    let records = audit.records();
    assert_eq!(records.len(), 2, "one row per call");
    assert!(
        records
            .iter()
            .all(|r| &*r.origin.route == "/v1/completions")
    );
    assert!(records.iter().all(|r| r.pii == [("mobile", 1)]));
}

#[tokio::test]
async fn what_a_chat_model_cannot_do_is_refused_naming_the_field() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config_over(&fake, &[("chat", &["ok"])])).await;
    for (body, param) in [
        (
            json!({"model": "chat", "prompt": "a", "suffix": "b"}),
            "suffix",
        ),
        (
            json!({"model": "chat", "prompt": "a", "echo": true}),
            "echo",
        ),
        (
            json!({"model": "chat", "prompt": "a", "logprobs": 2}),
            "logprobs",
        ),
        (
            json!({"model": "chat", "prompt": "a", "best_of": 3}),
            "best_of",
        ),
        (json!({"model": "chat", "prompt": ["a", "b"]}), "prompt"),
        (json!({"model": "chat", "prompt": [1, 2, 3]}), "prompt"),
        (json!({"model": "chat"}), "prompt"),
        (
            json!({"model": "chat", "prompt": "a", "frobnicate": 1}),
            "frobnicate",
        ),
    ] {
        let error = expect_error(complete(&gw, body.clone()).await, 400).await;
        assert_eq!(error["param"], param, "{body}: {error}");
    }
    let unknown = complete(&gw, json!({"model": "nope", "prompt": "a"})).await;
    expect_error(unknown, 404).await;
    assert_eq!(fake.total_attempts(), 0);
    // The defaults a legacy client sends are fine.
    let fine = json!({"model": "chat", "prompt": "a", "echo": false, "best_of": 1, "logprobs": null, "suffix": null});
    assert_eq!(complete(&gw, fine).await.status(), 200);
}
