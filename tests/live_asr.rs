//! The realtime speech recogniser: a WebSocket on `/v1/voice/asr` in Qiniu's
//! binary framing, relayed frame by frame to the alias's targets. The client
//! side here writes its frames byte by byte as Qiniu's example client does.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use ragway::call::Outcome;
use ragway::generate::live::frame::{Frame, Kind};

use crate::support::fake::{HEARD, PROVIDER_SECRET};
use crate::support::keys::{ADMIN, new_key, sqlite_url, time_until};
use crate::support::{FakeProvider, Gateway, MemoryAudit, TempDir, config_over, refusing_address};

type Socket = WebSocketStream<TcpStream>;

/// An alias `asr` whose first target cannot be reached, and the given targets
/// after it.
fn live_config(fake: &FakeProvider, targets: &[&str]) -> String {
    let down = refusing_address();
    let mut toml = config_over(fake, &[("chat", &["echo"])]);
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    toml.push_str(&format!(
        "\n[providers.down]\nkind = \"openai\"\nbase_url = \"http://{down}/v1\"\n\
         [providers.busy]\nkind = \"openai\"\nbase_url = \"{}\"\nheaders = {{ \"x-fake\" = \"status-503\" }}\n\
         [providers.quiet]\nkind = \"openai\"\nbase_url = \"{}\"\nidle_timeout = \"300ms\"\n\
         [models.asr]\nkind = \"asr\"\ntargets = [\"down:asr\", {}]\n",
        fake.base_url(),
        fake.base_url(),
        targets.join(", ")
    ));
    toml
}

async fn open(gw: &Gateway, key: &str) -> Socket {
    let address = gw.url.trim_start_matches("http://");
    let tcp = TcpStream::connect(address).await.unwrap();
    let mut request = format!("ws://{address}/v1/voice/asr")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    tokio_tungstenite::client_async(request, tcp)
        .await
        .unwrap()
        .0
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A frame as Qiniu's example client writes it: version and header size,
/// message type and flags, serialisation and compression (gzip), a reserved
/// byte; the sequence; the payload's size; the payload.
fn qiniu_frame(
    message_type: u8,
    flags: u8,
    serialization: u8,
    sequence: i32,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = vec![
        0x11,
        (message_type << 4) | flags,
        (serialization << 4) | 1,
        0,
    ];
    frame.extend(sequence.to_be_bytes());
    frame.extend(u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend(payload);
    frame
}

fn opening(model: &str) -> Vec<u8> {
    let request = json!({
        "user": {"uid": "13812345678"},
        "audio": {"format": "pcm", "sample_rate": 16000, "bits": 16, "channel": 1, "codec": "raw"},
        "request": {"model_name": model, "enable_punc": true},
    });
    qiniu_frame(0b0001, 0b0001, 1, 1, &gzip(request.to_string().as_bytes()))
}

/// Audio frame `sequence` (from 2); the last has its sequence negated.
fn audio(sequence: i32, last: bool) -> Vec<u8> {
    let pcm = gzip(&[0u8; 3200]);
    match last {
        true => qiniu_frame(0b0010, 0b0011, 0, -sequence, &pcm),
        false => qiniu_frame(0b0010, 0b0001, 0, sequence, &pcm),
    }
}

async fn send(socket: &mut Socket, frame: Vec<u8>) {
    socket.send(Message::Binary(frame.into())).await.unwrap();
}

/// One frame from the gateway, read: (kind, error code, JSON, last).
type Heard = (Kind, Option<u32>, Value, bool);

/// Every frame until the gateway closes, and its close code.
async fn rest(socket: &mut Socket) -> (Vec<Heard>, Option<u16>) {
    let mut heard = Vec::new();
    let read = async {
        while let Some(message) = socket.next().await {
            match message.unwrap() {
                Message::Binary(bytes) => {
                    let frame = Frame::parse(&bytes).unwrap();
                    let value = frame.json(1 << 16).unwrap();
                    heard.push((frame.kind, frame.code, value, frame.is_last()));
                }
                Message::Close(close) => return close.map(|c| u16::from(c.code)),
                _ => {}
            }
        }
        None
    };
    let code = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the gateway ends the session");
    (heard, code)
}

#[tokio::test]
async fn a_session_is_relayed_frame_by_frame_after_failover_and_recorded_once() {
    let fake = FakeProvider::start().await;
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let config = live_config(&fake, &["busy:asr", "fake:asr"]);
    let gw = Gateway::start_customized(&config, &[], move |p| p.audit = sink).await;

    let mut socket = open(&gw, "unused").await;
    send(&mut socket, opening("asr")).await;
    for sequence in 2..5 {
        send(&mut socket, audio(sequence, false)).await;
    }
    send(&mut socket, audio(5, true)).await;
    let (heard, close) = rest(&mut socket).await;
    assert_eq!(close, Some(1000));
    // Each audio frame answered as the recogniser answered it, the last with all
    // it heard: the provider's own text, its number as it was said.
    assert_eq!(heard.len(), 4, "{heard:?}");
    assert!(heard.iter().all(|h| h.0 == Kind::Answer));
    assert_eq!(heard[0].2["result"]["text"], "请拨打");
    assert_eq!(
        (&heard[3].2["result"]["text"], heard[3].3),
        (&json!(HEARD), true)
    );

    // The target saw the opening with its own model and no user id of the
    // client's, then every audio frame as it was sent.
    assert!(
        fake.attempts("status-503") >= 1,
        "the refusing target was tried"
    );
    let seen = fake.requests();
    let opening = seen.iter().find(|r| r.body["request"].is_object()).unwrap();
    assert_eq!(opening.body["request"]["model_name"], "asr");
    assert_eq!(opening.body["request"]["enable_punc"], true);
    assert_eq!(opening.body["audio"]["sample_rate"], 16000);
    assert!(
        !opening.body.to_string().contains("13812345678"),
        "{}",
        opening.body
    );
    let sizes: Vec<&Value> = seen
        .iter()
        .filter_map(|r| r.body.get("audio").filter(|a| a.is_u64()))
        .collect();
    assert_eq!(sizes.len(), 4);
    assert!(sizes.iter().all(|&s| *s == json!(audio(2, false).len())));

    time_until(async || !audit.records().is_empty()).await;
    let records = audit.records();
    assert_eq!(records.len(), 1, "one row per session");
    let row = &records[0];
    assert_eq!(&*row.origin.route, "/v1/voice/asr");
    assert_eq!(row.outcome, Outcome::Ok);
    assert_eq!(row.target.as_deref(), Some("fake:asr"));
    assert!(row.stream);
    let failed: Vec<&str> = row
        .attempts
        .iter()
        .filter(|a| a.failure.is_some())
        .map(|a| &*a.target)
        .collect();
    assert!(
        failed.contains(&"down:asr") && failed.contains(&"busy:asr"),
        "{:?}",
        row.attempts
    );
    // The final text, its number a placeholder; sizes and formats, no audio.
    assert!(row.answer.contains("<PHONE_1>"), "{}", row.answer);
    assert!(!row.answer.contains("13912345678"), "{}", row.answer);
    let summary: Value = serde_json::from_str(&row.prompt).unwrap();
    assert_eq!(summary["frames"], 4);
    assert_eq!(summary["bytes"], 4 * audio(2, false).len());
    assert_eq!(summary["audio"]["format"], "pcm");
    assert!(row.time_to_first_token.is_some());
}

#[tokio::test]
async fn a_failing_recogniser_ends_the_session_without_its_words() {
    let fake = FakeProvider::start().await;
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let config = live_config(
        &fake,
        &["fake:asr-error", "fake:asr-drop", "quiet:asr-silent"],
    );
    let config = config.replace("targets = [\"down:asr\", ", "targets = [");
    // Three aliases, one behaviour each.
    let config = format!(
        "{config}\n[models.drop]\nkind = \"asr\"\ntargets = [\"fake:asr-drop\"]\n\
         [models.silent]\nkind = \"asr\"\ntargets = [\"quiet:asr-silent\"]\n"
    );
    let gw = Gateway::start_customized(&config, &[], move |p| p.audit = sink).await;
    for alias in ["asr", "drop", "silent"] {
        let mut socket = open(&gw, "unused").await;
        send(&mut socket, opening(alias)).await;
        send(&mut socket, audio(2, false)).await;
        let (heard, close) = rest(&mut socket).await;
        let (kind, code, error, _) = heard.last().unwrap_or_else(|| panic!("{alias}: no frame"));
        assert_eq!(
            (kind, code),
            (&Kind::Error, &Some(502)),
            "{alias}: {heard:?}"
        );
        assert_eq!(
            error["error"]["code"], "stream_interrupted",
            "{alias}: {error}"
        );
        assert!(!error.to_string().contains(PROVIDER_SECRET), "{error}");
        assert_eq!(close, Some(1011), "{alias}");
    }
    time_until(async || audit.records().len() == 3).await;
    for row in audit.records() {
        assert_eq!(row.outcome, Outcome::Interrupted, "{}", row.request_id);
        assert_eq!(row.error, Some("stream_interrupted"));
    }
}

#[tokio::test]
async fn bad_openings_are_refused_by_name_and_reach_no_provider() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&live_config(&fake, &["fake:asr"])).await;
    let request = |value: Value| qiniu_frame(1, 1, 1, 1, &gzip(value.to_string().as_bytes()));
    let audio_params = json!({"format": "pcm", "sample_rate": 16000});
    let bomb = qiniu_frame(1, 1, 1, 1, &gzip(&vec![b' '; 1 << 20]));
    for (first, code, param) in [
        (audio(2, false), 400, Value::Null),
        (bomb, 400, Value::Null),
        (vec![0x11, 0x10, 0x11], 400, Value::Null),
        (
            request(json!({"audio": audio_params, "request": {}})),
            400,
            json!("request.model_name"),
        ),
        (
            request(json!({"audio": audio_params, "request": {"model_name": "nope"}})),
            404,
            json!("model"),
        ),
        (
            request(json!({"audio": audio_params, "request": {"model_name": "chat"}})),
            400,
            json!("model"),
        ),
        (
            request(json!({"audio": {"format": "flac"}, "request": {"model_name": "asr"}})),
            400,
            json!("audio.format"),
        ),
        (
            request(
                json!({"audio": {"format": "pcm", "sample_rate": 7}, "request": {"model_name": "asr"}}),
            ),
            400,
            json!("audio.sample_rate"),
        ),
        (
            request(json!({"audio": audio_params, "request": {"model_name": "asr"}, "extra": 1})),
            400,
            json!("extra"),
        ),
    ] {
        let mut socket = open(&gw, "unused").await;
        send(&mut socket, first.clone()).await;
        let (heard, close) = rest(&mut socket).await;
        let (kind, got, error, _) = &heard[0];
        assert_eq!((kind, got), (&Kind::Error, &Some(code)), "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
        assert_eq!(close, Some(1008));
    }
    let mut socket = open(&gw, "unused").await;
    socket.send(Message::Text("{}".into())).await.unwrap();
    let (heard, _) = rest(&mut socket).await;
    assert!(
        heard[0].2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("binary")
    );
    // A GET that is not a WebSocket is told what the path is.
    let plain = gw
        .http()
        .get(format!("{}/v1/voice/asr", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.unwrap().contains("WebSocket"));
    assert_eq!(
        fake.requests().len(),
        0,
        "nothing refused reached the provider"
    );
}

#[tokio::test]
async fn sessions_are_admitted_against_the_keys_limits_for_as_long_as_they_last() {
    let dir = TempDir::new();
    let fake = FakeProvider::start().await;
    let mut config = live_config(&fake, &["fake:asr"]);
    config.push_str("\n[auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase_env = \"DB\"\n");
    let gw = Gateway::start_with_env(&config, &[("ADMIN", ADMIN), ("DB", &sqlite_url(&dir))]).await;
    let key = new_key(&gw, json!({"tenant": "t", "limits": {"concurrency": 1}})).await;

    // Without a key there is no session.
    let address = gw.url.trim_start_matches("http://");
    let tcp = TcpStream::connect(address).await.unwrap();
    let request = format!("ws://{address}/v1/voice/asr")
        .into_client_request()
        .unwrap();
    let refused = tokio_tungstenite::client_async(request, tcp)
        .await
        .unwrap_err();
    assert!(matches!(refused, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 401));

    let mut first = open(&gw, &key).await;
    send(&mut first, opening("asr")).await;
    send(&mut first, audio(2, false)).await;
    // Answered: the session is under way and holds the key's one place.
    let answer = first.next().await.unwrap().unwrap();
    assert!(matches!(answer, Message::Binary(_)));
    let mut second = open(&gw, &key).await;
    send(&mut second, opening("asr")).await;
    let (heard, close) = rest(&mut second).await;
    assert_eq!(
        (heard[0].0, heard[0].1),
        (Kind::Error, Some(429)),
        "{heard:?}"
    );
    assert_eq!(close, Some(1008));
    // Once the first ends, its place is free again.
    send(&mut first, audio(3, true)).await;
    let (heard, _) = rest(&mut first).await;
    assert!(heard.last().unwrap().3, "{heard:?}");
    let mut third = open(&gw, &key).await;
    send(&mut third, opening("asr")).await;
    send(&mut third, audio(2, true)).await;
    let (heard, close) = rest(&mut third).await;
    assert_eq!(
        (heard.last().unwrap().0, close),
        (Kind::Answer, Some(1000)),
        "{heard:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_an_open_session_and_records_it() {
    let fake = FakeProvider::start().await;
    let audit = Arc::new(MemoryAudit::default());
    let sink = audit.clone();
    let config = live_config(&fake, &["fake:asr"]);
    let gw = Gateway::start_customized(&config, &[], move |p| p.audit = sink).await;
    let mut socket = open(&gw, "unused").await;
    send(&mut socket, opening("asr")).await;
    send(&mut socket, audio(2, false)).await;
    assert!(matches!(socket.next().await, Some(Ok(Message::Binary(_)))));
    gw.state.shutdown.cancel();
    let (heard, close) = rest(&mut socket).await;
    let (kind, code, error, _) = heard.last().unwrap();
    assert_eq!((kind, code), (&Kind::Error, &Some(502)), "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down")
    );
    assert_eq!(close, Some(1011));
    // Shutdown's wait on background work covers the session's record.
    gw.state.tasks().close();
    gw.state.tasks().wait().await;
    let records = audit.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Interrupted);
}

#[tokio::test]
async fn an_open_session_keeps_its_place_under_the_connection_caps() {
    let fake = FakeProvider::start().await;
    let config = format!(
        "[server]\nmax_connections_per_peer = 2\n{}",
        live_config(&fake, &["fake:asr"])
    );
    let gw = Gateway::start(&config).await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let mut socket = open(&gw, "unused").await;
        send(&mut socket, opening("asr")).await;
        send(&mut socket, audio(2, false)).await;
        assert!(matches!(socket.next().await, Some(Ok(Message::Binary(_)))));
        sessions.push(socket);
    }
    // Both places are held by the sessions, though no request is open on them:
    // a third connection is refused as it is accepted.
    let mut third = TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut refusal = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut third, &mut refusal)
        .await
        .unwrap();
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    let health = || async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        client
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    let mut first = sessions.remove(0);
    send(&mut first, audio(3, true)).await;
    rest(&mut first).await;
    drop(first);
    time_until(async || health().await.is_ok_and(|s| s == 200)).await;
}
