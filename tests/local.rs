//! The local model through the gateway (real model files): the last target of every
//! route, the `local` alias, and its serving discipline.

use serde_json::{Value, json};

use crate::support::{FakeProvider, Gateway, Sse, ask, ask_stream, config_over};

const SMOLLM: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn local_section(extra: &str) -> String {
    format!(
        "\n[providers.local]\nkind = \"local\"\nmodel = \"{SMOLLM}\"\n\
         system_prompt = \"You are a helpful assistant.\"\n{extra}\n"
    )
}

fn capital(model: &str) -> Value {
    json!({
        "model": model,
        "temperature": 0,
        "max_tokens": 24,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]
    })
}

#[tokio::test]
async fn with_every_remote_down_the_local_model_answers() {
    let fake = FakeProvider::start().await;
    let mut toml = config_over(&fake, &[("chat", &["status-503"])]);
    toml.push_str("\n[models.strict]\ntargets = [\"fake:status-503#2\"]\nlocal_fallback = false\n");
    toml.push_str(&local_section(""));
    let gw = Gateway::start(&toml).await;
    let response = gw.chat(capital("chat")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ragway-target"], "local");
    let body: Value = response.json().await.unwrap();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    println!("local answer: {text:?}");
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(body["model"], "local");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    // The local model's tokens are counted for the dashboard's tokens/s.
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    let counted = |kind: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("ragway_local_tokens_total{{kind=\"{kind}\"}} ")))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(counted("prompt"), body["usage"]["prompt_tokens"].as_u64());
    assert_eq!(
        counted("completion"),
        body["usage"]["completion_tokens"].as_u64()
    );
    assert!(
        metrics.contains("ragway_local_queue_depth 0"),
        "the queue is empty again"
    );
    assert_eq!(
        fake.attempts("status-503"),
        3,
        "the remote target was tried first"
    );
    // A route may opt out of the fallback.
    assert_eq!(gw.chat(capital("strict")).await.status(), 503);
    let models: Value = gw.get("/v1/models").await.json().await.unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"local"), "{ids:?}");
}

#[tokio::test]
async fn greedy_streaming_equals_greedy_whole_answers() {
    let gw = Gateway::start(&local_section("")).await;
    let whole: Value = gw.chat(capital("local")).await.json().await.unwrap();
    let mut body = capital("local");
    body["stream"] = json!(true);
    let response = gw.chat(body).await;
    assert_eq!(response.headers()["x-ragway-target"], "local");
    let sse = Sse::read(response).await;
    assert!(sse.done);
    assert_eq!(
        sse.text(),
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let mut short = capital("local");
    short["max_tokens"] = json!(3);
    let body: Value = gw.chat(short).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn a_question_longer_than_the_context_is_refused_clearly() {
    let gw = Gateway::start(&local_section("")).await;
    let mut body = capital("local");
    body["messages"][0]["content"] = json!("word ".repeat(9_000)); // SmolLM2 holds 8,192
    let response = gw.chat(body).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "context_length_exceeded", "{error}");
    // The model is still serving.
    assert_eq!(gw.chat(capital("local")).await.status(), 200);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let gw = Gateway::start(&local_section("queue = 1\nretry.attempts = 1")).await;
    let long = |n: usize| {
        let mut body = ask_stream("local", &format!("Write a very long story number {n}."));
        body["max_tokens"] = json!(400);
        body
    };
    // One generates, one waits in the queue, the third is refused at once.
    let mut first = gw.chat(long(1)).await;
    assert_eq!(first.status(), 200);
    first.chunk().await.unwrap();
    let second = tokio::spawn({
        let http = gw.http();
        let url = format!("{}/v1/chat/completions", gw.url);
        let body = long(2);
        async move { http.post(url).json(&body).send().await.unwrap().status() }
    });
    gw.metric_reads("ragway_local_queue_depth 1").await;
    let third = gw.chat(ask("local", "hi")).await;
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    let body: Value = third.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue is full"),
        "{body}"
    );
    drop(first); // the client leaves: its generation stops and the queue moves
    assert_eq!(second.await.unwrap(), 200);
}

#[tokio::test]
async fn embeddings_are_served_in_the_openai_format() {
    let toml = "[embeddings]\nname = \"minilm\"\nmodel = \"models/all-MiniLM-L6-v2\"\n";
    let gw = Gateway::start(toml).await;
    let post = |body: Value| {
        let http = gw.http();
        let url = format!("{}/v1/embeddings", gw.url);
        async move { http.post(url).json(&body).send().await.unwrap() }
    };
    let one: Value = post(json!({"model": "minilm", "input": "hello world"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["object"], "list");
    assert_eq!(one["data"][0]["object"], "embedding");
    assert_eq!(one["data"][0]["embedding"].as_array().unwrap().len(), 384);
    assert!(one["usage"]["prompt_tokens"].as_u64().unwrap() >= 2);
    let many: Value = post(json!({"model": "minilm", "input": ["a cat", "hello world"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(many["data"].as_array().unwrap().len(), 2);
    assert_eq!(many["data"][1]["index"], 1);
    let a = one["data"][0]["embedding"].as_array().unwrap();
    let b = many["data"][1]["embedding"].as_array().unwrap();
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
        .fold(0.0, f64::max);
    assert!(
        diff < 1e-4,
        "the same text embeds the same alone or in a batch"
    );
    assert_eq!(
        post(json!({"model": "nope", "input": "x"})).await.status(),
        404
    );
    for bad in [
        json!({"model": "minilm", "input": []}),
        json!({"model": "minilm", "input": 5}),
        json!({"model": "minilm"}),
    ] {
        let response = post(bad.clone()).await;
        assert_eq!(response.status(), 400, "{bad}");
    }
}

/// multilingual-e5-small by config: a question in English lands nearer the
/// Chinese passage that answers it than a Chinese one that does not.
#[tokio::test]
async fn the_multilingual_embedder_reads_across_languages() {
    let toml = "[embeddings]\nname = \"e5\"\nmodel = \"models/e5-small-q4.bin\"\n";
    let gw = Gateway::start(toml).await;
    let texts = [
        "How many days do I have to return a product for a refund?",
        "商品签收后七天内可申请无理由退货，退款将在三个工作日内原路退回。",
        "员工入职满一年后，每年可享受五天带薪年假。",
        "What is the annual leave allowance for new employees?",
    ];
    let answer: Value = gw
        .http()
        .post(format!("{}/v1/embeddings", gw.url))
        .json(&json!({"model": "e5", "input": texts}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vectors: Vec<Vec<f64>> = answer["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert!(vectors.iter().all(|v| v.len() == 384));
    let cosine = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (refund, leave) = (&vectors[1], &vectors[2]);
    assert!(
        cosine(&vectors[0], refund) > cosine(&vectors[0], leave),
        "refund question"
    );
    assert!(
        cosine(&vectors[3], leave) > cosine(&vectors[3], refund),
        "leave question"
    );
    assert!(
        answer["usage"]["prompt_tokens"].as_u64().unwrap() > 40,
        "{answer}"
    );
}

/// The bundled Gemma 3 270M is the base model (its GGUF has no chat template): the
/// engine says so when it loads it; an instruction-tuned file passes quietly.
#[test]
fn a_gguf_without_a_chat_template_is_flagged_as_a_base_model() {
    let cpu = ragway_engine::device("cpu").unwrap();
    let gemma = ragway_engine::ChatModel::load(
        std::path::Path::new("models/gemma-3-270m-q4_k_m.gguf"),
        &cpu,
        true,
    )
    .unwrap();
    let warning = gemma.chat_warning().expect("Gemma 3 270M is flagged");
    assert!(warning.contains("base model"), "{warning}");
    let smollm = ragway_engine::ChatModel::load(std::path::Path::new(SMOLLM), &cpu, true).unwrap();
    assert_eq!(smollm.chat_warning(), None);
}

#[tokio::test]
async fn the_local_model_finishes_an_answer_a_provider_broke_off() {
    let fake = FakeProvider::start().await;
    let mut toml = config_over(&fake, &[("chat", &["story-cut-5"])]);
    toml.push_str(&local_section(""));
    let gw = Gateway::start(&toml).await;
    let mut asked = ask_stream("chat", "Count on, one word at a time.");
    asked["max_tokens"] = json!(12);
    asked["temperature"] = json!(0);
    let sse = Sse::read(gw.chat(asked).await).await;
    let given = crate::support::fake::story()
        .split_inclusive(' ')
        .take(5)
        .collect::<String>();
    let text = sse.text();
    println!("continued by the local model: {text:?}");
    assert!(sse.error().is_none(), "{}", sse.raw);
    assert!(
        text.starts_with(&given) && text.len() > given.len(),
        "{text:?}"
    );
    assert_eq!(sse.finish_reasons().len(), 1, "{}", sse.raw);
    assert!(sse.done);
    // Whole, too: the local model's words follow the provider's.
    let mut whole = ask("chat", "Count on, one word at a time.");
    whole["max_tokens"] = json!(12);
    let response = gw.chat(whole).await;
    assert_eq!(response.headers()["x-ragway-continued"], "local");
    let answer: Value = response.json().await.unwrap();
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.starts_with(&given) && content.len() > given.len(),
        "{content:?}"
    );
}
