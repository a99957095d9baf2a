//! The official clients against the gateway: the `openai` SDK for Python and for
//! Node, the `anthropic` SDK and LangChain, each from its own place that
//! `scripts/sdks.sh` makes (`make test` runs it). Each script in tests/sdk/
//! asserts on what it sees and prints one JSON line of figures.

use std::path::PathBuf;

use serde_json::Value;

use crate::support::{Gateway, TempDir};

/// Where `scripts/sdks.sh` put the SDKs.
fn sdks() -> PathBuf {
    std::env::var_os("RAGWAY_SDKS").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ragway/sdks"),
        PathBuf::from,
    )
}

/// The SDK a script is written against: its venv's python, or node with the
/// node_modules. A missing one fails the test (it is part of the suite).
fn runner(script: &str) -> tokio::process::Command {
    let (place, program) = match script.rsplit_once('.') {
        Some((_, "cjs")) => ("node", "node".into()),
        _ => {
            let venv = match script {
                s if s.starts_with("anthropic_") => "anthropic",
                s if s.starts_with("langchain_") => "langchain",
                _ => "openai",
            };
            (venv, sdks().join(venv).join("bin/python"))
        }
    };
    let home = sdks().join(place);
    assert!(
        home.join("pins").is_file(),
        "{} is missing: run scripts/sdks.sh (make test does)",
        home.display()
    );
    let mut command = tokio::process::Command::new(program);
    // A CommonJS script finds the node_modules by NODE_PATH.
    command
        .arg(format!("tests/sdk/{script}"))
        .env("NODE_PATH", home.join("node_modules"));
    command
}

/// Runs `tests/sdk/{script}` against `gw` with `env`; returns its JSON line.
pub async fn run_script(gw: &Gateway, script: &str, env: &[(&str, &str)]) -> Value {
    let mut command = runner(script);
    command
        .env("OPENAI_BASE_URL", format!("{}/v1", gw.url))
        .env("OPENAI_API_KEY", "unused")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(std::time::Duration::from_secs(180), command.output())
        .await
        .expect("the script finishes within 3 minutes")
        .expect("the SDK's runtime starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script} printed no JSON line ({e}): {stdout}"))
}

#[tokio::test]
async fn embeddings_through_the_openai_sdk_and_langchain() {
    let figures = embeddings_through_sdks("all-minilm-l6-v2", "models/all-MiniLM-L6-v2").await;
    // Real vectors, not merely well-formed ones: a paraphrase is nearer than an
    // unrelated sentence.
    assert!(
        figures["related"].as_f64().unwrap() > figures["unrelated"].as_f64().unwrap() + 0.3,
        "{figures}"
    );
}

/// The same with the default embedder, multilingual-e5-small, whose raw cosines
/// crowd together (every pair of texts scores high), so the margin is smaller.
#[tokio::test]
async fn e5_embeddings_through_the_openai_sdk_and_langchain() {
    let figures = embeddings_through_sdks("multilingual-e5-small", "models/e5-small-q4.bin").await;
    assert!(
        figures["related"].as_f64().unwrap() > figures["unrelated"].as_f64().unwrap() + 0.1,
        "{figures}"
    );
}

/// Runs `embeddings.py` against a gateway serving `model` as `name`; returns its
/// figures, with the checks every embedder must pass done.
async fn embeddings_through_sdks(name: &str, model: &str) -> serde_json::Value {
    let gw = Gateway::start(&format!(
        "[embeddings]\nname = \"{name}\"\nmodel = \"{model}\"\n"
    ))
    .await;
    // tiktoken reads cl100k_base from its cache, keyed by the sha1 of the address
    // it would download from: the copy `make models` fetched goes there.
    let cache = TempDir::new();
    std::fs::copy(
        "models/cl100k_base.tiktoken",
        cache.0.join("9b5ad71b2ce5302211f9c61530b329a4922fc6a4"),
    )
    .expect("models/cl100k_base.tiktoken (make models)");
    let figures = run_script(
        &gw,
        "langchain_embeddings.py",
        &[
            ("MODEL", name),
            ("TIKTOKEN_CACHE_DIR", cache.0.to_str().unwrap()),
        ],
    )
    .await;
    assert!(
        figures["ids_vs_text"].as_f64().unwrap() > 0.9999,
        "{figures}"
    );
    assert!(
        figures["langchain_vs_sdk"].as_f64().unwrap() > 0.9999,
        "{figures}"
    );
    figures
}

#[tokio::test]
async fn choices_through_the_openai_sdk() {
    let fake = crate::support::FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["choices"])]).await;
    let figures = run_script(&gw, "choices.py", &[]).await;
    assert_eq!(figures["whole"], figures["streamed"], "{figures}");
    assert_eq!(fake.last_request().body["n"], 2);
}

#[tokio::test]
async fn governance_refusals_through_the_openai_sdk() {
    use crate::support::keys::{ADMIN, new_key, sqlite_url};
    let dir = TempDir::new();
    let fake = crate::support::FakeProvider::start().await;
    let mut config = crate::support::config_over(&fake, &[("chat", &["ok"])]);
    config.push_str(&format!(
        "\n[auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase_env = \"DB\"\n\
         [audit]\ndatabase = \"sqlite://{}\"\nspool_dir = \"{}\"\n\
         [audit.prices]\n\"fake:ok\" = {{ input = 1e6, output = 2e6 }}\n",
        dir.0.join("audit.db").display(),
        dir.0.join("spool").display(),
    ));
    let gw = Gateway::start_with_env(&config, &[("ADMIN", ADMIN), ("DB", &sqlite_url(&dir))]).await;
    let limited = new_key(
        &gw,
        serde_json::json!({"tenant": "t", "limits": {"rpm": 1}}),
    )
    .await;
    // Less than one call's reservation (a token costs 1 here).
    let spent = new_key(
        &gw,
        serde_json::json!({"tenant": "u", "budget": {"amount": 1, "period": "day"}}),
    )
    .await;
    let figures = run_script(
        &gw,
        "limits.py",
        &[("LIMITED_KEY", &limited), ("SPENT_KEY", &spent)],
    )
    .await;
    assert_eq!(figures["rate_code"], "rate_limit_exceeded", "{figures}");
    assert_eq!(figures["quota_code"], "insufficient_quota", "{figures}");
    assert!(
        figures["rate_reset"]
            .as_str()
            .is_some_and(|r| r.ends_with('s')),
        "{figures}"
    );
    assert_eq!(
        fake.attempts("ok"),
        1,
        "only the admitted call reached the provider"
    );
}

#[tokio::test]
async fn legacy_completions_through_the_openai_sdk() {
    let fake = crate::support::FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["echo"])]).await;
    let figures = run_script(&gw, "completions.py", &[]).await;
    assert_eq!(figures["whole"], figures["streamed"], "{figures}");
    let seen = fake.last_request().body.to_string();
    assert!(
        !seen.contains("13812345678"),
        "the provider saw a placeholder: {seen}"
    );
}

#[tokio::test]
async fn speech_and_transcriptions_through_the_openai_sdk() {
    let fake = crate::support::FakeProvider::start().await;
    let mut config = crate::support::config_over(&fake, &[("chat", &["echo"])]);
    config.push_str(
        "\n[models.tts]\nkind = \"tts\"\ntargets = [\"fake:tts\"]\n\
         [models.asr]\nkind = \"asr\"\ntargets = [\"fake:asr\"]\n",
    );
    let gw = Gateway::start(&config).await;
    let figures = run_script(&gw, "audio.py", &[]).await;
    assert_eq!(
        figures["refused"],
        serde_json::json!(["response_format", "language"]),
        "{figures}"
    );
    // The provider's own text, its number as it was said.
    assert_eq!(figures["text"], crate::support::fake::HEARD, "{figures}");
    // Each reached the provider in Qiniu's shape.
    let seen = fake.requests();
    let spoken = seen.iter().find(|r| r.path == "/v1/voice/tts").unwrap();
    assert_eq!(
        spoken.body["audio"],
        serde_json::json!({"voice_type": "tts", "encoding": "wav", "speed_ratio": 1.5})
    );
    assert_eq!(spoken.body["request"]["text"], "您好，欢迎致电");
    let heard = seen.iter().find(|r| r.path == "/v1/voice/asr").unwrap();
    assert_eq!(heard.body["audio"]["format"], "wav");
    use base64::Engine as _;
    let sent = base64::engine::general_purpose::STANDARD
        .decode(heard.body["audio"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(sent.len(), 4 + 32_000);
    assert!(sent.starts_with(b"RIFF"));
}

#[tokio::test]
async fn messages_through_the_anthropic_sdk() {
    let fake = crate::support::FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["echo"]), ("tools", &["tool-echo"])]).await;
    let base = gw.url.clone();
    let figures = run_script(
        &gw,
        "anthropic_messages.py",
        &[("ANTHROPIC_BASE_URL", &base)],
    )
    .await;
    assert_eq!(figures["whole"], figures["streamed"], "{figures}");
    assert_eq!(figures["tool_use"], "call_1", "{figures}");
    // The last call reached the provider as chat, the tool's result a tool message.
    let seen = fake.last_request().body;
    assert_eq!(seen["messages"][0]["role"], "user", "{seen}");
    assert_eq!(seen["messages"][2]["tool_call_id"], "call_1", "{seen}");
    assert!(!seen.to_string().contains("13812345678"), "{seen}");
}

#[tokio::test]
async fn responses_through_the_openai_sdk() {
    let fake = crate::support::FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["echo"]), ("tools", &["tool-echo"])]).await;
    let figures = run_script(&gw, "responses.py", &[]).await;
    assert_eq!(figures["whole"], figures["streamed"], "{figures}");
    assert_eq!(figures["whole"], figures["helped"], "{figures}");
    assert_eq!(figures["call_id"], "call_1", "{figures}");
    assert_eq!(figures["refused"], "previous_response_id", "{figures}");
    // The last turn reached the provider as chat: the call, then its output.
    let seen = fake.last_request().body;
    assert_eq!(
        seen["messages"][1]["tool_calls"][0]["id"], "call_1",
        "{seen}"
    );
    assert_eq!(seen["messages"][2]["role"], "tool", "{seen}");
    assert_eq!(seen["messages"][2]["tool_call_id"], "call_1", "{seen}");
    assert_eq!(seen["tools"][0]["function"]["name"], "lookup", "{seen}");
    assert!(!seen.to_string().contains("13812345678"), "{seen}");
}

#[tokio::test]
async fn chat_tools_and_responses_through_the_openai_node_sdk() {
    let fake = crate::support::FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["echo"]), ("tools", &["tool-echo"])]).await;
    let figures = run_script(&gw, "node_openai.cjs", &[]).await;
    assert_eq!(figures["whole"], figures["streamed"], "{figures}");
    assert_eq!(figures["whole"], figures["told"], "{figures}");
    assert_eq!(figures["call"], "call_1", "{figures}");
    assert_eq!(figures["missing"], "model_not_found", "{figures}");
    assert!(
        !fake.last_request().body.to_string().contains("13812345678"),
        "the provider saw a placeholder"
    );
}

#[tokio::test]
async fn langchain_chat_openai_with_its_defaults() {
    let fake = crate::support::FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["echo"]), ("tools", &["tool-echo"])]).await;
    let figures = run_script(&gw, "langchain_chat.py", &[]).await;
    assert_eq!(figures["whole"], figures["streamed"], "{figures}");
    assert_eq!(figures["whole"], figures["responses"], "{figures}");
    assert_eq!(figures["tool"], "lookup", "{figures}");
    // ChatOpenAI asked for the usage of its stream, which the gateway gave.
    assert!(figures["stream_tokens"].as_u64().unwrap() > 0, "{figures}");
}
