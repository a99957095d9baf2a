//! A scriptable OpenAI-compatible provider on loopback. Its behaviour comes from the
//! requested model name (`ok`, `status-503`, `cut-after-40`, …; anything after a `#`
//! or `?` is ignored, so tests can keep counters apart and pass Qiniu's `?search`).
//! It counts the attempts it saw per model and keeps every request body.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

pub const OK_TOKENS: [&str; 6] = ["Hello", " from", " the", " fake", " provider", "."];

/// How many words the `story-*` behaviours' story has.
pub const STORY_WORDS: u64 = 30;

/// The whole story the `story-*` behaviours tell: `t0 t1 … t29 `.
pub fn story() -> String {
    numbered(STORY_WORDS).concat()
}

#[derive(Default)]
struct Seen {
    attempts: HashMap<String, Vec<Instant>>,
    requests: Vec<SeenRequest>,
}

#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub path: String,
    pub authorization: Option<String>,
    /// The W3C trace context the gateway sent.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub body: Value,
}

#[derive(Clone, Default)]
struct FakeState {
    seen: Arc<Mutex<Seen>>,
}

pub struct FakeProvider {
    pub addr: std::net::SocketAddr,
    state: FakeState,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeProvider {
    pub async fn start() -> FakeProvider {
        let state = FakeState::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            // DeepSeek's prefix completion lives under its beta base URL.
            .route("/beta/chat/completions", post(chat))
            .route("/maas/{model}/{chip}/chat/completions", post(chat))
            .route("/v1/rerank", post(rerank))
            .route("/v1/voice/asr", post(voice).get(live_asr))
            .route("/v1/voice/tts", post(voice))
            .route("/v1/images/ocr", post(voice))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeProvider {
            addr,
            state,
            _server: server,
        }
    }

    /// The base URL to configure (`…/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// How many requests named this model (the full name, tag included).
    pub fn attempts(&self, model: &str) -> usize {
        let seen = self.state.seen.lock().unwrap();
        seen.attempts.get(model).map_or(0, Vec::len)
    }

    /// When each attempt for this model arrived.
    pub fn attempt_times(&self, model: &str) -> Vec<Instant> {
        let seen = self.state.seen.lock().unwrap();
        seen.attempts.get(model).cloned().unwrap_or_default()
    }

    pub fn total_attempts(&self) -> usize {
        let seen = self.state.seen.lock().unwrap();
        seen.attempts.values().map(Vec::len).sum()
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().unwrap().requests.clone()
    }

    pub fn last_request(&self) -> SeenRequest {
        self.requests().pop().expect("the fake saw no request")
    }
}

async fn chat(
    State(state): State<FakeState>,
    path: Option<Path<(String, String)>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // Infini-AI style: the model is in the path.
    let model = match &path {
        Some(Path((model, _))) => model.clone(),
        None => body["model"].as_str().unwrap_or_default().to_owned(),
    };
    let attempt = note(&state, &model, &uri, &headers, &body);
    let stream = body["stream"].as_bool().unwrap_or(false);
    let behaviour = model
        .split(['#', '?'])
        .next()
        .unwrap_or_default()
        .to_owned();
    if let ("flap", Some(ms)) = with_number(&behaviour) {
        // 503 until `ms` after the first request for this model, then healthy.
        let first = state.seen.lock().unwrap().attempts[&model][0];
        if first.elapsed() < Duration::from_millis(ms) {
            let body = json!({"error": {"message": "flapping", "type": "server_error"}});
            return error(503, body, None);
        }
        return respond("ok", &model, attempt, stream, &body).await;
    }
    // A proxy that echoes the request's headers in its error: `echo-auth-400`,
    // `echo-auth-503` (as JSON), `echo-auth-502` as plain text.
    if let ("echo-auth", Some(status)) = with_number(&behaviour) {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let echoed = format!("request rejected; headers were {{\"Authorization\": \"{auth}\"}}");
        if status == 502 {
            return (StatusCode::BAD_GATEWAY, echoed).into_response();
        }
        let body =
            json!({"error": {"message": echoed, "type": "invalid_request_error", "code": auth}});
        return error(status as u16, body, None);
    }
    if let Some(full) = continues(&behaviour, &body) {
        return continue_answer(&behaviour, &model, &body, stream, uri.path(), &full);
    }
    respond(&behaviour, &model, attempt, stream, &body).await
}

/// Counts an attempt for `model` and keeps the request; the attempt's number.
fn note(
    state: &FakeState,
    model: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &Value,
) -> usize {
    let mut seen = state.seen.lock().unwrap();
    let list = seen.attempts.entry(model.to_owned()).or_default();
    list.push(Instant::now());
    let n = list.len();
    seen.requests.push(SeenRequest {
        path: uri.path().to_owned(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        tracestate: headers
            .get("tracestate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    n
}

/// `/v1/rerank`: `rerank` scores each document by the share of the query's words
/// it holds (SiliconFlow's answer shape); `rerank-reverse` ranks them in reverse;
/// `rerank-bad` names a document that is not there; any other behaviour is chat's (its errors, its stalls).
async fn rerank(
    State(state): State<FakeState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let attempt = note(&state, &model, &uri, &headers, &body);
    let behaviour = model.split(['#', '?']).next().unwrap_or_default();
    let words = |text: &str| -> Vec<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let query = words(body["query"].as_str().unwrap_or_default());
    let documents: Vec<String> = body["documents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d.as_str().unwrap_or_default().to_owned())
        .collect();
    match behaviour {
        "rerank" => {
            let mut results: Vec<Value> = documents
                .iter()
                .enumerate()
                .map(|(index, document)| {
                    let held = words(document);
                    let shared = query.iter().filter(|w| held.contains(w)).count();
                    let score = shared as f64 / query.len().max(1) as f64;
                    json!({"index": index, "relevance_score": score})
                })
                .collect();
            results.sort_by(|a, b| {
                b["relevance_score"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&a["relevance_score"].as_f64().unwrap())
            });
            let tokens = query.len() + documents.iter().map(|d| words(d).len()).sum::<usize>();
            axum::Json(json!({"id": "rerank-1", "results": results,
                "meta": {"tokens": {"input_tokens": tokens, "output_tokens": 0}}}))
            .into_response()
        }
        // The documents in the reverse of the order given.
        "rerank-reverse" => {
            let n = documents.len();
            let results: Vec<Value> = (0..n)
                .rev()
                .map(|index| json!({"index": index, "relevance_score": (index + 1) as f64 / n as f64}))
                .collect();
            axum::Json(json!({"results": results})).into_response()
        }
        "rerank-bad" => {
            axum::Json(json!({"results": [{"index": documents.len(), "relevance_score": 1.0}]}))
                .into_response()
        }
        _ => respond(behaviour, &model, attempt, false, &body).await,
    }
}

/// The speech and OCR endpoints, in Qiniu's shapes: `asr` recognises
/// [`HEARD`], `tts` speaks the text as base64 bytes, `ocr` reads [`HEARD`]; any
/// other behaviour is chat's (its errors, its stalls).
async fn voice(
    State(state): State<FakeState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // A speech synthesis names no model: its behaviour is its voice.
    let model = body["model"]
        .as_str()
        .or(body["audio"]["voice_type"].as_str())
        .unwrap_or_default()
        .to_owned();
    let attempt = note(&state, &model, &uri, &headers, &body);
    let behaviour = model.split(['#', '?']).next().unwrap_or_default();
    match behaviour {
        "asr" => {
            // Inline audio is decoded, and its size told back.
            use base64::Engine as _;
            let inline = body["audio"]["data"].as_str().map(|data| {
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_or(-1, |audio| audio.len() as i64)
            });
            axum::Json(json!({"reqid": "r1", "operation": "asr", "data": {
                "audio_info": {"duration": 2300, "inline_bytes": inline},
                "result": {"additions": {"duration": "2300"}, "text": HEARD}}}))
            .into_response()
        }
        "tts" => {
            use base64::Engine as _;
            let text = body["request"]["text"].as_str().unwrap_or_default();
            let audio = base64::engine::general_purpose::STANDARD.encode(format!("AUDIO:{text}"));
            axum::Json(json!({"reqid": "r2", "operation": "query", "sequence": -1,
                "data": audio, "addition": {"duration": "1200"}}))
            .into_response()
        }
        "ocr" => axum::Json(json!({"id": "o1", "text": HEARD})).into_response(),
        _ => respond(behaviour, &model, attempt, false, &body).await,
    }
}

/// The realtime recogniser, in Qiniu's framing. A provider header `x-fake:
/// status-503` refuses the upgrade. Otherwise the opening's `request.model_name`
/// is the behaviour: `asr` answers each audio frame with more of [`HEARD`] and
/// the last (negative sequence) with all of it, marked last, then closes;
/// `asr-error` answers the first audio frame with an error frame holding
/// [`PROVIDER_SECRET`]; `asr-silent` reads and never answers; `asr-drop` closes
/// after the first audio frame. The opening is kept as the request's body, and
/// each audio frame's size is kept under `"audio"` in a request of its own.
async fn live_asr(
    State(state): State<FakeState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    if headers.get("x-fake").is_some_and(|v| v == "status-503") {
        note(&state, "status-503", &uri, &headers, &Value::Null);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": {"message": "busy"}})),
        )
            .into_response();
    }
    upgrade.on_upgrade(move |socket| live_session(state, uri, headers, socket))
}

/// What a provider's error frame says that must never reach a client.
pub const PROVIDER_SECRET: &str = "internal trace at asr-node-7 key sk-upstream";

async fn live_session(
    state: FakeState,
    uri: axum::http::Uri,
    headers: HeaderMap,
    mut socket: axum::extract::ws::WebSocket,
) {
    use axum::extract::ws::Message;
    use ragway::generate::live::frame::{Frame, Kind};
    let Some(Ok(Message::Binary(first))) = socket.recv().await else {
        return;
    };
    let Ok(opening) = Frame::parse(&first).and_then(|f| f.json(1 << 16)) else {
        return;
    };
    let model = opening["request"]["model_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    note(&state, &model, &uri, &headers, &opening);
    let heard: Vec<char> = HEARD.chars().collect();
    let mut frames = 0;
    while let Some(Ok(Message::Binary(message))) = socket.recv().await {
        let Ok(frame) = Frame::parse(&message) else {
            return;
        };
        frames += 1;
        note(
            &state,
            &format!("{model}/audio"),
            &uri,
            &headers,
            &json!({"audio": message.len()}),
        );
        let reply = match model.as_str() {
            "asr-silent" => continue,
            "asr-drop" => return,
            "asr-error" => Frame::encode_json(
                Kind::Error,
                0,
                None,
                Some(45_000_001),
                &json!({"message": PROVIDER_SECRET}),
            ),
            _ if frame.is_last() => Frame::encode_json(
                Kind::Answer,
                0b0010,
                Some(-frames),
                None,
                &json!({"audio_info": {"duration": 320 * frames}, "result": {"text": HEARD}}),
            ),
            _ => {
                let so_far: String = heard.iter().take(3 * frames as usize).collect();
                Frame::encode_json(
                    Kind::Answer,
                    0,
                    Some(frames),
                    None,
                    &json!({"result": {"text": so_far}}),
                )
            }
        };
        let last = frame.is_last() || model == "asr-error";
        if socket.send(Message::Binary(reply)).await.is_err() || last {
            break;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// What the fake's speech recognition and OCR read.
pub const HEARD: &str = "请拨打 13912345678 联系我";

/// The whole answer a continuing behaviour knows (`story-next`, `story-vllm`,
/// `story-deepseek`, `story-refuse`, `story-next-cut-N`: the story; `echo-next`:
/// the user's text).
fn continues(behaviour: &str, body: &Value) -> Option<String> {
    match with_number(behaviour).0 {
        "story-next" | "story-vllm" | "story-deepseek" | "story-refuse" | "story-next-cut"
        | "story-think" => Some(story()),
        "echo-next" => Some(last_user_text(body)),
        _ => None,
    }
}

/// The rest of `full` after a final assistant message's text, in words (or all of
/// it, without one), as each dialect asks to be told: a trailing assistant message
/// as it is (`-next`), with vLLM's `continue_final_message` and
/// `add_generation_prompt: false`, or DeepSeek's `prefix: true` at `/beta`;
/// `story-refuse` takes no prefill; `story-next-cut-N` continues but is cut after N
/// words. A prefix that is not the start of `full` is a 400, so a repeated or
/// missing word shows.
fn continue_answer(
    behaviour: &str,
    model: &str,
    body: &Value,
    stream: bool,
    path: &str,
    full: &str,
) -> Response {
    let refuse = |why: &str| {
        error(
            400,
            json!({"error": {"message": why, "type": "invalid_request_error"}}),
            None,
        )
    };
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let words =
        |text: &str| -> Vec<String> { text.split_inclusive(' ').map(str::to_owned).collect() };
    if last["role"] != "assistant" {
        return answer(model, &words(full), stream, Script::default());
    }
    let prefix = last["content"].as_str().unwrap_or_default();
    let dialect_kept = match behaviour {
        "story-refuse" => false,
        "story-vllm" => {
            body["continue_final_message"] == true && body["add_generation_prompt"] == false
        }
        "story-deepseek" => last["prefix"] == true && path.starts_with("/beta/"),
        _ => true,
    };
    if !dialect_kept {
        return refuse("this request's final assistant message is not supported here");
    }
    let script = match with_number(behaviour) {
        ("story-next-cut", Some(n)) => Script {
            end: End::Cut(n as usize),
            ..Script::default()
        },
        // A reasoning model: it thinks before it goes on.
        ("story-think", _) => Script {
            reasoning: Some(vec!["Going on".into(), " from there.".into()]),
            ..Script::default()
        },
        _ => Script::default(),
    };
    match full.strip_prefix(prefix) {
        Some(rest) => answer(model, &words(rest), stream, script),
        None => refuse("the assistant's text is not the start of the answer"),
    }
}

/// A listener that accepts connections and closes them before sending anything: a
/// provider that resets before headers. Returns its base URL and a counter of the
/// connections it took.
pub async fn resetting_listener() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Linger 0: the close is a reset, not a clean end.
            let _ = socket.set_zero_linger();
            drop(socket);
        }
    });
    (url, count)
}

/// Splits `name-N` into (`name`, N).
fn with_number(behaviour: &str) -> (&str, Option<u64>) {
    match behaviour.rsplit_once('-') {
        Some((name, n)) if n.parse::<u64>().is_ok() => (name, n.parse().ok()),
        _ => (behaviour, None),
    }
}

async fn respond(
    behaviour: &str,
    model: &str,
    attempt: usize,
    stream: bool,
    body: &Value,
) -> Response {
    let (name, n) = with_number(behaviour);
    match name {
        "ok" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script::default(),
        ),
        "echo" => {
            let text = last_user_text(body);
            answer(model, &[text], stream, Script::default())
        }
        // The user's text back in pieces of n characters, so that a placeholder in it
        // arrives split across chunks.
        "echo-split" => {
            let chars: Vec<char> = last_user_text(body).chars().collect();
            let pieces: Vec<String> = chars
                .chunks(n.unwrap_or(3).max(1) as usize)
                .map(|c| c.iter().collect())
                .collect();
            answer(model, &pieces, stream, Script::default())
        }
        // A call of the tool `lookup` with the user's text as its `query`, the
        // arguments streamed in pieces of n characters.
        "tool-echo" => {
            let arguments = json!({"query": last_user_text(body)}).to_string();
            tool_call(model, &arguments, stream, n.unwrap_or(4) as usize)
        }
        "tokens" => answer(model, &numbered(n.unwrap_or(10)), stream, Script::default()),
        // The `ok` answer, n of its 7 prompt tokens from the provider's cache
        // (OpenAI's `prompt_tokens_details`, or DeepSeek's field).
        "cached" | "cache-hit" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script {
                cached: Some((n.unwrap_or(5), name == "cache-hit")),
                ..Script::default()
            },
        ),
        // `n` choices, each "choice I: <last user text>"; streamed interleaved.
        "choices" => choices(model, body, stream, true),
        // The same, but the body closes once choice 0 has finished (no `[DONE]`).
        "choices-cut" => choices(model, body, stream, false),
        "reasoning" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script {
                reasoning: Some(vec!["Let me".into(), " think.".into()]),
                ..Script::default()
            },
        ),
        "fail-once" if attempt == 1 => error(
            500,
            json!({"error": {"message": "internal error", "type": "server_error"}}),
            None,
        ),
        "fail-once" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script::default(),
        ),
        "status" => {
            let status = n.unwrap_or(500) as u16;
            error(
                status,
                json!({"error": {"message": format!("upstream status {status}"), "type": "server_error"}}),
                None,
            )
        }
        "retry-after" => error(
            429,
            json!({"error": {"message": "rate limited", "type": "rate_limit_error"}}),
            Some(n.unwrap_or(1)),
        ),
        "price-not-set" => error(
            503,
            json!({"error": {"message": format!("the price of the model is not set (model: {model})"), "type": "quota_exceeded_error"}}),
            None,
        ),
        "auth-missing" => error(
            401,
            json!({"error": "authorization header missing", "status": false}),
            None,
        ),
        "deepseek" => {
            let code = n.unwrap_or(50003);
            let status = (code / 100) as u16;
            error(
                status,
                json!({"code": code, "message": format!("deepseek error {code}")}),
                None,
            )
        }
        "context-length" => error(
            400,
            json!({"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error", "code": "context_length_exceeded"}}),
            None,
        ),
        "content-filter" => error(
            400,
            json!({"error": {"message": "Input data may contain inappropriate content.", "type": "invalid_request_error", "code": "content_policy_violation"}}),
            None,
        ),
        "error-body" => (
            StatusCode::OK,
            axum::Json(json!({"error": {"message": "model timeout", "code": 50003}})),
        )
            .into_response(),
        "drip" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script {
                gap: Duration::from_millis(n.unwrap_or(100)),
                ..Script::default()
            },
        ),
        "slow-ttft" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script {
                first_delay: Duration::from_millis(n.unwrap_or(500)),
                ..Script::default()
            },
        ),
        // The story, broken after n words: cut, stalled, a malformed chunk, an error
        // event.
        "story-cut" | "story-stall" | "story-malformed" | "story-error" | "story-reason-cut"
        | "story-refused" => {
            let n = n.unwrap_or(5) as usize;
            let mut script = Script::default();
            match name {
                "story-cut" => script.end = End::Cut(n),
                "story-refused" => script.refused_after = Some(n),
                "story-reason-cut" => {
                    script.reasoning = Some(vec!["Let me".into(), " think.".into()]);
                    script.end = End::Cut(n);
                }
                "story-stall" => script.end = End::Stall(n),
                "story-malformed" => script.malformed_after = Some(n),
                _ => script.error_after = Some(n),
            }
            answer(model, &numbered(STORY_WORDS), stream, script)
        }
        // The user's text in pieces of 3 characters, cut after n pieces (so that a
        // placeholder in it breaks across the cut).
        "echo-cut" => {
            let chars: Vec<char> = last_user_text(body).chars().collect();
            let pieces: Vec<String> = chars.chunks(3).map(|c| c.iter().collect()).collect();
            let script = Script {
                end: End::Cut(n.unwrap_or(2) as usize),
                ..Script::default()
            };
            answer(model, &pieces, stream, script)
        }
        "cut-after" => answer(
            model,
            &numbered(n.unwrap_or(40) + 20),
            stream,
            Script {
                end: End::Cut(n.unwrap_or(40) as usize),
                ..Script::default()
            },
        ),
        "finish-then-stall" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script {
                end: End::FinishThenStall,
                ..Script::default()
            },
        ),
        "stall-after" => answer(
            model,
            &numbered(n.unwrap_or(3) + 20),
            stream,
            Script {
                end: End::Stall(n.unwrap_or(3) as usize),
                ..Script::default()
            },
        ),
        "malformed-chunk" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script {
                malformed_after: Some(n.unwrap_or(2) as usize),
                ..Script::default()
            },
        ),
        "no-done" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script {
                end: End::NoDone,
                ..Script::default()
            },
        ),
        "bare-json" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script {
                bare_json: true,
                end: End::NoDone,
                ..Script::default()
            },
        ),
        "blocked" => answer(
            model,
            &OK_TOKENS.map(String::from),
            stream,
            Script {
                blocked_after: Some(2),
                bare_json: true,
                ..Script::default()
            },
        ),
        "role-then-die" => {
            let role = chunk(model, json!({"role": "assistant"}), None);
            sse_body(vec![(Duration::ZERO, sse(&role))], false)
        }
        "silent" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            error(504, json!({"error": {"message": "never"}}), None)
        }
        _ => error(
            404,
            json!({"error": {"message": format!("The model `{model}` does not exist"), "type": "invalid_request_error", "code": "model_not_found"}}),
            None,
        ),
    }
}

fn numbered(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("t{i} ")).collect()
}

fn last_user_text(body: &Value) -> String {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.iter().rev().find(|m| m["role"] == "user");
    match last.map(|m| &m["content"]) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn error(status: u16, body: Value, retry_after: Option<u64>) -> Response {
    let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
    }
    response
}

#[derive(Default, Clone, Copy, PartialEq)]
enum End {
    #[default]
    Done,
    NoDone,
    /// Close after this many tokens, with no finish chunk.
    Cut(usize),
    /// Stop sending after this many tokens, and keep the connection open.
    Stall(usize),
    /// Send the whole answer and its finish chunk, then neither `[DONE]` nor close.
    FinishThenStall,
}

#[derive(Default)]
struct Script {
    first_delay: Duration,
    /// The pause between chunks after the first.
    gap: Duration,
    reasoning: Option<Vec<String>>,
    end: End,
    bare_json: bool,
    malformed_after: Option<usize>,
    /// An error event instead of this token, then the body closes.
    error_after: Option<usize>,
    /// The same, a refusal on content grounds.
    refused_after: Option<usize>,
    blocked_after: Option<usize>,
    /// Prompt tokens served from the provider's cache, and whether they are told
    /// in DeepSeek's words (`prompt_cache_hit_tokens`) or OpenAI's.
    cached: Option<(u64, bool)>,
}

fn usage(completion_tokens: usize, cached: Option<(u64, bool)>) -> Value {
    let mut usage = json!({"prompt_tokens": 7, "completion_tokens": completion_tokens, "total_tokens": 7 + completion_tokens});
    match cached {
        Some((n, true)) => usage["prompt_cache_hit_tokens"] = json!(n),
        Some((n, false)) => usage["prompt_tokens_details"] = json!({"cached_tokens": n}),
        None => {}
    }
    usage
}

fn answer(model: &str, tokens: &[String], stream: bool, script: Script) -> Response {
    if !stream {
        return whole(model, tokens, script);
    }
    let frame = |value: &Value| {
        if script.bare_json {
            format!("{value}\n\n")
        } else {
            sse(value)
        }
    };
    let mut frames = Vec::new();
    let mut delay = script.first_delay;
    let mut push = |text: String, frames: &mut Vec<(Duration, String)>| {
        frames.push((delay, text));
        delay = script.gap;
    };
    push(
        frame(&chunk(
            model,
            json!({"role": "assistant", "content": ""}),
            None,
        )),
        &mut frames,
    );
    for piece in script.reasoning.iter().flatten() {
        push(
            frame(&chunk(model, json!({"reasoning_content": piece}), None)),
            &mut frames,
        );
    }
    for (i, token) in tokens.iter().enumerate() {
        if script.malformed_after == Some(i) {
            push(
                "data: {\"choices\": [{\"delta\": {\"content\": \n\n".to_owned(),
                &mut frames,
            );
        }
        if script.refused_after == Some(i) {
            let event = json!({"error": {"message": "Output data may contain inappropriate content.",
                "type": "invalid_request_error", "code": "content_filter"}});
            push(frame(&event), &mut frames);
            return sse_body(frames, false);
        }
        if script.error_after == Some(i) {
            let event =
                json!({"error": {"message": "the model is overloaded", "type": "server_error"}});
            push(frame(&event), &mut frames);
            return sse_body(frames, false);
        }
        if script.blocked_after == Some(i) {
            let mut blocked = chunk(model, json!({}), None);
            blocked["blocked"] = json!(true);
            push(frame(&blocked), &mut frames);
            return sse_body(frames, false);
        }
        match script.end {
            End::Cut(n) if i == n => return sse_body(frames, false),
            End::Stall(n) if i == n => return sse_body(frames, true),
            _ => {}
        }
        let mut c = chunk(model, json!({"content": token}), None);
        if script.bare_json {
            // Infini-AI sends object and created only in the last chunk.
            c.as_object_mut().unwrap().remove("object");
            c.as_object_mut().unwrap().remove("created");
        }
        push(frame(&c), &mut frames);
    }
    push(frame(&chunk(model, json!({}), Some("stop"))), &mut frames);
    let mut usage_chunk = chunk(model, json!({}), None);
    usage_chunk["choices"] = json!([]);
    usage_chunk["usage"] = usage(tokens.len(), script.cached);
    push(frame(&usage_chunk), &mut frames);
    if script.end == End::Done {
        push("data: [DONE]\n\n".to_owned(), &mut frames);
    }
    sse_body(frames, script.end == End::FinishThenStall)
}

fn choices(model: &str, body: &Value, stream: bool, whole_answer: bool) -> Response {
    let n = body["n"].as_u64().unwrap_or(1);
    let echo = last_user_text(body);
    let texts: Vec<String> = (0..n).map(|i| format!("choice {i}: {echo}")).collect();
    if !stream {
        let choices: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                json!({"index": i, "message": {"role": "assistant", "content": text},
                       "finish_reason": "stop"})
            })
            .collect();
        return axum::Json(json!({
            "id": "fake-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": choices, "usage": usage(n as usize, None),
        }))
        .into_response();
    }
    let with_index = |i: usize, delta: Value, finish: Option<&str>| {
        let mut c = chunk(model, delta, finish);
        c["choices"][0]["index"] = json!(i);
        (Duration::ZERO, sse(&c))
    };
    // Three characters at a time, the choices taking turns.
    let pieces: Vec<Vec<String>> = texts
        .iter()
        .map(|t| {
            let chars: Vec<char> = t.chars().collect();
            chars.chunks(3).map(|p| p.iter().collect()).collect()
        })
        .collect();
    let mut frames: Vec<(Duration, String)> = (0..texts.len())
        .map(|i| with_index(i, json!({"role": "assistant", "content": ""}), None))
        .collect();
    let longest = pieces.iter().map(Vec::len).max().unwrap_or(0);
    for step in 0..longest {
        for (i, parts) in pieces.iter().enumerate() {
            if let Some(part) = parts.get(step) {
                frames.push(with_index(i, json!({"content": part}), None));
            }
        }
    }
    frames.push(with_index(0, json!({}), Some("stop")));
    if !whole_answer {
        return sse_body(frames, false);
    }
    for i in 1..texts.len() {
        frames.push(with_index(i, json!({}), Some("stop")));
    }
    frames.push((Duration::ZERO, "data: [DONE]\n\n".to_owned()));
    sse_body(frames, false)
}

fn tool_call(model: &str, arguments: &str, stream: bool, piece: usize) -> Response {
    let call = |arguments: &str| {
        json!({"index": 0, "id": "call_1", "type": "function",
               "function": {"name": "lookup", "arguments": arguments}})
    };
    if !stream {
        let message =
            json!({"role": "assistant", "content": null, "tool_calls": [call(arguments)]});
        return axum::Json(json!({
            "id": "fake-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        }))
        .into_response();
    }
    let chars: Vec<char> = arguments.chars().collect();
    let mut frames = vec![(
        Duration::ZERO,
        sse(&chunk(model, json!({"role": "assistant"}), None)),
    )];
    for (i, part) in chars.chunks(piece.max(1)).enumerate() {
        let part: String = part.iter().collect();
        let delta = if i == 0 {
            json!({"tool_calls": [call(&part)]})
        } else {
            json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
        };
        frames.push((Duration::ZERO, sse(&chunk(model, delta, None))));
    }
    frames.push((
        Duration::ZERO,
        sse(&chunk(model, json!({}), Some("tool_calls"))),
    ));
    frames.push((Duration::ZERO, "data: [DONE]\n\n".to_owned()));
    sse_body(frames, false)
}

fn whole(model: &str, tokens: &[String], script: Script) -> Response {
    let mut message = json!({"role": "assistant", "content": tokens.concat()});
    if let Some(reasoning) = &script.reasoning {
        message["reasoning_content"] = json!(reasoning.concat());
    }
    let mut body = json!({
        "id": "fake-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage(tokens.len(), script.cached),
    });
    if script.blocked_after.is_some() {
        body["blocked"] = json!(true);
    }
    let delay = script.first_delay;
    let response = axum::Json(body).into_response();
    if delay.is_zero() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let delayed = futures_util::stream::once(async move {
        tokio::time::sleep(delay).await;
        axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| e.to_string())
    });
    Response::from_parts(parts, Body::from_stream(delayed))
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "fake-chunk",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

fn sse(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// Sends each frame after its delay; then closes, or with `hang` keeps the
/// connection open without sending more.
fn sse_body(frames: Vec<(Duration, String)>, hang: bool) -> Response {
    let body = futures_util::stream::unfold(
        (frames.into_iter(), hang),
        |(mut frames, hang)| async move {
            match frames.next() {
                Some((delay, text)) => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Some((Ok::<_, Infallible>(Bytes::from(text)), (frames, hang)))
                }
                None if hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    None
                }
                None => None,
            }
        },
    );
    let mut response = Response::new(Body::from_stream(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    response
}
