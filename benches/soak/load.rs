//! The load: planned requests at a fixed rate, and the checks on their answers.

use std::path::Path;
use std::time::Duration;

use ragway::sanitize::check;
use serde_json::{Value, json};

use crate::gateway::Gateway;
use crate::{CLIENT_KEY, Settings};

pub struct Question {
    text: String,
    chinese: bool,
}

/// The labelled questions of the retrieval corpus.
pub fn questions(repo: &Path) -> Vec<Question> {
    let questions: Vec<Question> =
        std::fs::read_to_string(repo.join("tests/data/rag/questions.jsonl"))
            .expect("tests/data/rag/questions.jsonl")
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|q| Question {
                text: q["q"].as_str().unwrap_or_default().to_owned(),
                chinese: q["lang"] == "zh",
            })
            .collect();
    assert!(!questions.is_empty(), "no questions in questions.jsonl");
    questions
}

/// One planned request: what it sends, and what its answer must contain.
struct Planned {
    id: String,
    body: Value,
    stream: bool,
    expect: Vec<String>,
}

fn plan(i: u64, questions: &[Question], rng: &mut fastrand::Rng) -> Planned {
    let question = &questions[rng.usize(..questions.len())];
    let stream = rng.u8(..5) == 0;
    let (content, expect, temperature) = if rng.u8(..4) == 0 {
        (question.text.clone(), Vec::new(), Some(0))
    } else {
        let (phone, id, card) = (mobile(rng), id_card(rng), bank_card(rng));
        let content = if question.chinese {
            format!(
                "我的手机号是{phone}，身份证号{id}，银行卡号{card}。{}",
                question.text
            )
        } else {
            format!(
                "My phone is {phone}, ID card {id}, card {card}. {}",
                question.text
            )
        };
        // One in five may be cached: the next caller asking it gets this answer
        // back with their own data in it.
        let temperature = (rng.u8(..5) == 0).then_some(0);
        (content, vec![phone, id, card], temperature)
    };
    let mut body = json!({
        "model": "soak",
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
    });
    if let Some(t) = temperature {
        body["temperature"] = json!(t);
    }
    Planned {
        id: format!("soak-{i:07}"),
        body,
        stream,
        expect,
    }
}

fn mobile(rng: &mut fastrand::Rng) -> String {
    let second = [b'3', b'5', b'7', b'8', b'9'][rng.usize(..5)] as char;
    format!("1{second}{:09}", rng.u32(..1_000_000_000))
}

/// An 18-digit resident ID with a real region, birth date and check character.
fn id_card(rng: &mut fastrand::Rng) -> String {
    let first17 = format!(
        "{:02}0105{}{:02}{:02}{:03}",
        [11, 31, 44, 51][rng.usize(..4)],
        rng.u32(1950..2005),
        rng.u32(1..=12),
        rng.u32(1..=28),
        rng.u32(..1000)
    );
    let check = check::id_check_char(first17.as_bytes()) as char;
    format!("{first17}{check}")
}

/// A 19-digit UnionPay number whose last digit passes Luhn.
fn bank_card(rng: &mut fastrand::Rng) -> String {
    let stem = format!("6222{:014}", rng.u64(..100_000_000_000_000));
    (0..10)
        .map(|d| format!("{stem}{d}"))
        .find(|card| check::luhn(card.as_bytes()))
        .expect("one check digit passes")
}

/// What became of one request.
pub struct Outcome {
    /// When it was due, from the start of the load.
    pub due: Duration,
    pub latency: Duration,
    pub error: Option<String>,
    pub cache: String,
    pub cited: bool,
}

/// Sends `settings.total()` requests, request i at `start` + i / rate, and waits
/// for every answer (each is bounded by the client's timeout).
pub async fn drive(
    gateway: &Gateway,
    settings: &Settings,
    questions: &[Question],
    start: std::time::Instant,
) -> Vec<Outcome> {
    let url = format!("{}/v1/chat/completions", gateway.base);
    let mut rng = fastrand::Rng::with_seed(7);
    let start = tokio::time::Instant::from_std(start);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..settings.total() {
        let due = Duration::from_secs(i) / settings.rate as u32;
        tokio::time::sleep_until(start + due).await;
        let planned = plan(i, questions, &mut rng);
        let (client, url) = (gateway.client.clone(), url.clone());
        let sent = start + due;
        tasks.spawn(async move {
            let result = call(&client, &url, &planned).await;
            let latency = sent.elapsed();
            match result {
                Ok((cache, cited)) => Outcome {
                    due,
                    latency,
                    error: None,
                    cache,
                    cited,
                },
                Err(error) => Outcome {
                    due,
                    latency,
                    error: Some(format!("{}: {error}", planned.id)),
                    cache: String::new(),
                    cited: false,
                },
            }
        });
    }
    let mut outcomes = Vec::with_capacity(settings.total() as usize);
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("a request task panicked"));
    }
    outcomes.sort_by_key(|o| o.due);
    outcomes
}

/// Sends one request and checks its answer; the cache result and whether the answer
/// cited passages.
async fn call(
    client: &reqwest::Client,
    url: &str,
    planned: &Planned,
) -> Result<(String, bool), String> {
    let response = client
        .post(url)
        .bearer_auth(CLIENT_KEY)
        .header("x-request-id", &planned.id)
        .json(&planned.body)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let cache = response
        .headers()
        .get("x-ragway-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let text = response.text().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!("status {status}: {text}"));
    }
    let (content, cited) = if planned.stream {
        read_stream(&text)?
    } else {
        let answer: Value = serde_json::from_str(&text).map_err(|e| format!("json: {e}"))?;
        let content = answer["choices"][0]["message"]["content"]
            .as_str()
            .ok_or("no content")?
            .to_owned();
        (content, has_citations(&answer))
    };
    if !content.starts_with("You asked: ") {
        return Err(format!("unexpected answer: {content}"));
    }
    if let Some(missing) = planned.expect.iter().find(|v| !content.contains(*v)) {
        return Err(format!("{missing} not restored in: {content}"));
    }
    Ok((cache, cited))
}

/// A stream's text, checked to end with `[DONE]` and to carry no error.
fn read_stream(text: &str) -> Result<(String, bool), String> {
    let (mut content, mut cited, mut done) = (String::new(), false, false);
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| format!("chunk: {e}"))?;
        if chunk.get("error").is_some() {
            return Err(format!("error in stream: {chunk}"));
        }
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
        cited |= has_citations(&chunk);
    }
    if !done {
        return Err("stream ended without [DONE]".to_owned());
    }
    Ok((content, cited))
}

fn has_citations(value: &Value) -> bool {
    value["ragway"]["citations"]
        .as_array()
        .is_some_and(|c| !c.is_empty())
}
