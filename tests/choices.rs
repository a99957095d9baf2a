//! `n` > 1: several choices, passed to remote targets and generated one after
//! another on the local model; each choice restored, cached and recorded.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{FakeProvider, Gateway, MemoryAudit, Sse, ask, config_over, expect_error};

const PHONE: &str = "13812345678";

fn question() -> String {
    format!("Call me on {PHONE} please")
}

fn asking(n: u32, stream: bool) -> Value {
    let mut body = ask("chat", &question());
    body["n"] = json!(n);
    body["temperature"] = json!(0);
    body["stream"] = json!(stream);
    body
}

/// Each choice's text and finish reason from a stream's events, by index.
fn by_choice(sse: &Sse) -> Vec<(String, Option<String>)> {
    let mut choices: Vec<(String, Option<String>)> = Vec::new();
    for event in &sse.events {
        for choice in event["choices"].as_array().into_iter().flatten() {
            let index = choice["index"].as_u64().unwrap() as usize;
            if choices.len() <= index {
                choices.resize(index + 1, (String::new(), None));
            }
            if let Some(text) = choice["delta"]["content"].as_str() {
                choices[index].0.push_str(text);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                choices[index].1 = Some(reason.to_owned());
            }
        }
    }
    choices
}

async fn with_audit(config: &str) -> (Gateway, Arc<MemoryAudit>) {
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let gw = Gateway::start_customized(config, &[], move |p| p.audit = sink).await;
    (gw, audit)
}

async fn records(audit: &MemoryAudit, count: usize) -> Vec<ragway::audit::CallRecord> {
    for _ in 0..200 {
        let records = audit.records();
        if records.len() >= count {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {count} audit records");
}

#[tokio::test]
async fn remote_choices_are_restored_cached_and_recorded() {
    let fake = FakeProvider::start().await;
    let config = format!(
        "{}\n[cache]\n",
        config_over(&fake, &[("chat", &["choices"])])
    );
    let (gw, audit) = with_audit(&config).await;

    let answer = gw.answer(asking(3, false)).await;
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{answer}");
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(
            choice["message"]["content"],
            format!("choice {i}: {}", question()),
            "each choice has the caller's own number back"
        );
    }
    let sent = fake.last_request().body;
    assert_eq!(sent["n"], 3, "n is passed to the provider");
    assert!(!sent.to_string().contains(PHONE), "{sent}");

    // The same question again: all three choices come from the cache.
    let response = gw.chat(asking(3, false)).await;
    assert_eq!(response.headers()["x-ragway-cache"], "hit-l1");
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["choices"], answer["choices"]);
    assert_eq!(fake.total_attempts(), 1);
    // A different n is a different question.
    let two = gw.answer(asking(2, false)).await;
    assert_eq!(two["choices"].as_array().unwrap().len(), 2);
    assert_eq!(fake.total_attempts(), 2);

    let record = &records(&audit, 3).await[0];
    let recorded: Vec<String> = serde_json::from_str(&record.answer).unwrap_or_else(|e| {
        panic!(
            "several choices are recorded as a JSON array ({e}): {}",
            record.answer
        )
    });
    assert_eq!(recorded.len(), 3);
    for (i, text) in recorded.iter().enumerate() {
        assert!(
            text.starts_with(&format!("choice {i}: Call me on ")),
            "{text}"
        );
        assert!(
            !text.contains(PHONE),
            "the record keeps placeholders: {text}"
        );
    }
}

#[tokio::test]
async fn interleaved_streamed_choices_are_each_restored() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["choices"])]).await;
    let sse = Sse::read(gw.chat(asking(2, true)).await).await;
    assert!(sse.done, "{}", sse.raw);
    let choices = by_choice(&sse);
    assert_eq!(choices.len(), 2, "{}", sse.raw);
    for (i, (text, finish)) in choices.iter().enumerate() {
        assert_eq!(text, &format!("choice {i}: {}", question()), "{}", sse.raw);
        assert_eq!(finish.as_deref(), Some("stop"));
    }
    assert!(
        !sse.raw.contains("PHONE_"),
        "no placeholder reaches the client"
    );
}

#[tokio::test]
async fn a_stream_that_ends_before_every_choice_finished_is_cut() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["choices-cut"])]).await;
    let sse = Sse::read(gw.chat(asking(2, true)).await).await;
    assert!(!sse.done, "{}", sse.raw);
    assert!(sse.error().is_some(), "{}", sse.raw);
    // With one choice asked for, the same body is a whole answer.
    let sse = Sse::read(gw.chat(asking(1, true)).await).await;
    assert!(sse.done, "{}", sse.raw);
}

#[tokio::test]
async fn n_out_of_range_is_refused() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["choices"])]).await;
    for n in [0, 17] {
        let error = expect_error(gw.chat(asking(n, false)).await, 400).await;
        assert_eq!(error["param"], "n", "{error}");
    }
    assert_eq!(fake.total_attempts(), 0);
}

#[tokio::test]
async fn the_local_model_generates_choices_one_after_another() {
    let gw = Gateway::start(
        "[providers.local]\nkind = \"local\"\nmodel = \"models/SmolLM2-135M-Instruct.Q4_1.gguf\"\n\n[models.chat]\ntargets = [\"local\"]\n",
    )
    .await;
    let mut body = ask("chat", "Name a colour.");
    body["n"] = json!(2);
    body["max_tokens"] = json!(6);
    body["temperature"] = json!(1.0);
    body["seed"] = json!(7);
    let answer = gw.answer(body.clone()).await;
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{answer}");
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert!(
            !choice["message"]["content"].as_str().unwrap().is_empty(),
            "{answer}"
        );
    }
    let usage = &answer["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!(
        (2..=12).contains(&completion),
        "both choices' tokens, at most 6 each: {usage}"
    );

    body["stream"] = json!(true);
    let sse = Sse::read(gw.chat(body).await).await;
    assert!(sse.done, "{}", sse.raw);
    let streamed = by_choice(&sse);
    assert_eq!(streamed.len(), 2, "{}", sse.raw);
    for (text, finish) in &streamed {
        assert!(!text.is_empty() && finish.is_some(), "{}", sse.raw);
    }
}
