//! `POST /v1/responses` (OpenAI's Responses API) over HTTP: personal data in
//! every text field, failover, the key's limits, one audit row per call on its
//! route, the typed events of a stream cut upstream, and what is refused. (The
//! openai SDK itself: tests/python_sdk.rs.)

use std::sync::Arc;

use serde_json::{Value, json};

use crate::support::keys::{ADMIN, new_key, sqlite_url};
use crate::support::{FakeProvider, Gateway, MemoryAudit, TempDir, config_over};

async fn send(gw: &Gateway, key: &str, body: Value) -> reqwest::Response {
    gw.http()
        .post(format!("{}/v1/responses", gw.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A stream's events: (name, body) in order.
async fn events(response: reqwest::Response) -> Vec<(String, Value)> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let name = event
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_else(|| panic!("an event without its name: {event}"));
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("an event without data: {event}"));
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn responses_carry_every_text_field_through_the_pipeline() {
    let fake = FakeProvider::start().await;
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let mut toml = config_over(
        &fake,
        &[("chat", &["status-503", "echo"]), ("tools", &["tool-echo"])],
    );
    toml.push_str("\n[[auth.keys]]\nid = \"a\"\ntenant = \"acme\"\nkey_env = \"KEY_A\"\n");
    let gw = Gateway::start_customized(&toml, &[("KEY_A", "key-a")], move |p| p.audit = sink).await;

    // A mobile in the instructions, a message, a call's arguments and its output.
    let ask = json!({"model": "chat", "instructions": "My number is 13912345678.",
    "input": [
        {"type": "function_call", "call_id": "c1", "name": "lookup",
         "arguments": "{\"phone\": \"13912345679\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "owner of 13912345670"},
        {"role": "user", "content": [{"type": "input_text", "text": "Call 13912345671"}]},
    ]});
    let answer = send(&gw, "key-a", ask.clone()).await;
    assert_eq!(answer.status(), 200);
    // The first target fails, the next answers.
    assert_eq!(answer.headers()["x-ragway-target"], "fake:echo");
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed");
    assert!(
        answer["id"].as_str().unwrap().starts_with("resp_"),
        "{answer}"
    );
    assert_eq!(
        answer["output"][0]["content"][0]["text"],
        "Call 13912345671"
    );
    assert_eq!(answer["instructions"], "My number is 13912345678.");
    assert!(answer["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let seen = fake.last_request().body;
    let sent = seen.to_string();
    for number in ["13912345678", "13912345679", "13912345670", "13912345671"] {
        assert!(
            !sent.contains(number),
            "{number} reached the provider: {sent}"
        );
    }
    assert_eq!(seen["messages"][0]["role"], "system", "{seen}");
    assert_eq!(seen["messages"][1]["tool_calls"][0]["id"], "c1", "{seen}");
    assert_eq!(seen["messages"][2]["role"], "tool", "{seen}");

    // A call streamed back: its arguments restored in the events.
    let streamed = send(
        &gw,
        "key-a",
        json!({"model": "tools", "stream": true, "input": "Ring 13912345672",
            "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]}),
    )
    .await;
    assert_eq!(streamed.status(), 200);
    let events = events(streamed).await;
    let arguments: String = events
        .iter()
        .filter(|(name, _)| name == "response.function_call_arguments.delta")
        .map(|(_, e)| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, json!({"query": "Ring 13912345672"}).to_string());
    let (last, completed) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(completed["response"]["output"][0]["arguments"], arguments);
    assert_eq!(completed["response"]["output"][0]["call_id"], "call_1");
    let numbers: Vec<u64> = events
        .iter()
        .map(|(_, e)| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    assert!(!fake.last_request().body.to_string().contains("13912345672"));

    gw.idle().await;
    let records = audit.records();
    let answered: Vec<_> = records.iter().filter(|r| r.status == 200).collect();
    assert_eq!(answered.len(), 2, "one row per call");
    assert!(answered.iter().all(|r| &*r.origin.route == "/v1/responses"));
    assert!(answered.iter().all(|r| r.key_id.as_deref() == Some("a")));
    assert_eq!(answered[0].pii, [("mobile", 4)]);
}

#[tokio::test]
async fn a_response_cut_upstream_fails_in_its_own_events() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["cut-after-5"])]).await;
    let response = send(
        &gw,
        "unused",
        json!({"model": "chat", "stream": true, "input": "count"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let events = events(response).await;
    let (last, failed) = events.last().unwrap();
    assert_eq!(last, "response.failed", "{events:?}");
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(failed["response"]["error"]["code"], "server_error");
    // What came before the cut is kept, marked incomplete.
    let kept = failed["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    let delivered: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .map(|(_, e)| e["delta"].as_str().unwrap())
        .collect();
    assert!(
        !kept.is_empty() && kept == delivered,
        "{kept:?} vs {delivered:?}"
    );
    assert_eq!(failed["response"]["output"][0]["status"], "incomplete");
}

#[tokio::test]
async fn a_response_is_admitted_against_the_keys_limits() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let mut config = config_over(&fake, &[("chat", &["ok"])]);
    config.push_str("\n[auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase_env = \"DB\"\n");
    let gw = Gateway::start_with_env(&config, &[("ADMIN", ADMIN), ("DB", &sqlite_url(&dir))]).await;
    let key = new_key(&gw, json!({"tenant": "t", "limits": {"rpm": 1}})).await;
    let ask = json!({"model": "chat", "input": "hi"});
    assert_eq!(send(&gw, &key, ask.clone()).await.status(), 200);
    let refused = send(&gw, &key, ask).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(fake.attempts("ok"), 1);
}

#[tokio::test]
async fn what_a_response_cannot_carry_is_refused_by_name() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["echo"])]).await;
    for (body, param) in [
        (json!({"model": "chat"}), "input"),
        (json!({"model": "chat", "input": ""}), "input"),
        (json!({"model": "chat", "input": []}), "input"),
        (json!({"model": "chat", "input": 5}), "input"),
        (
            json!({"model": "chat", "input": "hi", "store": true}),
            "store",
        ),
        (
            json!({"model": "chat", "input": "hi", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": "chat", "input": "hi", "background": true}),
            "background",
        ),
        (
            json!({"model": "chat", "input": "hi", "modalities": ["text"]}),
            "modalities",
        ),
        (
            json!({"model": "chat", "input": "hi", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "chat", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "chat", "input": [{"role": "robot", "content": "hi"}]}),
            "input[0].role",
        ),
        (
            json!({"model": "chat", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            "input[0].content[0].type",
        ),
        (
            json!({"model": "chat", "input": "hi", "text": {"format": {"type": "yaml"}}}),
            "text.format.type",
        ),
        (
            json!({"model": "chat", "input": "hi", "temperature": "hot"}),
            "",
        ),
    ] {
        let refused = send(&gw, "unused", body.clone()).await;
        assert_eq!(refused.status(), 400, "{body}");
        let error: Value = refused.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        if !param.is_empty() {
            assert_eq!(error["error"]["param"], param, "{body}: {error}");
        }
    }
    let missing = send(&gw, "unused", json!({"model": "nope", "input": "hi"})).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        fake.requests().len(),
        0,
        "nothing refused reached the provider"
    );
}
