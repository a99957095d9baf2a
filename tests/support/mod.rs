//! Shared test harness: the fake provider and a gateway on a real socket.

pub mod browser;
pub mod fake;
pub mod keys;
pub mod postgres;
pub mod tls;

use std::time::Duration;

use futures_util::FutureExt;

use ragway::AppState;
use ragway::audit::{AuditSink, CallRecord};
use ragway::config::{Config, Env};
use ragway::pipeline::Pipeline;
use serde_json::{Value, json};

pub use fake::FakeProvider;

/// An address on loopback that refuses connections: a target or collector
/// that is down. Its port stays bound, never listening, until the test run
/// ends: a port bound and freed again can be handed to the listener of a test
/// running beside this one, which would then be sent this test's traffic.
pub fn refusing_address() -> std::net::SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let address = socket.local_addr().unwrap();
    std::mem::forget(socket); // held for the rest of the run
    address
}

/// A gateway serving on `127.0.0.1:0`.
pub struct Gateway {
    pub url: String,
    pub state: AppState,
    _server: tokio::task::JoinHandle<()>,
}

impl Gateway {
    pub async fn start(config_toml: &str) -> Gateway {
        Gateway::start_with_env(config_toml, &[]).await
    }

    pub async fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_customized(config_toml, env, |_| {}).await
    }

    /// A gateway whose pipeline stages `customize` may replace.
    pub async fn start_customized(
        config_toml: &str,
        env: &[(&str, &str)],
        customize: impl FnOnce(&mut Pipeline),
    ) -> Gateway {
        let config = Config::from_toml(config_toml, &Env::from_pairs(env.iter().copied()))
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        let state = AppState::from_config_with(config, customize)
            .await
            .expect("state builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(
            ragway::serve(listener, state.clone(), std::future::pending()).map(|r| r.unwrap()),
        );
        Gateway {
            url,
            state,
            _server: server,
        }
    }

    /// A gateway whose aliases each route to targets on `fake`, given as upstream
    /// model names: `[("chat", &["ok"])]` makes alias `chat` → `fake:ok`.
    pub async fn over(fake: &FakeProvider, models: &[(&str, &[&str])]) -> Gateway {
        Gateway::start(&config_over(fake, models)).await
    }

    /// Waits until the gateway's background work is done: cache stores and the
    /// ends of streams (their records). A wait on the work itself, not a guess at
    /// how long it takes.
    pub async fn idle(&self) {
        let tasks = &self.state.pipeline.tasks;
        for _ in 0..2_000 {
            if tasks.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!(
            "background work still running after 2 s: {} tasks",
            tasks.len()
        );
    }

    /// Waits until `/metrics` holds `line` (a whole sample, e.g. `name{labels} 1`):
    /// a wait on the state itself.
    pub async fn metric_reads(&self, line: &str) {
        for _ in 0..1_000 {
            let metrics = self.get("/metrics").await.text().await.unwrap();
            if metrics.lines().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("/metrics never read `{line}`");
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    pub async fn chat(&self, body: Value) -> reqwest::Response {
        self.http()
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&body)
            .send()
            .await
            .expect("gateway reachable")
    }

    /// A whole answer's JSON body.
    pub async fn answer(&self, body: Value) -> Value {
        self.chat(body).await.json().await.expect("answer is JSON")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("gateway reachable")
    }
}

/// A fresh directory under the system's temporary one, removed at the end.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("ragway-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An audit sink that keeps every record, for tests to read.
#[derive(Default)]
pub struct MemoryAudit(std::sync::Mutex<Vec<CallRecord>>);

impl MemoryAudit {
    pub fn records(&self) -> Vec<CallRecord> {
        self.0.lock().unwrap().clone()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, record: CallRecord) {
        self.0.lock().unwrap().push(record);
    }
}

pub fn config_over(fake: &FakeProvider, models: &[(&str, &[&str])]) -> String {
    config_with(fake, "", models)
}

/// Like [`config_over`], with extra lines for the `fake` provider's section (e.g.
/// `"retry.attempts = 1"`).
pub fn config_with(
    fake: &FakeProvider,
    provider_lines: &str,
    models: &[(&str, &[&str])],
) -> String {
    let mut toml = format!(
        "[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\n{provider_lines}\n",
        fake.base_url()
    );
    for (alias, targets) in models {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"fake:{t}\"")).collect();
        toml.push_str(&format!(
            "\n[models.\"{alias}\"]\ntargets = [{}]\n",
            targets.join(", ")
        ));
    }
    toml
}

/// Asserts the status and the OpenAI error shape; returns the error object.
pub async fn expect_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("error body is JSON");
    let error = body["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    error
}

pub fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

pub fn ask_stream(model: &str, text: &str) -> Value {
    let mut body = ask(model, text);
    body["stream"] = json!(true);
    body
}

/// A parsed SSE response: the JSON events, whether `[DONE]` came, and the raw text.
pub struct Sse {
    pub events: Vec<Value>,
    pub done: bool,
    pub raw: String,
}

impl Sse {
    pub async fn read(response: reqwest::Response) -> Sse {
        let raw = response.text().await.expect("stream body");
        let mut events = Vec::new();
        let mut done = false;
        for block in raw.split("\n\n").filter(|b| !b.trim().is_empty()) {
            let data = block
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {block:?}"));
            assert!(!done, "an event after [DONE]: {block:?}");
            if data == "[DONE]" {
                done = true;
            } else {
                events.push(serde_json::from_str(data).expect("event is JSON"));
            }
        }
        Sse { events, done, raw }
    }

    /// The answer's text, concatenated from the deltas.
    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    pub fn finish_reasons(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| e["choices"][0]["finish_reason"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn error(&self) -> Option<&Value> {
        self.events.iter().find_map(|e| e.get("error"))
    }
}
