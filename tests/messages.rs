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
            json!({"model": "chat", "max_tokens": 8, "tools": [{"type": "web_search_20250305",
            "name": "web_search"}], "messages": [{"role": "user", "content": "hi"}]}),
            "Anthropic's own tools",
        ),
        (
            json!({"model": "chat", "max_tokens": 8, "messages": [{"role": "user",
            "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
            "image",
        ),
        (
            json!({"model": "chat", "max_tokens": 8, "messages": [{"role": "user",
            "content": [{"type": "document", "source": {}}]}]}),
            "document",
        ),
        (
            json!({"model": "chat", "max_tokens": 8, "tool_choice": {"type": "maybe"},
            "messages": [{"role": "user", "content": "hi"}]}),
            "tool_choice",
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

/// Tool use both ways: the provider is asked with function tools, the assistant's
/// tool uses and the user's tool results as chat has them; its call comes back
/// as a `tool_use` block, whole and streamed, with personal data restored.
#[tokio::test]
async fn tool_use_is_translated_both_ways() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("tools", &["tool-echo"]), ("chat", &["echo"])]).await;
    let tools = json!([{"name": "lookup", "description": "Looks it up.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]);
    let ask = json!({"model": "tools", "max_tokens": 64, "tools": tools,
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [{"role": "user", "content": "Ring 13912345678"}]});
    let (status, answer) = send(&gw, None, ask.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stop_reason"], "tool_use");
    assert_eq!(
        answer["content"],
        json!([{"type": "tool_use", "id": "call_1", "name": "lookup",
            "input": {"query": "Ring 13912345678"}}])
    );
    let seen = fake.last_request().body;
    assert_eq!(seen["tools"][0]["function"]["name"], "lookup", "{seen}");
    assert_eq!(
        seen["tools"][0]["function"]["parameters"],
        tools[0]["input_schema"]
    );
    assert_eq!(seen["tool_choice"], "required");
    assert_eq!(seen["parallel_tool_calls"], false);

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let text = gw
        .http()
        .post(format!("{}/v1/messages", gw.url))
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let start = events
        .iter()
        .find(|e| e["type"] == "content_block_start")
        .unwrap();
    assert_eq!(start["content_block"]["type"], "tool_use", "{text}");
    assert_eq!(start["content_block"]["id"], "call_1");
    let json: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "input_json_delta")
        .map(|e| e["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        json!({"query": "Ring 13912345678"})
    );
    let stop = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use", "{text}");

    // The next turn: the assistant's tool use and the user's result.
    let (status, answer) = send(
        &gw,
        None,
        json!({"model": "chat", "max_tokens": 64, "tools": tools, "messages": [
            {"role": "user", "content": "Ring 13912345678"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "call_1", "name": "lookup",
                 "input": {"query": "Ring 13912345678"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1",
                 "content": [{"type": "text", "text": "Owner: 13912345679"}]},
                {"type": "text", "text": "And now?"}]},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["content"][0]["text"], "And now?");
    let seen = fake.last_request().body;
    let messages = seen["messages"].as_array().unwrap();
    assert_eq!(messages[1]["content"], "Looking.", "{seen}");
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_1", "{seen}");
    assert_eq!(messages[2]["role"], "tool", "{seen}");
    assert_eq!(messages[2]["tool_call_id"], "call_1", "{seen}");
    assert_eq!(messages[3]["content"], "And now?", "{seen}");
    assert!(!seen.to_string().contains("1391234567"), "{seen}");
}
