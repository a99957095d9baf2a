//! Hedging (`hedge_after`): a first target slow to give its first token races the
//! next one, the first answer is served and the other cancelled; never more than
//! one extra request; a client that leaves cancels both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{FakeProvider, Gateway, MemoryAudit, Sse, ask, ask_stream, config_over};

/// The alias `chat` over `targets`, hedged after `hedge_after`, with the admin key
/// `admin` (to read the breakers).
fn hedged(fake: &FakeProvider, targets: &[&str], hedge_after: &str) -> String {
    let mut toml = config_over(fake, &[("chat", targets)]);
    toml.push_str(&format!("hedge_after = \"{hedge_after}\"\n"));
    toml.push_str("\n[auth]\nadmin_key_env = \"ADMIN\"\n");
    toml
}

/// Each target's calls in flight, by the admin API.
async fn in_flight(gw: &Gateway) -> Vec<(String, u64)> {
    let breakers: Value = gw
        .http()
        .get(format!("{}/admin/breakers", gw.url))
        .bearer_auth("admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    breakers["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let target = b["target"].as_str().unwrap().to_owned();
            (target, b["in_flight"].as_u64().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_slow_first_target_loses_to_the_hedge() {
    let fake = FakeProvider::start().await;
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let toml = hedged(&fake, &["slow-ttft-3000", "ok"], "200ms");
    let gw = Gateway::start_customized(&toml, &[("ADMIN", "admin")], move |p| p.audit = sink).await;
    for stream in [true, false] {
        let started = Instant::now();
        let body = match stream {
            true => ask_stream("chat", "hi"),
            false => ask("chat", "hi"),
        };
        let response = gw.chat(body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-ragway-target"], "fake:ok");
        let text = match stream {
            true => Sse::read(response).await.text(),
            false => {
                let answer: Value = response.json().await.unwrap();
                answer["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        assert_eq!(text, "Hello from the fake provider.");
        assert!(started.elapsed() < Duration::from_millis(2_500), "{stream}");
    }
    assert_eq!(fake.attempts("slow-ttft-3000"), 2, "once per call");
    assert_eq!(fake.attempts("ok"), 2, "one extra request per call");
    gw.idle().await;
    for record in audit.records() {
        let attempts: Vec<(String, Option<&str>, &str)> = record
            .attempts
            .iter()
            .map(|a| {
                let outcome = a.failure.as_ref().map_or("ok", |f| f.class);
                (a.target.to_string(), a.kind.name(), outcome)
            })
            .collect();
        assert_eq!(
            attempts,
            [
                ("fake:slow-ttft-3000".to_owned(), None, "hedged_out"),
                ("fake:ok".to_owned(), Some("hedge"), "ok"),
            ]
        );
    }
    // The loser's call was dropped, not left running.
    assert!(in_flight(&gw).await.iter().all(|(_, n)| *n == 0));
}

#[tokio::test]
async fn a_quick_first_target_is_never_hedged_and_a_failed_hedge_is_not_retried() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start_with_env(
        &hedged(&fake, &["ok", "ok#2"], "300ms"),
        &[("ADMIN", "admin")],
    )
    .await;
    let answer: Value = gw.chat(ask("chat", "hi")).await.json().await.unwrap();
    assert_eq!(answer["model"], "fake:ok");
    assert_eq!(fake.attempts("ok#2"), 0);

    // The hedge fails at once; the first target, slow but alive, still answers.
    let fake = FakeProvider::start().await;
    let toml = hedged(&fake, &["slow-ttft-600", "status-500"], "100ms");
    let gw = Gateway::start_with_env(&toml, &[("ADMIN", "admin")]).await;
    let response = gw.chat(ask("chat", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "fake:slow-ttft-600");
    assert_eq!(fake.attempts("status-500"), 1, "a hedge is one request");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_both() {
    let fake = FakeProvider::start().await;
    let toml = hedged(&fake, &["silent", "silent#2"], "100ms");
    let gw = Gateway::start_with_env(&toml, &[("ADMIN", "admin")]).await;
    let leaving = gw
        .http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&ask_stream("chat", "hi"))
        .timeout(Duration::from_millis(600))
        .send();
    let watched = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        in_flight(&gw).await
    };
    let (left, during) = tokio::join!(leaving, watched);
    assert!(left.is_err(), "the client gave up");
    assert_eq!(
        during.iter().map(|(_, n)| n).sum::<u64>(),
        2,
        "both calls were running: {during:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = in_flight(&gw).await;
        if now.iter().all(|(_, n)| *n == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "still in flight: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.attempts("silent"), 1);
    assert_eq!(fake.attempts("silent#2"), 1);
}

#[tokio::test]
async fn a_silent_first_target_costs_the_hedge_delay_not_the_first_token_deadline() {
    let mut took = Vec::new();
    for hedge in [Some("1s"), None] {
        let fake = FakeProvider::start().await;
        let toml = match hedge {
            Some(delay) => hedged(&fake, &["silent", "ok"], delay),
            None => config_over(&fake, &[("chat", &["silent", "ok"])]),
        };
        let gw = Gateway::start_with_env(&toml, &[("ADMIN", "admin")]).await;
        let started = Instant::now();
        let sse = Sse::read(gw.chat(ask_stream("chat", "hi")).await).await;
        assert_eq!(sse.text(), "Hello from the fake provider.");
        took.push(started.elapsed());
    }
    eprintln!(
        "a silent first target: hedged after 1 s, answered in {:?}; without hedging, {:?}",
        took[0], took[1]
    );
    assert!(took[0] < Duration::from_millis(2_000), "{took:?}");
    assert!(
        took[1] >= Duration::from_secs(10),
        "the first-token deadline: {took:?}"
    );
}
