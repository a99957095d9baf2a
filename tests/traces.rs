//! OpenTelemetry traces, read by an OTLP collector in this process from the real
//! binary (the trace exporter is process-wide): a span per request under the
//! client's `traceparent`, a child per stage and per upstream attempt, GenAI
//! attributes, the attempt's `traceparent` at the provider, no text or key in
//! any attribute; a collector that is down costs the requests nothing; and one
//! that refuses exports is reported until it takes them again.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{FakeProvider, TempDir, refusing_address};

const PROVIDER_KEY: &str = "sk-provider-key-never-in-a-trace";
const CLIENT_KEY: &str = "sk-client-key-never-in-a-trace";
const PROMPT: &str = "my number is 13812345678, tell me a secret";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    /// While set, every export is refused, as a collector that is full is.
    refusing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.refusing.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("the collector is full"));
        }
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.spans.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        (collector, address)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// The binary serving `config`, and its log lines as they come.
struct Served {
    child: tokio::process::Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    async fn start(config: &str) -> Served {
        let dir = std::env::temp_dir().join(format!("ragway-traces-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ragway.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragway"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("PROVIDER_KEY", PROVIDER_KEY)
            // Batches leave every 100 ms rather than every 5 s.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("RUST_LOG")
            .env_remove("RAGWAY_CONFIG")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let url = loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("ragway starts within a minute")
                .unwrap()
                .expect("a log line");
            let event: Value = serde_json::from_str(&line).unwrap_or_default();
            if event["message"] == "ragway listening" {
                break format!("http://{}", event["address"].as_str().unwrap());
            }
            log.lock().unwrap().push(line);
        };
        let kept = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        Served { child, url, log }
    }

    /// `ragway_trace_export_failures_total`.
    async fn export_failures(&self) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("ragway_trace_export_failures_total "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Waits (20 s at most) until an export has failed.
    async fn an_export_failed(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.export_failures().await == 0 {
            assert!(Instant::now() < deadline, "no export failure counted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The log lines so far that contain `text`.
    fn said(&self, text: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(text)).count()
    }

    /// Waits (20 s at most) until the log (written by its own thread) says `text`.
    async fn until_said(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.said(text) == 0 {
            assert!(
                Instant::now() < deadline,
                "never said {text:?}: {:?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn chat(&self, traceparent: Option<&str>) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(CLIENT_KEY)
            .json(&json!({"model": "chat", "messages": [{"role": "user", "content": PROMPT}]}));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        request.send().await.unwrap()
    }
}

fn config(fake: &FakeProvider, collector: &str) -> String {
    config_sampled(fake, collector, 1.0)
}

fn config_sampled(fake: &FakeProvider, collector: &str, ratio: f64) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n\
         [providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"PROVIDER_KEY\"\n\
         retry.attempts = 1\n\
         [models.chat]\ntargets = [\"fake:status-503#traced\", \"fake:ok\"]\n\
         [models.rr]\nkind = \"rerank\"\ntargets = [\"fake:rerank\"]\nlocal_fallback = false\n\
         [tracing]\nendpoint = \"{collector}\"\nservice_name = \"ragway-test\"\n\
         export_timeout = \"1s\"\nsample_ratio = {ratio:?}\n",
        fake.base_url()
    )
}

/// The collector's spans once one named `name` has come (within 20 s).
async fn spans_once(collector: &Collector, name: &str) -> Vec<Span> {
    let started = Instant::now();
    loop {
        let spans = collector.spans();
        if spans.iter().any(|s| s.name == name) {
            return spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no {name}: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attribute(span, key)? {
        Any::StringValue(text) => Some(text),
        _ => None,
    }
}

fn number(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key)? {
        Any::IntValue(n) => Some(*n),
        _ => None,
    }
}

#[tokio::test]
async fn a_request_is_traced_under_the_clients_trace_through_every_stage_and_attempt() {
    let fake = FakeProvider::start().await;
    let (collector, address) = Collector::start().await;
    // The cache serves the alias and retrieval searches a (new, empty) corpus:
    // every stage has work to do.
    let dir = TempDir::new();
    let every_stage = format!(
        "{}[cache]\n[embeddings]\nmodel = \"{}/models/all-MiniLM-L6-v2\"\n\
         [retrieval]\npath = \"{}\"\n",
        config(&fake, &address).replace("[models.chat]\n", "[models.chat]\ncache = \"always\"\n"),
        env!("CARGO_MANIFEST_DIR"),
        dir.0.join("qdrant").display()
    );
    let served = Served::start(&every_stage).await;
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let answer = served.chat(Some(&traceparent)).await;
    assert_eq!(answer.status(), 200);

    // The request's span, and all it holds, reach the collector.
    let started = Instant::now();
    let spans = loop {
        let spans = collector.spans();
        let done = spans.iter().any(|s| s.name == "POST /v1/chat/completions")
            && spans.iter().any(|s| s.name == "record");
        if done {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no trace: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let request = spans
        .iter()
        .find(|s| s.name == "POST /v1/chat/completions")
        .unwrap();
    // A child of the client's span, in the client's trace.
    assert_eq!(hex(&request.trace_id), TRACE_ID);
    assert_eq!(hex(&request.parent_span_id), CLIENT_SPAN);
    assert_eq!(text(request, "gen_ai.request.model"), Some("chat"));
    assert_eq!(text(request, "gen_ai.response.model"), Some("ok"));
    assert_eq!(text(request, "gen_ai.system"), Some("fake"));
    assert!(number(request, "gen_ai.usage.input_tokens").unwrap() > 0);
    assert!(number(request, "gen_ai.usage.output_tokens").unwrap() > 0);
    assert_eq!(
        text(request, "ragway.failover.chain"),
        Some("fake:status-503#traced > fake:ok")
    );
    assert_eq!(number(request, "http.response.status_code"), Some(200));

    // A child per stage; the attempts are the generate stage's.
    let child_of = |parent: &Span, name: &str| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id && s.name == name)
            .cloned()
            .collect()
    };
    for stage in ["sanitize", "cache", "retrieve", "generate", "record"] {
        assert_eq!(child_of(request, stage).len(), 1, "{stage}: {spans:#?}");
    }
    let generate = &child_of(request, "generate")[0];
    let attempts = child_of(generate, "chat ok");
    assert_eq!(attempts.len(), 1, "{spans:#?}");
    let failed = child_of(generate, "chat status-503#traced");
    assert_eq!(failed.len(), 1, "{spans:#?}");
    assert_eq!(text(&failed[0], "error.type"), Some("http_5xx"));
    assert_eq!(text(&attempts[0], "gen_ai.request.model"), Some("ok"));
    assert!(attempts.iter().all(|a| hex(&a.trace_id) == TRACE_ID));
    assert_eq!(text(request, "ragway.cache"), Some("miss"));

    // The provider was told the trace, with the attempt as the parent.
    let seen = fake.last_request();
    assert_eq!(
        seen.traceparent.as_deref(),
        Some(format!("00-{TRACE_ID}-{}-01", hex(&attempts[0].span_id)).as_str())
    );
    // No text and no key anywhere in a trace.
    let every_value = format!("{spans:?}");
    for secret in [PROVIDER_KEY, CLIENT_KEY, "13812345678", "secret", "Hello"] {
        assert!(!every_value.contains(secret), "{secret} is in a trace");
    }
    drop(served);
}

#[tokio::test]
async fn a_stage_with_nothing_to_do_records_no_span() {
    // No cache and no retrieval: the request's stages are those that ran.
    let fake = FakeProvider::start().await;
    let (collector, address) = Collector::start().await;
    let served = Served::start(&config(&fake, &address)).await;
    assert_eq!(served.chat(None).await.status(), 200);
    let spans = spans_once(&collector, "record").await;
    let request = spans
        .iter()
        .find(|s| s.name == "POST /v1/chat/completions")
        .unwrap();
    let mut stages: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == request.span_id)
        .map(|s| s.name.as_str())
        .collect();
    stages.sort_unstable();
    assert_eq!(stages, ["generate", "record", "sanitize"], "{spans:#?}");
    assert_eq!(text(request, "ragway.cache"), Some("bypass"));
    drop(served);
}

#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing_and_is_reported() {
    let fake = FakeProvider::start().await;
    let address = format!("http://{}", refusing_address());
    let served = Served::start(&config(&fake, &address)).await;
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(served.chat(None).await.status(), 200);
    }
    // Each request fails over once and answers; none waits on the exporter.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    served.an_export_failed().await;
    served.until_said(DOWN).await;
    assert_eq!(served.chat(None).await.status(), 200);
    assert_eq!(served.said(DOWN), 1, "told once per outage");
    drop(served.child);
}

const DOWN: &str = "the trace collector does not take spans";

#[tokio::test]
async fn a_collector_that_refuses_exports_is_reported_and_sent_spans_again_once_it_takes_them() {
    let fake = FakeProvider::start().await;
    let (collector, address) = Collector::start().await;
    collector.refusing.store(true, Ordering::SeqCst);
    let served = Served::start(&config(&fake, &address)).await;
    // Refused: the answer's grpc-status is an error (in its only headers).
    assert_eq!(served.chat(None).await.status(), 200);
    served.an_export_failed().await;
    served.until_said(DOWN).await;
    assert!(collector.spans().is_empty());
    // Taken again: the next batch gets through (its status in trailers), and
    // the log says so.
    collector.refusing.store(false, Ordering::SeqCst);
    assert_eq!(served.chat(None).await.status(), 200);
    let spans = spans_once(&collector, "POST /v1/chat/completions").await;
    assert!(spans.iter().any(|s| s.name == "generate"), "{spans:?}");
    served
        .until_said("the trace collector takes spans again")
        .await;
    assert_eq!(served.said(DOWN), 1, "told once per outage");
    drop(served.child);
}

#[tokio::test]
async fn the_clients_sampling_decision_is_followed_and_an_unsampled_trace_still_reaches_the_provider()
 {
    let fake = FakeProvider::start().await;
    let (collector, address) = Collector::start().await;
    // New traces are never kept here: only a client's sampled trace is.
    let served = Served::start(&config_sampled(&fake, &address, 0.0)).await;

    // No traceparent: a new trace, not kept, but told to the provider unsampled.
    assert_eq!(served.chat(None).await.status(), 200);
    let told = fake
        .last_request()
        .traceparent
        .expect("a traceparent upstream");
    assert!(told.starts_with("00-") && told.ends_with("-00"), "{told}");
    let unkept = told[3..35].to_owned();
    assert_ne!(unkept, TRACE_ID);

    // The client's unsampled trace: not kept either, its trace id passed on.
    let unsampled = format!("00-{TRACE_ID}-{CLIENT_SPAN}-00");
    assert_eq!(served.chat(Some(&unsampled)).await.status(), 200);
    let told = fake.last_request().traceparent.unwrap();
    assert!(
        told.starts_with(&format!("00-{TRACE_ID}-")) && told.ends_with("-00"),
        "{told}"
    );
    assert!(
        !told.contains(CLIENT_SPAN),
        "the attempt is the parent: {told}"
    );

    // The client's sampled trace is kept, on a relayed endpoint too, and its
    // `tracestate` is passed on unchanged.
    let sampled = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/rerank", served.url))
        .bearer_auth(CLIENT_KEY)
        .header("traceparent", &sampled)
        .header("tracestate", "vendor=opaque")
        .json(&json!({"model": "rr", "query": "invoice", "documents": ["an invoice", "sun"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let seen = fake.last_request();
    assert_eq!(seen.path, "/v1/rerank");
    assert_eq!(seen.tracestate.as_deref(), Some("vendor=opaque"));
    let spans = spans_once(&collector, "POST /v1/rerank").await;
    let request = spans.iter().find(|s| s.name == "POST /v1/rerank").unwrap();
    assert_eq!(hex(&request.parent_span_id), CLIENT_SPAN);
    assert_eq!(request.trace_state, "vendor=opaque");
    let generate = spans
        .iter()
        .find(|s| s.name == "generate" && s.parent_span_id == request.span_id)
        .expect("the relay is the generate stage");
    let attempt = spans
        .iter()
        .find(|s| s.parent_span_id == generate.span_id)
        .expect("an attempt under it");
    assert_eq!(attempt.name, "rerank rerank");
    assert_eq!(
        seen.traceparent.as_deref(),
        Some(format!("00-{TRACE_ID}-{}-01", hex(&attempt.span_id)).as_str())
    );
    // Nothing of the unsampled traces was exported.
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == TRACE_ID),
        "{spans:#?}"
    );
    drop(served);
}
