//! Logs and metrics. Each event is one method here that both writes the log line and
//! updates its metrics, so the two never disagree. Labels are low-cardinality: route
//! templates, configured aliases and targets, status codes — never a prompt, a user
//! or a raw URI.

pub mod sink;
pub mod traces;

use std::io::IsTerminal;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::resilience::BreakerState;

/// Seconds, from half a millisecond (a cache hit) to two minutes (a long answer).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_attempts: IntCounterVec,
    time_to_first_token: HistogramVec,
    breaker_state: IntGaugeVec,
    failovers: IntCounterVec,
    config_errors: IntCounterVec,
    pii_detections: IntCounterVec,
    guard_blocks: IntCounterVec,
    cache_lookups: IntCounterVec,
    cache_bytes: IntGaugeVec,
    cache_evictions: IntCounterVec,
    cache_backend_errors: IntCounterVec,
    audit_queue_depth: IntGaugeVec,
    audit_spool_bytes: IntGaugeVec,
    audit_rows_written: IntCounterVec,
    audit_spooled: IntCounterVec,
    audit_write_errors: IntCounterVec,
    local_queue_depth: IntGaugeVec,
    local_tokens: IntCounterVec,
    open_connections: IntGaugeVec,
    connections_refused: IntCounterVec,
    ratelimit_rejections: IntCounterVec,
    limits_shared: IntGaugeVec,
    vector_store_differs: IntGaugeVec,
    limits_replicas: IntGaugeVec,
    limits_fallback: IntCounterVec,
    budget_remaining: prometheus::GaugeVec,
    budget_soft: IntCounterVec,
    tokens: IntCounterVec,
    spend: prometheus::CounterVec,
}

/// One finished HTTP request, as the access log and the request metrics see it.
pub struct RequestFinished<'a> {
    pub method: &'a str,
    pub route: &'a str,
    /// The configured alias, or `""` for requests that are not about a model.
    pub model: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    pub target: Option<&'a str>,
    pub attempts: usize,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            register(&registry, metric)
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let metric = HistogramVec::new(opts, labels).expect("static metric definition");
            register(&registry, metric)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            register(&registry, metric)
        };
        let metrics = Metrics {
            requests: counter(
                "ragway_requests_total",
                "HTTP requests by route, model and status",
                &["route", "model", "status"],
            ),
            request_duration: histogram(
                "ragway_request_duration_seconds",
                "Time to the response head (for streams: to the first byte sent)",
                &["route", "model"],
            ),
            upstream_duration: histogram(
                "ragway_upstream_duration_seconds",
                "Duration of one upstream attempt, to the end of its answer",
                &["target"],
            ),
            upstream_attempts: counter(
                "ragway_upstream_attempts_total",
                "Upstream attempts by target and outcome",
                &["target", "outcome"],
            ),
            time_to_first_token: histogram(
                "ragway_time_to_first_token_seconds",
                "Time from request to the first streamed token sent to the client",
                &["model"],
            ),
            breaker_state: gauge(
                "ragway_breaker_state",
                "Circuit breaker per target: 0 closed, 1 half-open, 2 open",
                &["target"],
            ),
            failovers: counter(
                "ragway_failovers_total",
                "Moves from one target to the next, by the reason the first was left",
                &["from", "to", "reason"],
            ),
            config_errors: counter(
                "ragway_config_errors_total",
                "Attempts refused for a configuration error (bad key, unknown model)",
                &["target"],
            ),
            pii_detections: counter(
                "ragway_pii_detections_total",
                "Personal data found in requests, by kind and the action taken",
                &["kind", "action"],
            ),
            guard_blocks: counter(
                "ragway_guard_blocks_total",
                "Requests and answers refused by the content guard",
                &["direction"],
            ),
            cache_lookups: counter(
                "ragway_cache_lookups_total",
                "Answer cache lookups by tier (l1, l2, coalesced) and result (hit, miss, error)",
                &["tier", "result"],
            ),
            cache_bytes: gauge(
                "ragway_cache_bytes",
                "Bytes of answers held in the in-memory tier",
                &[],
            ),
            cache_evictions: counter(
                "ragway_cache_evictions_total",
                "Answers evicted from the in-memory tier for room (not expiry)",
                &[],
            ),
            cache_backend_errors: counter(
                "ragway_cache_backend_errors_total",
                "Failed calls to a cache backend",
                &["backend"],
            ),
            audit_queue_depth: gauge(
                "ragway_audit_queue_depth",
                "Audit records waiting in the writer's queue",
                &[],
            ),
            audit_spool_bytes: gauge(
                "ragway_audit_spool_bytes",
                "Bytes of audit rows in the local spool, not yet in the database",
                &[],
            ),
            audit_rows_written: counter(
                "ragway_audit_rows_written_total",
                "Audit rows written to the database (replayed spool rows included)",
                &[],
            ),
            audit_spooled: counter(
                "ragway_audit_spooled_total",
                "Audit rows written to the local spool (database down or queue full)",
                &[],
            ),
            audit_write_errors: counter(
                "ragway_audit_write_errors_total",
                "Failed audit writes, by where: database or spool",
                &["stage"],
            ),
            local_queue_depth: gauge(
                "ragway_local_queue_depth",
                "Requests waiting for the local model (queued, not yet begun)",
                &[],
            ),
            local_tokens: counter(
                "ragway_local_tokens_total",
                "Tokens the local model read (prompt) and wrote (completion)",
                &["kind"],
            ),
            open_connections: gauge(
                "ragway_open_connections",
                "Client connections open now",
                &[],
            ),
            connections_refused: counter(
                "ragway_connections_refused_total",
                "Connections closed at once because a cap was reached (total, per_peer)",
                &["cap"],
            ),
            ratelimit_rejections: counter(
                "ragway_ratelimit_rejections_total",
                "Calls refused at admission, by scope (key, tenant, target) and limit",
                &["scope", "kind"],
            ),
            vector_store_differs: gauge(
                "ragway_vector_store_setting_differs",
                "1 for each layout setting the Qdrant collection has otherwise than configured, and for a server release outside those tested (server_version)",
                &["setting"],
            ),
            limits_shared: gauge(
                "ragway_limits_shared",
                "1 while limits are counted in Redis, shared by replicas; 0 while Redis is away",
                &[],
            ),
            limits_replicas: gauge(
                "ragway_limits_replicas",
                "Replicas sharing the limits' counters, as last counted in Redis",
                &[],
            ),
            limits_fallback: counter(
                "ragway_limits_fallback_total",
                "Calls decided without Redis while it was away, by what was done (local share, open: admitted, closed: refused)",
                &["mode"],
            ),
            budget_remaining: {
                let metric = prometheus::GaugeVec::new(
                    Opts::new(
                        "ragway_budget_remaining",
                        "What is left of each tenant's budget this period, as its last call saw it",
                    ),
                    &["tenant", "currency"],
                )
                .expect("static metric definition");
                register(&registry, metric)
            },
            tokens: counter(
                "ragway_tokens_total",
                "Tokens of answered calls by tenant, alias and kind (prompt, cached: prompt tokens the provider served from its cache, completion)",
                &["tenant", "alias", "kind"],
            ),
            spend: {
                let metric = prometheus::CounterVec::new(
                    Opts::new(
                        "ragway_spend_total",
                        "What answered calls cost at their targets' prices ([audit.prices]), by tenant and alias",
                    ),
                    &["tenant", "alias", "currency"],
                )
                .expect("static metric definition");
                register(&registry, metric)
            },
            budget_soft: counter(
                "ragway_budget_soft_crossings_total",
                "Budgets that passed their soft share (governance.soft_budget) this period",
                &["scope"],
            ),
            registry,
        };
        // CPU seconds, resident memory, open file descriptors, start time: the
        // `process_…` series dashboards expect of any service (Linux only).
        #[cfg(target_os = "linux")]
        let _ = metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        // Counted by the exporter's thread, which starts before any registry.
        let _ = metrics
            .registry
            .register(Box::new(traces::EXPORT_FAILURES.clone()));
        let _ = metrics.registry.register(Box::new(traces::DROPPED.clone()));
        metrics.export_zeros();
        metrics
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.open_connections
            .with_label_values(&[] as &[&str])
            .add(delta);
    }

    /// A connection refused past a cap: `total` or `per_peer`.
    pub fn connection_refused(&self, cap: &str) {
        tracing::debug!(cap, "connection refused");
        self.connections_refused.with_label_values(&[cap]).inc();
    }

    /// Series whose labels are known up front start at zero, so they are exported
    /// (and `rate()` and alerts see them) before anything happens.
    fn export_zeros(&self) {
        let none: &[&str] = &[];
        self.cache_bytes.with_label_values(none);
        self.cache_evictions.with_label_values(none);
        self.audit_queue_depth.with_label_values(none);
        self.audit_spool_bytes.with_label_values(none);
        self.audit_rows_written.with_label_values(none);
        self.audit_spooled.with_label_values(none);
        for stage in ["database", "spool"] {
            self.audit_write_errors.with_label_values(&[stage]);
        }
        self.local_queue_depth.with_label_values(none);
        self.open_connections.with_label_values(none);
        for cap in ["total", "per_peer"] {
            self.connections_refused.with_label_values(&[cap]);
        }
        for kind in ["prompt", "completion"] {
            self.local_tokens.with_label_values(&[kind]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The named metric families as JSON, for the console's live pages: each
    /// series with its labels and its value (counters and gauges) or its
    /// cumulative bucket counts (histograms). The page computes rates and
    /// quantiles from two snapshots.
    pub fn snapshot(&self, names: &[&str]) -> serde_json::Value {
        use prometheus::proto::MetricType;
        let mut out = serde_json::Map::new();
        for family in self.registry.gather() {
            if !names.contains(&family.name()) {
                continue;
            }
            let series: Vec<serde_json::Value> = family
                .get_metric()
                .iter()
                .map(|metric| {
                    let labels: serde_json::Map<String, serde_json::Value> = metric
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_owned(), l.value().into()))
                        .collect();
                    let mut entry = serde_json::json!({ "labels": labels });
                    match family.get_field_type() {
                        MetricType::COUNTER => {
                            entry["value"] = metric.get_counter().get_value().into();
                        }
                        MetricType::GAUGE => entry["value"] = metric.get_gauge().get_value().into(),
                        MetricType::HISTOGRAM => {
                            let h = metric.get_histogram();
                            entry["count"] = h.get_sample_count().into();
                            entry["buckets"] = h
                                .get_bucket()
                                .iter()
                                .map(|b| serde_json::json!([b.upper_bound(), b.cumulative_count()]))
                                .collect();
                        }
                        _ => {}
                    }
                    entry
                })
                .collect();
            out.insert(family.name().to_owned(), series.into());
        }
        out.into()
    }

    pub fn request_finished(&self, e: &RequestFinished<'_>) {
        let status = e.status.to_string();
        self.requests
            .with_label_values(&[e.route, e.model, &status])
            .inc();
        self.request_duration
            .with_label_values(&[e.route, e.model])
            .observe(e.elapsed.as_secs_f64());
        tracing::info!(
            method = e.method,
            route = e.route,
            model = e.model,
            status = e.status,
            latency_ms = millis(e.elapsed),
            upstream = e.target,
            attempts = e.attempts,
            "request finished"
        );
    }

    /// An attempt that ended before the answer was handed on (failed, or answered in
    /// full without streaming).
    pub fn upstream_attempt(
        &self,
        target: &str,
        outcome: &str,
        elapsed: Duration,
        error: Option<&str>,
    ) {
        self.count_attempt(target, outcome, elapsed);
        match error {
            Some(error) => tracing::warn!(
                upstream = target,
                outcome,
                latency_ms = millis(elapsed),
                error,
                "upstream attempt failed"
            ),
            None => tracing::debug!(
                upstream = target,
                outcome,
                latency_ms = millis(elapsed),
                "upstream attempt answered"
            ),
        }
    }

    /// A stream that was handed to the client has ended (`ok`, `interrupted` or
    /// `abandoned`); `elapsed` runs from the start of its attempt.
    pub fn upstream_stream_ended(&self, target: &str, outcome: &str, elapsed: Duration) {
        self.count_attempt(target, outcome, elapsed);
    }

    fn count_attempt(&self, target: &str, outcome: &str, elapsed: Duration) {
        self.upstream_attempts
            .with_label_values(&[target, outcome])
            .inc();
        self.upstream_duration
            .with_label_values(&[target])
            .observe(elapsed.as_secs_f64());
    }

    /// A target exists: its breaker starts closed.
    pub fn breaker_registered(&self, target: &str) {
        self.breaker_state.with_label_values(&[target]).set(0);
    }

    /// A breaker changed state.
    pub fn breaker_changed(&self, target: &str, state: BreakerState) {
        self.breaker_state
            .with_label_values(&[target])
            .set(state.gauge());
        if state != BreakerState::Closed {
            tracing::warn!(upstream = target, state = ?state, "circuit breaker changed");
        } else {
            tracing::info!(upstream = target, state = ?state, "circuit breaker changed");
        }
    }

    /// The router left `from` for `to`.
    pub fn failover(&self, from: &str, to: &str, reason: &str) {
        self.failovers.with_label_values(&[from, to, reason]).inc();
        tracing::info!(from, to, reason, "failing over");
    }

    /// A target answered with a configuration error: a wrong key or model id.
    pub fn config_error(&self, target: &str, message: &str) {
        self.config_errors.with_label_values(&[target]).inc();
        tracing::error!(
            upstream = target,
            error = message,
            "provider configuration error"
        );
    }

    pub fn first_token(&self, model: &str, elapsed: Duration) {
        self.time_to_first_token
            .with_label_values(&[model])
            .observe(elapsed.as_secs_f64());
    }

    /// What the sanitiser found in one request (counts only: never a value).
    pub fn pii_detected(&self, kind: &str, action: &str, count: u32) {
        self.pii_detections
            .with_label_values(&[kind, action])
            .inc_by(u64::from(count));
    }

    pub fn cache_lookup(&self, tier: &str, result: &str) {
        self.cache_lookups.with_label_values(&[tier, result]).inc();
    }

    pub fn cache_bytes(&self, bytes: u64) {
        self.cache_bytes
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn cache_evicted(&self) {
        self.cache_evictions.with_label_values(&[] as &[&str]).inc();
    }

    pub fn cache_backend_error(&self, backend: &str) {
        self.cache_backend_errors
            .with_label_values(&[backend])
            .inc();
    }

    /// `direction` is `input` or `output`.
    pub fn ratelimit_rejected(&self, scope: &str, kind: &str) {
        self.ratelimit_rejections
            .with_label_values(&[scope, kind])
            .inc();
    }

    /// The Qdrant collection's `setting` is not the configured one.
    pub fn vector_store_differs(&self, setting: &str) {
        self.vector_store_differs
            .with_label_values(&[setting])
            .set(1);
    }

    pub fn limits_shared(&self, up: bool) {
        self.limits_shared
            .with_label_values(&[] as &[&str])
            .set(i64::from(up));
    }

    pub fn limits_replicas(&self, replicas: u64) {
        self.limits_replicas
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(replicas).unwrap_or(i64::MAX));
    }

    pub fn budget_remaining(&self, tenant: &str, currency: &str, remaining: f64) {
        self.budget_remaining
            .with_label_values(&[tenant, currency])
            .set(remaining);
    }

    /// Tokens one answered call used.
    pub fn tokens_used(
        &self,
        tenant: &str,
        alias: &str,
        prompt: u64,
        cached: u64,
        completion: u64,
    ) {
        for (kind, n) in [
            ("prompt", prompt),
            ("cached", cached),
            ("completion", completion),
        ] {
            if n > 0 {
                self.tokens
                    .with_label_values(&[tenant, alias, kind])
                    .inc_by(n);
            }
        }
    }

    pub fn spent(&self, tenant: &str, alias: &str, currency: &str, amount: f64) {
        if amount > 0.0 {
            self.spend
                .with_label_values(&[tenant, alias, currency])
                .inc_by(amount);
        }
    }

    pub fn budget_soft_crossed(&self, scope: &str) {
        self.budget_soft.with_label_values(&[scope]).inc();
    }

    pub fn limits_fallback(&self, mode: &str) {
        self.limits_fallback.with_label_values(&[mode]).inc();
    }

    pub fn guard_blocked(&self, direction: &str) {
        self.guard_blocks.with_label_values(&[direction]).inc();
        tracing::info!(direction, "content guard refused");
    }

    pub fn audit_queue(&self, depth: usize, spool_bytes: u64) {
        let none: &[&str] = &[];
        self.audit_queue_depth
            .with_label_values(none)
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.audit_spool_bytes
            .with_label_values(none)
            .set(i64::try_from(spool_bytes).unwrap_or(i64::MAX));
    }

    pub fn local_queue(&self, waiting: usize) {
        self.local_queue_depth
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    pub fn local_tokens(&self, prompt: usize, completion: usize) {
        self.local_tokens
            .with_label_values(&["prompt"])
            .inc_by(prompt as u64);
        self.local_tokens
            .with_label_values(&["completion"])
            .inc_by(completion as u64);
    }

    pub fn audit_written(&self, rows: usize) {
        self.audit_rows_written
            .with_label_values(&[] as &[&str])
            .inc_by(rows as u64);
    }

    pub fn audit_spooled(&self, rows: usize) {
        self.audit_spooled
            .with_label_values(&[] as &[&str])
            .inc_by(rows as u64);
    }

    /// `stage` is `database` or `spool`.
    pub fn audit_write_error(&self, stage: &str) {
        self.audit_write_errors.with_label_values(&[stage]).inc();
    }

    /// The end of a streamed answer, which the access log saw begin.
    pub fn stream_finished(&self, model: &str, target: &str, outcome: &str, elapsed: Duration) {
        tracing::info!(
            model,
            upstream = target,
            outcome,
            latency_ms = millis(elapsed),
            "stream finished"
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers a metric; names are fixed here, so a clash is a programming error.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// How the gateway logs: `[log]`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber: the log. `RUST_LOG` overrides the
/// configured level.
///
/// Lines are written to stderr in batches by a background thread (see [`sink`]), so
/// a request never waits on a write; nothing is dropped. Colours only on a terminal.
/// Keep the returned guard until exit: dropping it writes what is waiting.
pub fn init_logging(config: &LogConfig) -> sink::LogGuard {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (writer, guard) = sink::start(std::io::stderr(), crate::secret::scrub);
    // The embedded vector store warns on every index build that its global feature
    // flags were never set: it has no public way to set them, and its defaults are
    // the ones wanted.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{},qdrant_edge::common::flags=error",
            config.level
        ))
    });
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let log = match config.format {
        LogFormat::Json => log.json().flatten_event(true).boxed(),
        LogFormat::Text => log.boxed(),
    };
    let result = tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .try_init();
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
    guard
}
