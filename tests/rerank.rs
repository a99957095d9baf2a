//! `POST /v1/rerank`: a rerank alias's targets through breakers, retries and
//! failover, personal data replaced before ranking, the local embedder when no
//! target answers, the key's limits, one audit row per call, and bad input.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::support::keys::{ADMIN, new_key, sqlite_url};
use crate::support::{FakeProvider, Gateway, MemoryAudit, TempDir, config_over, expect_error};

async fn rerank(gw: &Gateway, key: &str, body: Value) -> reqwest::Response {
    gw.http()
        .post(format!("{}/v1/rerank", gw.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn rerank_alias(fake: &FakeProvider, targets: &[&str], extra: &str) -> String {
    let mut toml = config_over(fake, &[("chat", &["echo"])]);
    let targets: Vec<String> = targets.iter().map(|t| format!("\"fake:{t}\"")).collect();
    toml.push_str(&format!(
        "\n[models.rr]\nkind = \"rerank\"\ntargets = [{}]\n{extra}\n",
        targets.join(", ")
    ));
    toml
}

#[tokio::test]
async fn a_rerank_alias_ranks_on_its_target_after_failing_over() {
    let fake = FakeProvider::start().await;
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let toml = rerank_alias(&fake, &["status-503", "rerank"], "local_fallback = false");
    let gw = Gateway::start_customized(&toml, &[], move |p| p.audit = sink).await;
    let documents = [
        "The invoice for 13912345678 is in the drawer",
        "Sunny weather",
        "Every invoice is archived",
    ];
    let answer = rerank(
        &gw,
        "unused",
        json!({"model": "rr", "query": "Where is the invoice for 13912345678?",
            "documents": documents, "top_n": 2, "return_documents": true}),
    )
    .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-ragway-target"], "fake:rerank");
    let answer: Value = answer.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{answer}");
    assert_eq!(results[0]["index"], 0, "{answer}");
    assert_eq!(results[1]["index"], 2, "{answer}");
    assert!(results[0]["relevance_score"].as_f64() > results[1]["relevance_score"].as_f64());
    // The client's own text comes back; the ranker saw placeholders.
    assert_eq!(results[0]["document"]["text"], documents[0]);
    let seen = fake.last_request();
    assert_eq!(seen.path, "/v1/rerank");
    assert_eq!(seen.body["model"], "rerank");
    assert_eq!(seen.body["documents"].as_array().unwrap().len(), 3);
    assert!(
        !seen.body.to_string().contains("13912345678"),
        "{}",
        seen.body
    );
    assert!(fake.attempts("status-503") >= 2, "a 503 is retried");

    gw.idle().await;
    let records = audit.records();
    assert_eq!(records.len(), 1, "one row per call");
    let row = &records[0];
    assert_eq!(&*row.origin.route, "/v1/rerank");
    assert_eq!(row.target.as_deref(), Some("fake:rerank"));
    assert_eq!(row.pii, [("mobile", 2)]);
    assert!(row.attempts.len() > 1, "the failed attempts are recorded");
    assert!(row.usage.unwrap().prompt_tokens > 0);
    assert!(!row.prompt.contains("13912345678"));
}

#[tokio::test]
async fn with_no_target_answering_the_embedder_ranks() {
    let fake = FakeProvider::start().await;
    let mut toml = rerank_alias(&fake, &["rerank-bad"], "");
    toml.push_str(
        "\n[models.mine]\nkind = \"rerank\"\ntargets = []\n\
         \n[embeddings]\nname = \"all-minilm-l6-v2\"\nmodel = \"models/all-MiniLM-L6-v2\"\n",
    );
    let gw = Gateway::start(&toml).await;
    let ask = |model: &str| {
        json!({"model": model, "query": "How do I reset my password?", "documents": [
            "Our office is closed on public holidays.",
            "To reset your password, open the settings and choose security.",
            {"text": "The cafeteria serves lunch at noon."},
        ]})
    };
    for model in ["rr", "mine"] {
        let answer = rerank(&gw, "unused", ask(model)).await;
        assert_eq!(answer.status(), 200, "{model}");
        assert_eq!(
            answer.headers()["x-ragway-target"],
            "embedder:all-MiniLM-L6-v2",
            "{model}"
        );
        let answer: Value = answer.json().await.unwrap();
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0]["index"], 1, "{answer}");
        assert!(results[0].get("document").is_none());
        assert!(answer["usage"]["total_tokens"].as_u64().unwrap() > 0);
    }
    // The malformed answer was a failed attempt, not a ranking.
    assert_eq!(fake.attempts("rerank-bad"), 1);
}

#[tokio::test]
async fn a_rerank_is_admitted_against_the_keys_limits() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let mut config = rerank_alias(&fake, &["rerank"], "");
    config.push_str("\n[auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase_env = \"DB\"\n");
    let gw = Gateway::start_with_env(&config, &[("ADMIN", ADMIN), ("DB", &sqlite_url(&dir))]).await;
    let key = new_key(&gw, json!({"tenant": "t", "limits": {"rpm": 1}})).await;
    let ask = json!({"model": "rr", "query": "q", "documents": ["a q", "b"]});
    assert_eq!(rerank(&gw, &key, ask.clone()).await.status(), 200);
    let refused = expect_error(rerank(&gw, &key, ask).await, 429).await;
    assert_eq!(refused["code"], "rate_limit_exceeded");
    assert_eq!(fake.attempts("rerank"), 1);
}

#[tokio::test]
async fn bad_rerank_requests_are_refused_by_name() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&rerank_alias(&fake, &["rerank"], "")).await;
    let many: Vec<String> = (0..1001).map(|i| format!("d{i}")).collect();
    for (body, param) in [
        (json!({"model": "rr", "documents": ["a"]}), "query"),
        (
            json!({"model": "rr", "query": " ", "documents": ["a"]}),
            "query",
        ),
        (json!({"model": "rr", "query": "q"}), "documents"),
        (
            json!({"model": "rr", "query": "q", "documents": []}),
            "documents",
        ),
        (
            json!({"model": "rr", "query": "q", "documents": many}),
            "documents",
        ),
        (
            json!({"model": "rr", "query": "q", "documents": ["a", 5]}),
            "documents[1]",
        ),
        (
            json!({"model": "rr", "query": "q", "documents": ["a"], "top_n": 0}),
            "top_n",
        ),
        (
            json!({"model": "rr", "query": "q", "documents": ["a"], "return_documents": "yes"}),
            "return_documents",
        ),
        (
            json!({"model": "rr", "query": "q", "documents": ["a"], "rank_fields": ["x"]}),
            "rank_fields",
        ),
        // A chat alias is no ranker.
        (
            json!({"model": "chat", "query": "q", "documents": ["a"]}),
            "model",
        ),
    ] {
        let error = expect_error(rerank(&gw, "unused", body.clone()).await, 400).await;
        assert_eq!(error["param"], param, "{body}: {error}");
    }
    expect_error(
        rerank(
            &gw,
            "unused",
            json!({"model": "nope", "query": "q", "documents": ["a"]}),
        )
        .await,
        404,
    )
    .await;
    // Nor is a ranker a chat model.
    let chat = gw
        .chat(json!({"model": "rr", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(expect_error(chat, 400).await["param"], "model");
    assert_eq!(
        fake.requests().len(),
        0,
        "nothing refused reached the provider"
    );
}

#[test]
fn rerank_aliases_are_checked_with_the_config() {
    use ragway::config::{Config, ConfigError, Env};
    let problems = |toml: &str| match Config::from_toml(toml, &Env::default()) {
        Err(ConfigError::Invalid(problems)) => problems
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect::<Vec<_>>(),
        other => panic!("expected validation errors, got {other:?}"),
    };
    let provider = "[providers.sf]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n";
    let found = problems(&format!(
        "{provider}[models.a]\nkind = \"rerank\"\ntargets = []\n\
         [models.b]\nkind = \"ranker\"\ntargets = [\"sf:m\"]\n\
         [models.c]\nkind = \"rerank\"\ntargets = [\"sf:m\"]\nhedge_after = \"1s\"\n"
    ));
    for expected in [
        "models.a: ranks with nothing",
        "models.b.kind: `ranker` is not",
        "models.c: a rerank alias takes neither",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "{expected} in {found:?}"
        );
    }
    let fine = format!(
        "{provider}[models.r]\nkind = \"rerank\"\ntargets = [\"sf:BAAI/bge-reranker-v2-m3\"]\n"
    );
    Config::from_toml(&fine, &Env::default()).expect("a rerank alias with a target");
}
