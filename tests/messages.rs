//! `POST /v1/messages` (Anthropic's Messages API) over HTTP: the key in
//! `x-api-key`, Anthropic-shaped errors, what is refused, and one audit row per
//! call on its route. (The anthropic SDK itself: tests/python_sdk.rs.)

use std::sync::Arc;

use serde_json::{Value, json};

use crate::support::{FakeProvider, Gateway, MemoryAudit, config_over};

async fn send(gw: &Gateway, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = gw
        .http()
        .post(format!("{}/v1/messages", gw.url))
        .header("anthropic-version", "2023-06-01")
        .json(&body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn messages_take_the_key_in_x_api_key_and_answer_errors_in_anthropics_shape() {
    let fake = FakeProvider::start().await;
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let mut toml = config_over(&fake, &[("chat", &["echo"])]);
    toml.push_str("\n[[auth.keys]]\nid = \"a\"\ntenant = \"acme\"\nkey_env = \"KEY_A\"\n");
    let gw = Gateway::start_customized(&toml, &[("KEY_A", "key-a")], move |p| p.audit = sink).await;
    let ask = json!({"model": "chat", "max_tokens": 32, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Call 13912345678"}]});
    let (status, answer) = send(&gw, Some("key-a"), ask.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["content"][0]["text"], "Call 13912345678");
    assert_eq!(answer["stop_reason"], "end_turn");
    assert!(answer["id"].as_str().unwrap().starts_with("msg_"));
    let seen = fake.last_request().body;
    assert_eq!(
        seen["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert!(!seen.to_string().contains("13912345678"));

    let (status, refused) = send(&gw, Some("wrong"), ask.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(refused["type"], "error");
    assert_eq!(
        refused["error"]["type"], "authentication_error",
        "{refused}"
    );
    let (status, _) = send(&gw, None, ask.clone()).await;
    assert_eq!(status, 401);

    for (body, says) in [
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
            "max_tokens",
        ),
        (
            json!({"model": "chat", "max_tokens": 8, "messages": []}),
            "messages",
        ),
        (
            json!({"model": "chat", "max_tokens": 8, "tools": [],
            "messages": [{"role": "user", "content": "hi"}]}),
            "tool use",
        ),
        (
            json!({"model": "chat", "max_tokens": 8, "messages": [{"role": "user",
            "content": [{"type": "image", "source": {}}]}]}),
            "image",
        ),
        (
            json!({"model": "chat", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}),
            "role",
        ),
    ] {
        let (status, refused) = send(&gw, Some("key-a"), body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(refused["error"]["type"], "invalid_request_error");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let (status, missing) = send(
        &gw,
        Some("key-a"),
        json!({"model": "nope", "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(
        (status, missing["error"]["type"].as_str()),
        (404, Some("not_found_error"))
    );

    gw.idle().await;
    let answered: Vec<_> = audit
        .records()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    assert_eq!(answered.len(), 1);
    assert_eq!(&*answered[0].origin.route, "/v1/messages");
    assert_eq!(answered[0].key_id.as_deref(), Some("a"));
    assert_eq!(answered[0].pii, [("mobile", 1)]);
}
