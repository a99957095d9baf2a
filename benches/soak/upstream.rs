//! The one provider: answers after `UPSTREAM_DELAY`, echoing the user's question.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::UPSTREAM_DELAY;

/// An OpenAI-compatible provider on loopback that waits 50 ms and answers "You
/// asked: …" with the last user message, streamed when asked. Counts the requests,
/// and those holding a run of 11 or more digits anywhere: an identifier that was
/// not replaced.
pub struct Upstream {
    pub port: u16,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    leaks: AtomicU64,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let counts = Arc::new(Counts::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .with_state(counts.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let port = listener.local_addr().expect("the upstream's port").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { port, counts }
    }

    /// (requests seen, requests with a raw identifier in them).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.requests.load(Ordering::Relaxed),
            self.counts.leaks.load(Ordering::Relaxed),
        )
    }
}

async fn chat(State(counts): State<Arc<Counts>>, body: Bytes) -> Response {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    // Every field, the grounding passages included (the corpus has no such runs).
    if longest_digit_run(&String::from_utf8_lossy(&body)) >= 11 {
        counts.leaks.fetch_add(1, Ordering::Relaxed);
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let question = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    tokio::time::sleep(UPSTREAM_DELAY).await;
    let text = format!("You asked: {question}");
    let usage = json!({"prompt_tokens": 200, "completion_tokens": 40, "total_tokens": 240});
    if request["stream"] != true {
        return axum::Json(json!({
            "id": "chatcmpl-soak", "object": "chat.completion", "created": 1_700_000_000,
            "model": "soak",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |choices: Value, usage: Value| {
        let mut chunk = json!({"id": "chatcmpl-soak", "object": "chat.completion.chunk",
                               "created": 1_700_000_000, "model": "soak", "choices": choices});
        if !usage.is_null() {
            chunk["usage"] = usage;
        }
        format!("data: {chunk}\n\n")
    };
    let body = [
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}]),
            Value::Null,
        ),
        chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            Value::Null,
        ),
        chunk(json!([]), usage),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

fn longest_digit_run(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0)
}
