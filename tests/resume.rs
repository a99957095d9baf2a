//! An answer that breaks after part of it was received is finished by the next
//! target that can continue it: cut, stalled, a malformed chunk or an error event,
//! streamed and whole; each prefill dialect's request; a target that refuses a
//! prefill is skipped; with none able, the client gets the clean in-band error; a
//! placeholder split across the break comes back whole; a continuation that breaks
//! is continued again.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::support::fake::story;
use crate::support::{FakeProvider, Gateway, MemoryAudit, Sse, ask, ask_stream, config_with};

/// The fake as one provider continuing in `prefill`, the alias `chat` over
/// `targets`; a stall is noticed after 300 ms.
fn config(fake: &FakeProvider, prefill: &str, targets: &[&str]) -> String {
    let lines = format!("prefill = \"{prefill}\"\nidle_timeout = \"300ms\"");
    config_with(fake, &lines, &[("chat", targets)])
}

/// The first `n` words of the story.
fn words(n: usize) -> String {
    story().split_inclusive(' ').take(n).collect()
}

/// The final assistant message of the request `model` was last sent.
fn prefill_seen(fake: &FakeProvider, model: &str) -> Value {
    let request = fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.body["model"] == model)
        .unwrap_or_else(|| panic!("no request for {model}"));
    request.body["messages"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_broken_stream_is_continued_on_the_next_target() {
    for broken in [
        "story-cut-5",
        "story-stall-5",
        "story-malformed-5",
        "story-error-5",
    ] {
        let fake = FakeProvider::start().await;
        let audit = Arc::new(MemoryAudit::default());
        let sink = audit.clone();
        let toml = config(&fake, "assistant", &[broken, "story-next"]);
        let gw = Gateway::start_customized(&toml, &[], move |p| p.audit = sink).await;
        let mut asked = ask_stream("chat", "Tell me the story.");
        asked["stream_options"] = json!({"include_usage": true});
        let response = gw.chat(asked).await;
        assert_eq!(response.status(), 200, "{broken}");
        let sse = Sse::read(response).await;
        assert!(sse.error().is_none(), "{broken}: {}", sse.raw);
        assert_eq!(sse.text(), story(), "{broken}: every word once, in order");
        assert_eq!(sse.finish_reasons(), ["stop"], "{broken}");
        let finish = sse
            .events
            .iter()
            .find(|e| e["choices"][0]["finish_reason"] == "stop")
            .unwrap();
        assert_eq!(finish["ragway"]["continued"], "fake:story-next", "{finish}");
        assert!(sse.done, "{broken}");
        // The next target was given exactly what had arrived.
        assert_eq!(
            prefill_seen(&fake, "story-next"),
            json!({"role": "assistant", "content": words(5)}),
            "{broken}"
        );
        // One usage: the continuation's, with the broken attempt's estimate added.
        let usage = sse
            .events
            .iter()
            .find_map(|e| e.get("usage").filter(|u| !u.is_null()))
            .unwrap_or_else(|| panic!("{broken}: no usage in {}", sse.raw));
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 7, "{usage}");
        assert!(usage["completion_tokens"].as_u64().unwrap() > 25, "{usage}");
        gw.idle().await;
        let records = audit.records();
        let attempts: Vec<(String, Option<&str>)> = records[0]
            .attempts
            .iter()
            .map(|a| (a.target.to_string(), a.kind.name()))
            .collect();
        assert_eq!(
            attempts,
            [
                (format!("fake:{broken}"), None),
                ("fake:story-next".to_owned(), Some("continuation"))
            ],
            "{broken}"
        );
        assert_eq!(records[0].outcome, ragway::call::Outcome::Ok, "{broken}");
    }
}

#[tokio::test]
async fn a_broken_whole_answer_is_continued_not_asked_again() {
    for broken in [
        "story-cut-5",
        "story-stall-5",
        "story-malformed-5",
        "story-error-5",
    ] {
        let fake = FakeProvider::start().await;
        let gw = Gateway::start(&config(&fake, "assistant", &[broken, "story-next"])).await;
        let response = gw.chat(ask("chat", "Tell me the story.")).await;
        assert_eq!(response.status(), 200, "{broken}");
        assert_eq!(
            response.headers()["x-ragway-target"],
            format!("fake:{broken}").as_str()
        );
        assert_eq!(response.headers()["x-ragway-continued"], "fake:story-next");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            story(),
            "{broken}"
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        // The continuation's usage, and the broken attempt's estimate.
        let completion = answer["usage"]["completion_tokens"].as_u64().unwrap();
        assert!(completion > 25, "{answer}");
        assert_eq!(
            fake.attempts(broken),
            1,
            "{broken}: not asked again from the start"
        );
        assert_eq!(fake.attempts("story-next"), 1);
    }
}

#[tokio::test]
async fn an_answer_is_continued_three_times_at_most() {
    let fake = FakeProvider::start().await;
    let targets = [
        "story-cut-5",
        "story-next-cut-1",
        "story-next-cut-1#2",
        "story-next-cut-1#3",
        "story-next",
    ];
    let gw = Gateway::start(&config(&fake, "assistant", &targets)).await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "Tell me the story.")).await).await;
    assert_eq!(sse.text(), words(8), "{}", sse.raw);
    assert!(sse.error().is_some() && !sse.done);
    assert_eq!(
        fake.attempts("story-next"),
        0,
        "a fourth continuation is not asked for"
    );
}

#[tokio::test]
async fn each_prefill_dialect_asks_in_its_own_shape() {
    let fake = FakeProvider::start().await;
    let base = fake.base_url();
    let toml = format!(
        "[providers.first]\nkind = \"openai\"\nbase_url = \"{base}\"\n\n\
         [providers.vllm]\nkind = \"openai\"\nbase_url = \"{base}\"\nprefill = \"vllm\"\n\n\
         [providers.deepseek]\nkind = \"openai\"\nbase_url = \"{base}\"\nprefill = \"deepseek\"\n\n\
         [models.to-vllm]\ntargets = [\"first:story-cut-5\", \"vllm:story-vllm\"]\n\n\
         [models.to-deepseek]\ntargets = [\"first:story-cut-7\", \"deepseek:story-deepseek\"]\n"
    );
    let gw = Gateway::start(&toml).await;
    for alias in ["to-vllm", "to-deepseek"] {
        let sse = Sse::read(gw.chat(ask_stream(alias, "Tell me the story.")).await).await;
        assert_eq!(sse.text(), story(), "{alias}: {}", sse.raw);
    }
    let vllm = fake
        .requests()
        .into_iter()
        .find(|r| r.body["model"] == "story-vllm")
        .unwrap();
    assert_eq!(vllm.body["continue_final_message"], true);
    assert_eq!(vllm.body["add_generation_prompt"], false);
    assert_eq!(vllm.path, "/v1/chat/completions");
    let deepseek = fake
        .requests()
        .into_iter()
        .find(|r| r.body["model"] == "story-deepseek")
        .unwrap();
    assert_eq!(deepseek.path, "/beta/chat/completions");
    assert_eq!(
        deepseek.body["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        &json!({"role": "assistant", "content": words(7), "prefix": true})
    );
    assert!(deepseek.body.get("continue_final_message").is_none());
}

#[tokio::test]
async fn a_target_that_refuses_a_prefill_is_skipped() {
    let fake = FakeProvider::start().await;
    let targets = ["story-cut-5", "story-refuse", "story-next"];
    let gw = Gateway::start(&config(&fake, "assistant", &targets)).await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "Tell me the story.")).await).await;
    assert_eq!(sse.text(), story(), "{}", sse.raw);
    assert_eq!(fake.attempts("story-refuse"), 1);
    assert_eq!(fake.attempts("story-next"), 1);
}

#[tokio::test]
async fn with_no_target_able_to_continue_the_client_gets_the_clean_error() {
    // One that refuses the prefill, and one whose provider has no prefill dialect.
    for (prefill, next) in [("assistant", "story-refuse"), ("none", "story-next")] {
        let fake = FakeProvider::start().await;
        let gw = Gateway::start(&config(&fake, prefill, &["story-cut-5", next])).await;
        let sse = Sse::read(gw.chat(ask_stream("chat", "Tell me the story.")).await).await;
        assert_eq!(sse.text(), words(5), "{prefill}");
        assert_eq!(
            sse.error().unwrap()["code"],
            "stream_interrupted",
            "{}",
            sse.raw
        );
        assert!(!sse.done && sse.finish_reasons().is_empty());
        let asked = if prefill == "none" { 0 } else { 1 };
        assert_eq!(fake.attempts(next), asked, "{prefill}");
        // A whole answer is asked for again from the start, as before: the next
        // target, asked afresh, gives all of it.
        let whole = gw.chat(ask("chat", "Tell me the story.")).await;
        assert_eq!(whole.status(), 200);
        assert!(whole.headers().get("x-ragway-continued").is_none());
        let answer: Value = whole.json().await.unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], story());
    }
}

#[tokio::test]
async fn a_placeholder_split_across_the_break_is_restored() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake, "assistant", &["echo-cut-4", "echo-next"])).await;
    let said = "call 13912345678 now please";
    let sse = Sse::read(gw.chat(ask_stream("chat", said)).await).await;
    assert_eq!(sse.text(), said, "{}", sse.raw);
    // The break fell inside the placeholder: the continuation was given half of it.
    let prefill = prefill_seen(&fake, "echo-next")["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(prefill.chars().count(), 12, "{prefill}");
    assert!(
        prefill.starts_with("call <") && !prefill.contains("139"),
        "{prefill}"
    );
    let seen = fake.last_request().body.to_string();
    assert!(!seen.contains("13912345678"), "{seen}");
}

#[tokio::test]
async fn a_continuation_that_breaks_is_continued_again() {
    let fake = FakeProvider::start().await;
    let targets = ["story-cut-5", "story-next-cut-4", "story-next"];
    let gw = Gateway::start(&config(&fake, "assistant", &targets)).await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "Tell me the story.")).await).await;
    assert_eq!(sse.text(), story(), "{}", sse.raw);
    assert_eq!(
        prefill_seen(&fake, "story-next")["content"],
        words(9),
        "the second continuation starts after both earlier parts"
    );
    // Whole, the same: each continuation asked once more, from where it broke.
    let response = gw.chat(ask("chat", "Tell me the story.")).await;
    assert_eq!(response.headers()["x-ragway-continued"], "fake:story-next");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], story());
    assert_eq!(fake.attempts("story-cut-5"), 2);
    assert_eq!(fake.attempts("story-next-cut-4"), 2);
    assert_eq!(fake.attempts("story-next"), 2);
    assert_eq!(prefill_seen(&fake, "story-next")["content"], words(9));
}

#[tokio::test]
async fn a_refusal_on_content_grounds_is_not_continued() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(
        &fake,
        "assistant",
        &["story-refused-5", "story-next"],
    ))
    .await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "Tell me the story.")).await).await;
    assert_eq!(sse.text(), words(5));
    assert!(sse.error().is_some() && !sse.done, "{}", sse.raw);
    assert_eq!(
        fake.attempts("story-next"),
        0,
        "no other provider finishes it"
    );
}

#[tokio::test]
async fn a_continuation_asks_for_no_more_than_the_answer_has_left() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake, "assistant", &["story-cut-5", "story-next"])).await;
    let mut asked = ask_stream("chat", "Tell me the story.");
    asked["max_tokens"] = json!(100);
    let sse = Sse::read(gw.chat(asked).await).await;
    assert_eq!(sse.text(), story());
    let continued = fake
        .requests()
        .into_iter()
        .find(|r| r.body["model"] == "story-next")
        .unwrap();
    let left = continued.body["max_tokens"].as_u64().unwrap();
    assert!((90..100).contains(&left), "{left}");
}

#[test]
fn prefill_settings_are_checked() {
    use ragway::config::{Config, Env};
    let parse = |lines: &str, kind: &str| {
        let toml = format!(
            "[providers.p]\nkind = \"{kind}\"\nbase_url = \"https://api.deepseek.com/v1\"\n{lines}\n\
             [models.m]\ntargets = [\"p:x\"]\n"
        );
        Config::from_toml(&toml, &Env::from_pairs(std::iter::empty::<(&str, &str)>()))
    };
    let config = parse("prefill = \"deepseek\"", "openai").unwrap();
    let beta = serde_json::to_value(&config.providers["p"].prefill_base_url).unwrap();
    assert_eq!(beta, "https://api.deepseek.com/beta");
    for (lines, field) in [
        ("prefill = \"yes\"", "providers.p.prefill"),
        (
            "prefill = \"vllm\"\nprefill_base_url = \"https://x/beta\"",
            "providers.p.prefill_base_url",
        ),
        (
            "prefill = \"deepseek\"\nprefill_base_url = \"not a url\"",
            "providers.p.prefill_base_url",
        ),
    ] {
        let error = parse(lines, "openai").unwrap_err().to_string();
        assert!(error.contains(field), "{lines}: {error}");
    }
}

#[tokio::test]
async fn reasoning_already_given_is_kept_and_never_restarted() {
    let fake = FakeProvider::start().await;
    let toml = config(&fake, "assistant", &["story-reason-cut-5", "story-think"]);
    let gw = Gateway::start(&toml).await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "Tell me the story.")).await).await;
    let reasoning: String = sse
        .events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Let me think.", "{}", sse.raw);
    assert_eq!(sse.text(), story());
    // Whole, the same: the first target's reasoning, the story once.
    let answer: Value = gw
        .chat(ask("chat", "Tell me the story."))
        .await
        .json()
        .await
        .unwrap();
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "Let me think.", "{answer}");
    assert_eq!(message["content"], story());
}
