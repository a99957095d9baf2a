//! Bad input gets a clear OpenAI-shaped error, and nothing a client sends can take the
//! gateway down.

use serde_json::{Value, json};

use crate::support::{FakeProvider, Gateway, ask, config_over, expect_error};

async fn post_raw(
    gw: &Gateway,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    gw.http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn gateway() -> (FakeProvider, Gateway) {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["ok"])]).await;
    (fake, gw)
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (fake, gw) = gateway().await;
    let error = expect_error(
        post_raw(&gw, "application/json", "{\"model\": \"chat\",").await,
        400,
    )
    .await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    assert_eq!(fake.total_attempts(), 0);
}

#[tokio::test]
async fn missing_and_wrong_typed_fields_are_named() {
    let (_fake, gw) = gateway().await;
    let cases = [
        (json!({"model": "chat"}), "messages"),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "chat", "messages": [{"content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
            "messages[0].content[0].type",
        ),
        (json!({"model": "chat", "messages": "hello"}), "messages"),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            "max_tokens",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 17}),
            "n",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 9}),
            "temperature",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user"}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "ragway": {"rga": true}}),
            "ragway.rga",
        ),
    ];
    for (body, field) in cases {
        let error = expect_error(gw.chat(body.clone()).await, 400).await;
        assert_eq!(error["param"], field, "for {body}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
}

#[tokio::test]
async fn empty_messages_and_unknown_roles_are_400() {
    let (_fake, gw) = gateway().await;
    let error = expect_error(gw.chat(json!({"model": "chat", "messages": []})).await, 400).await;
    assert_eq!(error["param"], "messages");
    let error = expect_error(
        gw.chat(json!({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}))
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "messages[0].role");
    assert!(error["message"].as_str().unwrap().contains("wizard"));
}

#[tokio::test]
async fn unknown_model_is_404() {
    let (fake, gw) = gateway().await;
    let error = expect_error(gw.chat(ask("gpt-17", "hi")).await, 404).await;
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
    assert!(error["message"].as_str().unwrap().contains("gpt-17"));
    assert_eq!(fake.total_attempts(), 0);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let fake = FakeProvider::start().await;
    let mut toml = config_over(&fake, &[("chat", &["ok"])]);
    toml.push_str("\n[server]\nmax_body_bytes = 4096\n");
    let gw = Gateway::start(&toml).await;
    let big = ask("chat", &"x".repeat(5000));
    let error = expect_error(gw.chat(big).await, 413).await;
    assert_eq!(error["code"], "payload_too_large");
    assert!(gw.chat(ask("chat", "small")).await.status().is_success());
    // The default limit is 4 MiB.
    let (_fake, gw) = gateway().await;
    let error = expect_error(
        gw.chat(ask("chat", &"x".repeat(4 * 1024 * 1024 + 1))).await,
        413,
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains("4194304"));
    assert!(
        gw.chat(ask("chat", &"x".repeat(1024 * 1024)))
            .await
            .status()
            .is_success()
    );
}

#[tokio::test]
async fn a_wrong_content_type_is_415() {
    let (_fake, gw) = gateway().await;
    let body = serde_json::to_vec(&ask("chat", "hi")).unwrap();
    let error = expect_error(post_raw(&gw, "text/plain", body.clone()).await, 415).await;
    assert_eq!(error["code"], "unsupported_media_type");
    expect_error(
        post_raw(&gw, "application/x-www-form-urlencoded", body.clone()).await,
        415,
    )
    .await;
    let ok = post_raw(&gw, "application/json; charset=utf-8", body).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn invalid_utf8_is_400() {
    let (_fake, gw) = gateway().await;
    let mut body = br#"{"model":"chat","messages":[{"role":"user","content":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0x80]);
    body.extend_from_slice(br#""}]}"#);
    let error = expect_error(post_raw(&gw, "application/json", body).await, 400).await;
    assert!(
        error["message"].as_str().unwrap().contains("UTF-8"),
        "{error}"
    );
}

#[tokio::test]
async fn every_route_down_is_503_with_retry_after() {
    let fake = FakeProvider::start().await;
    // One attempt per target keeps this about the answer, not the retries.
    let toml = crate::support::config_with(
        &fake,
        "retry.attempts = 1",
        &[
            ("chat", &["status-503", "status-500"]),
            ("slow-down", &["retry-after-7"]),
        ],
    );
    let gw = Gateway::start(&toml).await;
    let response = gw.chat(ask("chat", "hi")).await;
    assert_eq!(response.headers()["retry-after"], "2", "the default hint");
    let error = expect_error(response, 503).await;
    assert_eq!(error["code"], "all_targets_failed");
    assert_eq!(fake.attempts("status-503"), 1);
    assert_eq!(fake.attempts("status-500"), 1);
    let response = gw.chat(ask("slow-down", "hi")).await;
    assert_eq!(
        response.headers()["retry-after"],
        "7",
        "the provider's own hint"
    );
    expect_error(response, 503).await;
}

#[tokio::test]
async fn unknown_paths_and_methods_get_openai_errors() {
    let (_fake, gw) = gateway().await;
    let error = expect_error(gw.get("/v1/completions/nothing").await, 404).await;
    assert_eq!(error["code"], "not_found");
    let error = expect_error(gw.get("/v1/chat/completions").await, 405).await;
    assert_eq!(error["code"], "method_not_allowed");
}

#[tokio::test]
async fn garbage_never_takes_the_gateway_down() {
    let (fake, gw) = gateway().await;
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"42".to_vec(),
        b"\"text\"".to_vec(),
        b"{".to_vec(),
        b"{}".to_vec(),
        b"{\"model\":null,\"messages\":null}".to_vec(),
        b"{\"model\":\"chat\",\"messages\":[null]}".to_vec(),
        b"{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":[null]}]}".to_vec(),
        b"{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}".to_vec(),
        b"{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1e400}".to_vec(),
        b"{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}".to_vec(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        format!("{{\"model\":\"chat\",\"messages\":{}1{}}}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        vec![0u8; 1000],
        (0..=255u8).cycle().take(5000).collect(),
    ];
    // Deterministic pseudo-random bytes and mutations of a good body.
    let good = serde_json::to_vec(&ask("chat", "hello")).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut body = good.clone();
        let at = (seed as usize) % body.len();
        body[at] = (seed >> 32) as u8;
        body.truncate(body.len() - (seed as usize >> 8) % 8);
        bodies.push(body);
    }
    for body in bodies {
        let response = post_raw(&gw, "application/json", body.clone()).await;
        let status = response.status().as_u16();
        assert!(
            matches!(status, 200 | 400 | 404),
            "unexpected {status} for {:?}",
            String::from_utf8_lossy(&body)
        );
        if status != 200 {
            let error: Value = response.json().await.expect("error is JSON");
            assert!(error["error"]["message"].is_string());
        }
    }
    let response = gw.chat(ask("chat", "still there?")).await;
    assert_eq!(response.status(), 200);
    let before = fake.attempts("ok");
    assert!(before >= 1);
}
