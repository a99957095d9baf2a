//! Personal data through the whole gateway: what the provider saw, what the client
//! got, what the audit record kept; refusals, masks, the content guard, and a
//! sanitiser failure that must not let a request through.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ragway::cache::{AnswerCache, CacheKey, CacheLookup, CacheStatus};
use ragway::call::{Call, Placeholders};
use ragway::error::GatewayError;
use ragway::pipeline::Pipeline;
use ragway::retrieve::{Citation, Retriever};
use ragway::sanitize::{Sanitizer, Vault};
use ragway::wire::{ChatCompletion, ChatRequest, Content, Message, Role};
use serde_json::{Value, json};

use crate::support::{
    FakeProvider, Gateway, MemoryAudit, Sse, ask, ask_stream, config_over, expect_error,
};

const PHONE: &str = "13812345678";
const ID: &str = "11010519491231002X";

fn question() -> String {
    format!("我的手机{PHONE}，身份证{ID}，请复述。")
}

async fn with_audit(config: &str) -> (Gateway, Arc<MemoryAudit>) {
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let gw = Gateway::start_customized(config, &[], move |p| p.audit = sink).await;
    (gw, audit)
}

/// Waits for the audit record of a stream, written when its task ends.
async fn one_record(audit: &MemoryAudit) -> ragway::audit::CallRecord {
    for _ in 0..100 {
        if let Some(record) = audit.records().pop() {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no audit record");
}

/// A fake provider that echoes the question, and a gateway in front of it whose
/// stages `customize` may replace.
async fn over_echo(customize: impl FnOnce(&mut Pipeline)) -> (FakeProvider, Gateway) {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start_customized(&echo_config(&fake, ""), &[], customize).await;
    (fake, gw)
}

/// The alias `chat` routed to the echoing fake, with more config lines.
fn echo_config(fake: &FakeProvider, extra: &str) -> String {
    format!("{}\n{extra}\n", config_over(fake, &[("chat", &["echo"])]))
}

fn sent_upstream(fake: &FakeProvider) -> String {
    fake.last_request().body.to_string()
}

#[tokio::test]
async fn a_phone_and_an_id_reach_the_provider_only_as_placeholders() {
    let fake = FakeProvider::start().await;
    let (gw, audit) = with_audit(&config_over(&fake, &[("chat", &["echo"])])).await;
    let mut body = ask("chat", &question());
    body["user"] = json!(PHONE);
    let response = gw.chat(body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();

    let upstream = sent_upstream(&fake);
    assert!(
        !upstream.contains(PHONE) && !upstream.contains(ID),
        "{upstream}"
    );
    assert!(
        upstream.contains("<PHONE_1>") && upstream.contains("<ID_CARD_1>"),
        "{upstream}"
    );
    // The echoed answer comes back with the client's own values.
    assert_eq!(answer["choices"][0]["message"]["content"], question());

    let record = one_record(&audit).await;
    let kept = format!("{} {} {:?}", record.prompt, record.answer, record.user);
    assert!(!kept.contains(PHONE) && !kept.contains(ID), "{kept}");
    assert!(record.answer.contains("<PHONE_1>"), "{}", record.answer);
    assert_eq!(record.pii, [("id_card", 1), ("mobile", 2)]);

    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"ragway_pii_detections_total{action="placeholder",kind="mobile"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_placeholder_split_across_stream_chunks_reaches_the_client_restored() {
    let fake = FakeProvider::start().await;
    let (gw, audit) = with_audit(&config_over(&fake, &[("chat", &["echo-split-2"])])).await;
    for split in ["echo-split-1", "echo-split-2", "echo-split-5"] {
        let cfg = config_over(&fake, &[("chat", &[split])]);
        let gw = Gateway::start(&cfg).await;
        let sse = Sse::read(gw.chat(ask_stream("chat", &question())).await).await;
        assert!(sse.done, "{}", sse.raw);
        assert_eq!(sse.text(), question(), "pieces of {split}");
        assert!(!sent_upstream(&fake).contains(PHONE));
    }
    let sse = Sse::read(gw.chat(ask_stream("chat", &question())).await).await;
    assert_eq!(sse.text(), question());
    let record = one_record(&audit).await;
    assert!(!record.answer.contains(PHONE) && record.answer.contains("<PHONE_1>"));
}

#[tokio::test]
async fn a_blocked_kind_is_refused_by_name_and_never_sent() {
    let fake = FakeProvider::start().await;
    let config = echo_config(&fake, "[pii.actions]\nid_card = \"block\"");
    let (gw, audit) = with_audit(&config).await;
    let error = expect_error(gw.chat(ask("chat", &question())).await, 400).await;
    assert_eq!(error["code"], "pii_blocked");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("id_card") && !message.contains(ID),
        "{message}"
    );
    assert_eq!(fake.total_attempts(), 0);
    let record = one_record(&audit).await;
    assert_eq!(record.error, Some("pii_blocked"));
    assert!(!record.prompt.contains(ID), "{}", record.prompt);
}

#[tokio::test]
async fn masked_and_hashed_values_go_out_changed_and_stay_changed() {
    let fake = FakeProvider::start().await;
    let config = echo_config(
        &fake,
        "[pii]\nhash_key_env = \"PII_KEY\"\n[pii.actions]\nmobile = \"mask\"\nid_card = \"hash\"",
    );
    let gw = Gateway::start_with_env(&config, &[("PII_KEY", "k")]).await;
    let answer: Value = gw.answer(ask("chat", &question())).await;
    let upstream = sent_upstream(&fake);
    assert!(
        upstream.contains("138****5678") && upstream.contains("<ID_CARD#"),
        "{upstream}"
    );
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.contains("138****5678") && !content.contains(ID),
        "{content}"
    );
    // The same value hashes the same in the next request.
    gw.chat(ask("chat", &question())).await;
    let again = sent_upstream(&fake);
    let token = |s: &str| s[s.find("<ID_CARD#").unwrap()..][..22].to_owned();
    assert_eq!(token(&upstream), token(&again));
}

/// A penetration test's finding: values written against letters, in full-width
/// digits or split by zero-width characters reached the provider raw.
#[tokio::test]
async fn values_against_letters_in_full_width_or_split_invisibly_go_out_as_placeholders() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config_over(&fake, &[("chat", &["echo"])])).await;
    let raw = [
        "13912348765",
        "110105199003071239",
        "6222021234567890128",
        "１３８１２３４５６７８",
        "139\u{200B}1234\u{200B}8765",
    ];
    let question = format!(
        "tel{} id{} card{} 手机{} 备用{}",
        raw[0], raw[1], raw[2], raw[3], raw[4]
    );
    let answer: Value = gw.answer(ask("chat", &question)).await;
    let upstream = sent_upstream(&fake);
    for value in raw {
        assert!(!upstream.contains(value), "{value:?} in {upstream}");
    }
    assert!(!upstream.contains("1234\u{200B}8765"), "{upstream}");
    assert_eq!(upstream.matches("<PHONE_").count(), 3, "{upstream}");
    assert!(
        upstream.contains("<ID_CARD_1>") && upstream.contains("<BANK_CARD_1>"),
        "{upstream}"
    );
    assert_eq!(answer["choices"][0]["message"]["content"], question);
}

/// A sanitiser that cannot do its work.
struct Broken;

impl Sanitizer for Broken {
    fn sanitize(&self, _: &mut ChatRequest, _: &mut Vault) -> Result<(), GatewayError> {
        Err(GatewayError::Internal("detector unavailable".to_owned()))
    }

    fn sanitize_text(&self, _: &str, _: &mut Vault) -> Result<String, GatewayError> {
        Err(GatewayError::Internal("detector unavailable".to_owned()))
    }
}

#[tokio::test]
async fn when_sanitising_fails_the_request_fails_closed() {
    let (fake, gw) = over_echo(|p| p.sanitizer = Arc::new(Broken)).await;
    let error = expect_error(gw.chat(ask("chat", &question())).await, 500).await;
    assert!(!error.to_string().contains(PHONE), "{error}");
    assert_eq!(fake.total_attempts(), 0, "nothing may be forwarded raw");
}

/// A retriever that grounds every request in one passage holding a phone number.
struct OnePassage;

#[async_trait]
impl Retriever for OnePassage {
    async fn ground(
        &self,
        _call: &Call<'_>,
        prompt: &mut ChatRequest,
        pii: &mut dyn Placeholders,
    ) -> Result<Vec<Citation>, GatewayError> {
        let passage = pii.text("售后专线 13900001111，或回拨 13812345678。")?;
        prompt.messages.insert(
            0,
            Message {
                role: Role::System,
                content: Some(Content::Text(passage)),
                name: None,
                tool_calls: None,
                tool_call_id: None,
                extra: Default::default(),
            },
        );
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn retrieved_passages_share_the_request_vault() {
    let (fake, gw) = over_echo(|p| p.retriever = Arc::new(OnePassage)).await;
    let response = gw.chat(ask("chat", &question())).await;
    assert_eq!(response.status(), 200);
    let system = fake.last_request().body["messages"][0]["content"].to_string();
    // The user's own number keeps its placeholder; the document's gets the next one.
    assert!(
        system.contains("<PHONE_2>") && system.contains("<PHONE_1>"),
        "{system}"
    );
    assert!(
        !system.contains("13900001111") && !system.contains(PHONE),
        "{system}"
    );
}

fn guard_config(fake: &FakeProvider, dir: &std::path::Path, action: &str, model: &str) -> String {
    format!(
        "{}\n[guard]\nfile = \"{}\"\naction = \"{action}\"\ncheck_every = \"50ms\"\n",
        config_over(fake, &[("chat", &[model])]),
        dir.join("guard.txt").display()
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ragway-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_content_guard_refuses_input_and_cuts_output() {
    let fake = FakeProvider::start().await;
    let dir = temp_dir("guard");
    std::fs::write(dir.join("guard.txt"), "# test list\n机密\nre:fak[e]\n").unwrap();
    let gw = Gateway::start(&guard_config(&fake, &dir, "block", "ok")).await;

    let error = expect_error(gw.chat(ask("chat", "这份机密文件写了什么？")).await, 400).await;
    assert_eq!(error["code"], "content_filter");
    assert_eq!(fake.total_attempts(), 0);

    // The fake answers "Hello from the fake provider.": cut before "fake".
    let answer: Value = gw.answer(ask("chat", "hi")).await;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from the "
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");

    let sse = Sse::read(gw.chat(ask_stream("chat", "hi")).await).await;
    assert!(sse.done, "{}", sse.raw);
    assert_eq!(sse.text(), "Hello from the ");
    assert_eq!(sse.finish_reasons(), ["content_filter"]);

    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"ragway_guard_blocks_total{direction="input"} 1"#));
    assert!(metrics.contains(r#"ragway_guard_blocks_total{direction="output"} 2"#));
}

#[tokio::test]
async fn the_guard_masks_when_told_to_and_rereads_its_list() {
    let fake = FakeProvider::start().await;
    let dir = temp_dir("guard-mask");
    std::fs::write(dir.join("guard.txt"), "fake\n").unwrap();
    let gw = Gateway::start(&guard_config(&fake, &dir, "mask", "ok")).await;
    let text = |v: Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let answer = text(gw.answer(ask("chat", "hi")).await);
    assert_eq!(answer, "Hello from the **** provider.");
    let sse = Sse::read(gw.chat(ask_stream("chat", "hi")).await).await;
    assert_eq!(sse.text(), "Hello from the **** provider.");

    std::fs::write(dir.join("guard.txt"), "provider\nhello\n").unwrap();
    // The list is looked at again on a request once `check_every` has passed.
    let mut answer = String::new();
    for _ in 0..500 {
        answer = text(gw.answer(ask("chat", "hi")).await);
        if answer != "Hello from the **** provider." {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(answer, "***** from the fake ********.");
}

/// A cache that keeps answers in memory, keyed by the sanitised messages: enough to
/// show what the pipeline hands a cache and how it serves a hit.
#[derive(Default)]
struct MessagesCache(std::sync::Mutex<std::collections::HashMap<CacheKey, ChatCompletion>>);

#[async_trait]
impl AnswerCache for MessagesCache {
    async fn lookup(&self, call: &Call<'_>, prompt: &ChatRequest) -> CacheLookup {
        use sha2::Digest;
        let messages = serde_json::to_vec(&prompt.messages).unwrap();
        let key = CacheKey {
            tenant: call.caller.tenant.clone(),
            hash: sha2::Sha256::digest(messages).into(),
        };
        match self.0.lock().unwrap().get(&key) {
            Some(answer) => CacheLookup::Hit(answer.clone(), CacheStatus::HitL1),
            None => CacheLookup::Miss(key, None),
        }
    }

    async fn store(&self, key: CacheKey, answer: ChatCompletion) {
        self.0.lock().unwrap().insert(key, answer);
    }
}

#[tokio::test]
async fn a_cached_answer_is_stored_sanitised_and_shows_the_next_user_their_own_number() {
    let cache = Arc::new(MessagesCache::default());
    let stages = cache.clone();
    let (fake, gw) = over_echo(move |p| p.cache = stages).await;
    let ask_with = |phone: &str| ask("chat", &format!("请回拨 {phone}，谢谢"));

    let first: Value = gw.answer(ask_with(PHONE)).await;
    assert_eq!(
        first["choices"][0]["message"]["content"],
        format!("请回拨 {PHONE}，谢谢")
    );
    // The store runs in the background: wait for it.
    for _ in 0..100 {
        if !cache.0.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored = format!("{:?}", cache.0.lock().unwrap().values().next().unwrap());
    assert!(
        !stored.contains(PHONE) && stored.contains("<PHONE_1>"),
        "{stored}"
    );

    let other = "13987654321";
    let response = gw.chat(ask_with(other)).await;
    assert_eq!(response.headers()["x-ragway-cache"], "hit-l1");
    let second: Value = response.json().await.unwrap();
    assert_eq!(
        second["choices"][0]["message"]["content"],
        format!("请回拨 {other}，谢谢")
    );
    assert_eq!(
        fake.attempts("echo"),
        1,
        "the second answer came from the cache"
    );

    let sse = Sse::read(
        gw.chat({
            let mut body = ask_with("13700001111");
            body["stream"] = json!(true);
            body
        })
        .await,
    )
    .await;
    assert_eq!(sse.text(), "请回拨 13700001111，谢谢");
}

const SMOLLM: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// What the local model was given shows in its prompt token count: the number's
/// eleven digits are eleven tokens, its placeholder fewer.
async fn local_prompt_tokens(local_input: &str) -> (u64, ragway::audit::CallRecord) {
    let config = format!(
        "[providers.local]\nkind = \"local\"\nmodel = \"{SMOLLM}\"\n\
         [pii]\nlocal_input = \"{local_input}\"\n"
    );
    let (gw, audit) = with_audit(&config).await;
    let body = json!({
        "model": "local", "temperature": 0, "max_tokens": 16,
        "messages": [{"role": "user", "content": format!("Repeat my number: {PHONE}")}]
    });
    let answer: Value = gw.answer(body).await;
    let tokens = answer["usage"]["prompt_tokens"].as_u64().expect("usage");
    (tokens, one_record(&audit).await)
}

#[tokio::test]
async fn the_local_model_reads_placeholders_unless_configured_to_read_raw_text() {
    let (sanitised, _) = local_prompt_tokens("sanitised").await;
    let (raw, record) = local_prompt_tokens("raw").await;
    assert!(
        raw > sanitised,
        "raw {raw} vs sanitised {sanitised} prompt tokens"
    );
    // Whatever the model answered from the raw text, the record keeps no value.
    assert!(!record.answer.contains(PHONE), "{}", record.answer);
    assert!(!record.prompt.contains(PHONE), "{}", record.prompt);
}

#[tokio::test]
async fn tool_definitions_stop_sequences_and_refused_requests_leak_nothing() {
    let fake = FakeProvider::start().await;
    let dir = temp_dir("guard-user");
    std::fs::write(dir.join("guard.txt"), "机密\n").unwrap();
    let (gw, audit) = with_audit(&guard_config(&fake, &dir, "block", "echo")).await;
    let mut body = ask("chat", "hi");
    body["tools"] = json!([{"type": "function", "function": {
        "name": "lookup", "description": format!("the caller is {PHONE}"),
        "parameters": {"type": "object", "properties": {}}}}]);
    body["stop"] = json!([ID]);
    assert_eq!(gw.chat(body).await.status(), 200);
    let upstream = sent_upstream(&fake);
    assert!(
        !upstream.contains(PHONE) && !upstream.contains(ID),
        "{upstream}"
    );

    // Refused by the guard before sanitising: the record keeps neither text nor user.
    let mut body = ask("chat", "机密");
    body["user"] = json!("zhang.san@example.com");
    assert_eq!(gw.chat(body).await.status(), 400);
    let record = audit.records().pop().unwrap();
    assert_eq!(record.error, Some("content_filter"));
    assert_eq!(record.user, None);
    assert!(record.prompt.is_empty());
}

#[tokio::test]
async fn tool_call_arguments_come_back_with_the_users_values() {
    let fake = FakeProvider::start().await;
    let cfg = |model: &str| config_over(&fake, &[("chat", &[model])]);
    let expected = json!({"query": question()});

    let gw = Gateway::start(&cfg("tool-echo")).await;
    let answer: Value = gw.answer(ask("chat", &question())).await;
    let arguments = answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(arguments).unwrap(), expected);
    assert!(!sent_upstream(&fake).contains(PHONE));

    for piece in ["tool-echo-1", "tool-echo-3", "tool-echo-7"] {
        let gw = Gateway::start(&cfg(piece)).await;
        let sse = Sse::read(gw.chat(ask_stream("chat", &question())).await).await;
        assert!(sse.done, "{}", sse.raw);
        let arguments: String = sse
            .events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
            .filter_map(|call| call["function"]["arguments"].as_str())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&arguments).unwrap(),
            expected,
            "{piece}"
        );
    }
}
