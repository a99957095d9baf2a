//! Traces to an OTLP collector (`[tracing]`, off by default): a span per request,
//! its parent the client's W3C `traceparent` when it sent one, with a child per
//! stage (sanitize, cache, retrieve, each upstream attempt, record), GenAI
//! semantic-convention attributes, and the `traceparent` of each upstream attempt
//! sent to the provider. Spans are `tracing` spans of the [`TARGET`] target,
//! which only the OpenTelemetry layer takes: with tracing off they are never
//! built. No attribute holds a prompt, an answer or a key.
//!
//! Export runs on a thread of its own, in batches from a bounded queue: a
//! collector that is slow or down costs a request nothing, and spans past the
//! queue are dropped (counted by the SDK), never waited for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of the spans exported: `tracing::info_span!(target: TARGET, …)`.
pub const TARGET: &str = "ragway::trace";

/// `[tracing]`: where spans go, how many traces are kept, under which name.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC address (`http://otel-collector:4317`).
    pub endpoint: String,
    /// The share of traces kept (0 to 1) where the client's `traceparent` does
    /// not decide: a sampled parent is always followed.
    pub sample_ratio: f64,
    pub service_name: String,
    /// How long one export may take before its batch is given up.
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub export_timeout: Duration,
}

/// Spans past this many waiting for export are dropped.
const QUEUE: usize = 4096;

/// Set once traces are exported: then upstream calls carry `traceparent`.
static ON: OnceLock<TraceContextPropagator> = OnceLock::new();

/// Flushes what is queued when dropped (at shutdown, within the export timeout).
pub struct TracesGuard {
    provider: SdkTracerProvider,
    timeout: Duration,
}

impl Drop for TracesGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown_with_timeout(self.timeout) {
            eprintln!("traces: not all were exported at shutdown: {error}");
        }
    }
}

/// The OpenTelemetry layer for `settings` (build it inside the Tokio runtime:
/// the gRPC client lives on it), taking only [`TARGET`]'s spans.
pub fn layer<S>(
    settings: &TraceSettings,
) -> Result<(impl tracing_subscriber::Layer<S>, TracesGuard), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&settings.endpoint)
        .with_timeout(settings.export_timeout)
        .build()
        .map_err(|e| format!("tracing.endpoint {}: {e}", settings.endpoint))?;
    let exporter = Watched {
        inner: exporter,
        endpoint: settings.endpoint.clone(),
        failing: AtomicBool::new(false),
    };
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(QUEUE)
                .build(),
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("ragway");
    let _ = ON.set(TraceContextPropagator::new());
    // Only what the spans say: no code location, thread, level or target
    // attributes, no busy/idle timing and no OpenTelemetry context made current
    // at each poll (the `traceparent` sent upstream is read from the span
    // itself). Each of those is work per span or per poll on the request path.
    let layer = tracing_opentelemetry::layer()
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_tracer(tracer)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::INFO),
        );
    let guard = TracesGuard {
        provider,
        timeout: settings.export_timeout,
    };
    Ok((layer, guard))
}

/// Whether spans are exported.
pub fn on() -> bool {
    ON.get().is_some()
}

/// A request's span, child of the trace the client's `traceparent` names (a
/// new trace without one). A disabled span when traces are off.
pub fn request_span(method: &str, route: &str, headers: &HeaderMap) -> tracing::Span {
    let Some(propagator) = ON.get() else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        ragway.request_id = tracing::field::Empty,
    );
    let parent = propagator.extract(&Headers(headers));
    let _ = span.set_parent(parent);
    span
}

/// The span of one upstream attempt at `target` (`provider:model`), a GenAI
/// client span; its `error.type` is recorded when the attempt fails.
pub fn attempt_span(operation: &'static str, target: &str, model: &str) -> tracing::Span {
    let provider = target
        .split_once(':')
        .map_or(target, |(provider, _)| provider);
    tracing::info_span!(
        target: TARGET,
        "attempt",
        otel.name = %format!("{operation} {model}"),
        otel.kind = "client",
        gen_ai.operation.name = operation,
        gen_ai.system = provider,
        gen_ai.request.model = model,
        ragway.target = target,
        error.type = tracing::field::Empty,
    )
}

/// Sets attribute `key` of `span` (nothing with traces off).
pub fn set(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if on() {
        span.set_attribute(key, value);
    }
}

/// `headers` with the current span's `traceparent` added, when traces are on
/// and the span is sampled; `None` leaves them as they are.
pub fn with_traceparent(headers: &HeaderMap) -> Option<HeaderMap> {
    let propagator = ON.get()?;
    let context = tracing::Span::current().context();
    let mut headers = headers.clone();
    propagator.inject_context(&context, &mut HeadersMut(&mut headers));
    headers.contains_key("traceparent").then_some(headers)
}

/// Batches of spans the collector did not take (down, slow past the export
/// timeout, refusing): `ragway_trace_export_failures_total`.
pub static EXPORT_FAILURES: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        "ragway_trace_export_failures_total",
        "Batches of trace spans the OTLP collector did not take (their spans are dropped)",
    )
    .expect("static metric definition")
});

/// The exporter, its failures counted and told once per outage.
#[derive(Debug)]
struct Watched<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "the trace collector takes spans again");
            }
            Ok(()) => {}
            Err(error) => {
                EXPORT_FAILURES.inc();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        %error,
                        "the trace collector does not take spans: they are dropped until it does \
                         (ragway_trace_export_failures_total); requests are not affected"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
