//! Speech recognition and synthesis and OCR (`/v1/voice/asr`, `/v1/voice/tts`,
//! `/v1/images/ocr`), passed through to their aliases' targets: the provider's
//! answer as it sent it, failover, the recognised text sanitised in the audit
//! row, text with personal data refused for speech, limits, and bad input.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::fake::HEARD;
use crate::support::keys::{ADMIN, new_key, sqlite_url};
use crate::support::{FakeProvider, Gateway, MemoryAudit, TempDir, config_over, expect_error};

fn voice_config(fake: &FakeProvider) -> String {
    let mut toml = config_over(fake, &[("chat", &["echo"])]);
    toml.push_str(
        "\n[models.asr]\nkind = \"asr\"\ntargets = [\"fake:status-503\", \"fake:asr\"]\n\
         [models.tts]\nkind = \"tts\"\ntargets = [\"fake:tts\"]\n\
         [models.ocr]\nkind = \"ocr\"\ntargets = [\"fake:ocr\"]\n",
    );
    toml
}

async fn post(gw: &Gateway, key: &str, path: &str, body: Value) -> reqwest::Response {
    gw.http()
        .post(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn speech_and_ocr_pass_through_with_failover_and_a_sanitised_record() {
    let fake = FakeProvider::start().await;
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let gw = Gateway::start_customized(&voice_config(&fake), &[], move |p| p.audit = sink).await;

    let heard = post(
        &gw,
        "unused",
        "/v1/voice/asr",
        json!({"model": "asr", "audio": {"format": "mp3", "url": "https://media.example.com/a.mp3"}}),
    )
    .await;
    assert_eq!(heard.status(), 200);
    assert_eq!(heard.headers()["x-ragway-target"], "fake:asr");
    let heard: Value = heard.json().await.unwrap();
    // The provider's own answer: the text as it recognised it.
    assert_eq!(heard["data"]["result"]["text"], HEARD);
    assert_eq!(heard["data"]["audio_info"]["duration"], 2300);
    let seen = fake.last_request();
    assert_eq!(seen.path, "/v1/voice/asr");
    assert_eq!(seen.body["model"], "asr");
    assert_eq!(seen.body["audio"]["url"], "https://media.example.com/a.mp3");
    assert!(
        fake.attempts("status-503") >= 1,
        "the first target was tried"
    );

    let read = post(
        &gw,
        "unused",
        "/v1/images/ocr",
        json!({"model": "ocr", "url": "https://media.example.com/scan.pdf"}),
    )
    .await;
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["text"], HEARD);

    let spoken = post(
        &gw,
        "unused",
        "/v1/voice/tts",
        json!({"model": "tts", "audio": {"voice_type": "tts", "encoding": "mp3"},
            "request": {"text": "您好，欢迎致电"}}),
    )
    .await;
    assert_eq!(spoken.status(), 200);
    let spoken: Value = spoken.json().await.unwrap();
    let audio = base64::engine::general_purpose::STANDARD
        .decode(spoken["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(audio).unwrap(), "AUDIO:您好，欢迎致电");
    assert_eq!(fake.last_request().body["audio"]["speed_ratio"], 1.0);

    gw.idle().await;
    let records = audit.records();
    assert_eq!(records.len(), 3, "one row per call");
    let routes: Vec<&str> = records.iter().map(|r| &*r.origin.route).collect();
    assert_eq!(routes, ["/v1/voice/asr", "/v1/images/ocr", "/v1/voice/tts"]);
    for row in &records[..2] {
        assert_eq!(row.status, 200);
        // The recognised text, its number a placeholder.
        assert!(row.answer.contains("<PHONE_1>"), "{}", row.answer);
        assert!(!row.answer.contains("13912345678"), "{}", row.answer);
        assert_eq!(row.answer_chars, HEARD.chars().count());
        assert!(
            !row.prompt.contains("a.mp3") && !row.prompt.contains("scan.pdf"),
            "{}",
            row.prompt
        );
    }
    assert!(
        records[0].attempts.len() >= 2,
        "the failed attempt is recorded"
    );
    assert!(records[2].prompt.contains("您好"), "{}", records[2].prompt);
}

#[tokio::test]
async fn recognition_takes_its_audio_inline_and_records_its_size_only() {
    let fake = FakeProvider::start().await;
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let gw = Gateway::start_customized(&voice_config(&fake), &[], move |p| p.audit = sink).await;
    // Ten seconds of 16 kHz, 16-bit mono: more than the chat body limit.
    let audio = vec![7u8; 320_000];
    let data = base64::engine::general_purpose::STANDARD.encode(&audio);
    let heard = post(
        &gw,
        "unused",
        "/v1/voice/asr",
        json!({"model": "asr", "audio": {"format": "wav", "data": data}}),
    )
    .await;
    assert_eq!(heard.status(), 200);
    let heard: Value = heard.json().await.unwrap();
    assert_eq!(heard["data"]["result"]["text"], HEARD);
    assert_eq!(heard["data"]["audio_info"]["inline_bytes"], 320_000);
    assert_eq!(fake.last_request().body["audio"]["data"], data);
    gw.idle().await;
    let row = audit.records().pop().unwrap();
    assert!(row.prompt.contains("\"bytes\":320000"), "{}", row.prompt);
    assert!(
        !row.prompt.contains(&data[..64]),
        "the audio is not recorded"
    );
    // Past 16 MiB of audio, the body itself is too large.
    let huge = json!({"model": "asr", "audio": {"format": "wav", "data": "A".repeat(23 << 20)}});
    let refused = expect_error(post(&gw, "unused", "/v1/voice/asr", huge).await, 413).await;
    assert_eq!(refused["code"], "payload_too_large");
    for (audio, param) in [
        (
            json!({"format": "wav", "data": "not base64!"}),
            "audio.data",
        ),
        (
            json!({"format": "wav", "data": "", "url": "https://a.b/c"}),
            "audio.data",
        ),
        (json!({"format": "wav", "data": 12}), "audio.data"),
    ] {
        let refused = post(
            &gw,
            "unused",
            "/v1/voice/asr",
            json!({"model": "asr", "audio": audio}),
        )
        .await;
        assert_eq!(expect_error(refused, 400).await["param"], param);
    }
}

#[tokio::test]
async fn text_with_personal_data_is_not_spoken() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&voice_config(&fake)).await;
    let refused = post(
        &gw,
        "unused",
        "/v1/voice/tts",
        json!({"model": "tts", "audio": {"voice_type": "tts", "encoding": "mp3"},
            "request": {"text": "请回拨 13912345678"}}),
    )
    .await;
    let error = expect_error(refused, 400).await;
    assert_eq!(error["code"], "pii_blocked", "{error}");
    assert!(!error.to_string().contains("13912345678"), "{error}");
    assert_eq!(fake.requests().len(), 0, "nothing reached the provider");
}

#[tokio::test]
async fn speech_is_admitted_against_the_keys_limits() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let mut config = voice_config(&fake);
    config.push_str("\n[auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase_env = \"DB\"\n");
    let gw = Gateway::start_with_env(&config, &[("ADMIN", ADMIN), ("DB", &sqlite_url(&dir))]).await;
    let key = new_key(&gw, json!({"tenant": "t", "limits": {"rpm": 1}})).await;
    let ask = json!({"model": "ocr", "url": "https://media.example.com/scan.png"});
    assert_eq!(
        post(&gw, &key, "/v1/images/ocr", ask.clone())
            .await
            .status(),
        200
    );
    let refused = expect_error(post(&gw, &key, "/v1/images/ocr", ask).await, 429).await;
    assert_eq!(refused["code"], "rate_limit_exceeded");
    assert_eq!(fake.attempts("ocr"), 1);
}

#[tokio::test]
async fn bad_speech_and_ocr_requests_are_refused_by_name() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&voice_config(&fake)).await;
    let long = "字".repeat(10_001);
    for (path, body, param) in [
        (
            "/v1/voice/asr",
            json!({"audio": {"format": "mp3", "url": "https://a.b/c"}}),
            "model",
        ),
        ("/v1/voice/asr", json!({"model": "asr"}), "audio"),
        (
            "/v1/voice/asr",
            json!({"model": "asr", "audio": {"format": "flac", "url": "https://a.b/c"}}),
            "audio.format",
        ),
        (
            "/v1/voice/asr",
            json!({"model": "asr", "audio": {"format": "mp3", "url": "file:///etc/passwd"}}),
            "audio.url",
        ),
        (
            "/v1/voice/asr",
            json!({"model": "asr", "audio": {"format": "mp3", "url": "https://a.b/c", "rate": 8000}}),
            "rate",
        ),
        (
            "/v1/voice/asr",
            json!({"model": "tts", "audio": {"format": "mp3", "url": "https://a.b/c"}}),
            "model",
        ),
        (
            "/v1/voice/tts",
            json!({"model": "tts", "audio": {"voice_type": "v", "encoding": "mp3"}}),
            "request",
        ),
        (
            "/v1/voice/tts",
            json!({"model": "tts", "audio": {"voice_type": "v", "encoding": "aiff"}, "request": {"text": "hi"}}),
            "audio.encoding",
        ),
        (
            "/v1/voice/tts",
            json!({"model": "tts", "audio": {"voice_type": "v", "encoding": "mp3", "speed_ratio": 9}, "request": {"text": "hi"}}),
            "audio.speed_ratio",
        ),
        (
            "/v1/voice/tts",
            json!({"model": "tts", "audio": {"voice_type": "v", "encoding": "mp3"}, "request": {"text": long}}),
            "request.text",
        ),
        (
            "/v1/images/ocr",
            json!({"model": "ocr", "url": "ftp://a.b/c"}),
            "url",
        ),
        (
            "/v1/audio/speech",
            json!({"model": "tts", "input": "hi"}),
            "voice",
        ),
        (
            "/v1/audio/speech",
            json!({"model": "tts", "voice": "v", "input": " "}),
            "input",
        ),
        (
            "/v1/audio/speech",
            json!({"model": "tts", "voice": "v", "input": "hi", "speed": 4}),
            "speed",
        ),
        (
            "/v1/audio/speech",
            json!({"model": "tts", "voice": "v", "input": "hi", "instructions": "whisper"}),
            "instructions",
        ),
        (
            "/v1/audio/speech",
            json!({"model": "asr", "voice": "v", "input": "hi"}),
            "model",
        ),
        (
            "/v1/images/ocr",
            json!({"model": "chat", "url": "https://a.b/c"}),
            "model",
        ),
    ] {
        let error = expect_error(post(&gw, "unused", path, body.clone()).await, 400).await;
        assert_eq!(error["param"], param, "{path} {body}: {error}");
    }
    expect_error(
        post(
            &gw,
            "unused",
            "/v1/images/ocr",
            json!({"model": "nope", "url": "https://a.b/c"}),
        )
        .await,
        404,
    )
    .await;
    let chat = gw
        .chat(json!({"model": "asr", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    let error = expect_error(chat, 400).await;
    assert!(
        error["message"].as_str().unwrap().contains("/v1/voice/asr"),
        "{error}"
    );
    assert_eq!(
        fake.requests().len(),
        0,
        "nothing refused reached the provider"
    );
}
