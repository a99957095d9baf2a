//! Routing over ordered targets: fail over while nothing has reached the client,
//! never after; and say which target really answered.

use serde_json::Value;

use crate::support::fake::OK_TOKENS;
use crate::support::{FakeProvider, Gateway, Sse, ask, ask_stream, refusing_address};

#[tokio::test]
async fn a_failed_target_fails_over_to_the_next() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["status-503", "price-not-set", "ok"])]).await;
    let response = gw.chat(ask("chat", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    assert_eq!(response.headers()["x-ragway-attempts"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "fake:ok", "the answer names who served it");
    assert_eq!(fake.attempts("status-503"), 3, "a 503 is retried");
    assert_eq!(
        fake.attempts("price-not-set"),
        1,
        "a configuration error is not"
    );
    assert_eq!(fake.attempts("ok"), 1);
}

#[tokio::test]
async fn a_refused_connection_fails_over() {
    let fake = FakeProvider::start().await;
    // Nothing listens there.
    let closed = refusing_address();
    let toml = format!(
        "[providers.down]\nkind = \"openai\"\nbase_url = \"http://{closed}/v1\"\n\
         [providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [models.chat]\ntargets = [\"down:ok\", \"fake:ok\"]\n",
        fake.base_url()
    );
    let gw = Gateway::start(&toml).await;
    let response = gw.chat(ask_stream("chat", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    let sse = Sse::read(response).await;
    assert_eq!(sse.text(), OK_TOKENS.concat());
}

#[tokio::test]
async fn a_stream_that_dies_before_any_content_fails_over() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(
        &fake,
        &[("chat", &["role-then-die", "malformed-chunk-0", "ok"])],
    )
    .await;
    let response = gw.chat(ask_stream("chat", "hi")).await;
    assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
    let sse = Sse::read(response).await;
    assert!(sse.done);
    assert_eq!(sse.text(), OK_TOKENS.concat());
    assert_eq!(
        fake.attempts("role-then-die"),
        3,
        "a dropped stream is retried first"
    );
}

#[tokio::test]
async fn a_stream_cut_after_content_ends_with_an_in_band_error() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["cut-after-40", "ok"])]).await;
    let response = gw.chat(ask_stream("chat", "count")).await;
    assert_eq!(
        response.status(),
        200,
        "the head went out with the first token"
    );
    let sse = Sse::read(response).await;
    assert!(!sse.done, "no [DONE] after a cut: {}", sse.raw);
    assert!(
        sse.finish_reasons().is_empty(),
        "no finish_reason: a cut answer must not look finished"
    );
    let error = sse.error().expect("an in-band error event");
    assert_eq!(error["code"], "stream_interrupted");
    assert_eq!(
        sse.text().split_whitespace().count(),
        40,
        "all 40 tokens were delivered"
    );
    assert_eq!(fake.attempts("ok"), 0, "no failover after the first byte");
    // The gateway is still healthy.
    assert_eq!(gw.chat(ask("chat", "again")).await.status(), 200);
    assert_eq!(gw.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_malformed_chunk_after_content_fails_cleanly() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["malformed-chunk"])]).await;
    let sse = Sse::read(gw.chat(ask_stream("chat", "hi")).await).await;
    assert_eq!(sse.text(), OK_TOKENS[..2].concat());
    assert!(!sse.done);
    let error = sse.error().expect("in-band error");
    assert!(
        error["message"].as_str().unwrap().contains("malformed"),
        "{error}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_stream() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["stall-after-3"])]).await;
    let mut response = gw.chat(ask_stream("chat", "hi")).await;
    let first = response.chunk().await.unwrap().expect("a first frame");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    drop(response);
    // The stream task notices the client is gone and ends, although upstream stalls.
    let tasks = gw.state.tasks().clone();
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !tasks.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stream task ends when its client leaves");
}
