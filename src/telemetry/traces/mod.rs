//! Traces to an OTLP collector (`[tracing]`, off by default): a span per
//! request, its parent the client's W3C `traceparent` when it sent one, with a
//! child per stage (sanitize, cache, retrieve, generate, record) and per
//! upstream attempt, GenAI semantic-convention attributes, and the
//! `traceparent` of each upstream attempt sent to the provider. No attribute
//! holds a prompt, an answer or a key.
//!
//! A request records its trace as ids and times ([`span`]); as it ends, the
//! trace is encoded ([`otlp`]) into its thread's batch, which the exporter
//! ([`export`]) sends from a thread of its own once full. With
//! tracing off, a request's [`Trace`] is empty and every call on it returns at
//! once.

mod children;
mod context;
mod export;
mod otlp;
mod span;

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

pub use export::TracesGuard;
pub use otlp::Value;
pub use span::{Attempt, Attributes, Entered, Scoped, Trace, propagate};

/// `[tracing]`: where spans go, how many traces are kept, under which name.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC address (`http://otel-collector:4317`).
    pub endpoint: String,
    /// The share of traces kept (0 to 1) where the client's `traceparent` does
    /// not decide: its sampled flag is always followed.
    pub sample_ratio: f64,
    pub service_name: String,
    /// How long one export may take before its batch is given up.
    #[serde(serialize_with = "crate::encode::as_duration")]
    pub export_timeout: Duration,
}

/// Set once the exporter runs: the share of new traces kept.
static RATIO: OnceLock<f64> = OnceLock::new();

/// Starts exporting traces as `settings` say (once per process; no runtime
/// needed: the exporter has its own). Keep the guard until exit.
pub fn start(settings: &TraceSettings) -> Result<TracesGuard, String> {
    let guard = export::start(settings)?;
    let _ = RATIO.set(settings.sample_ratio);
    Ok(guard)
}

/// The share of new traces kept; `None` with traces off.
fn sample_ratio() -> Option<f64> {
    RATIO.get().copied()
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

/// Requests' traces dropped because the export queue was full (a full batch
/// is dropped whole).
pub static DROPPED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        "ragway_traces_dropped_total",
        "Requests' traces dropped, unsent, because the export queue was full",
    )
    .expect("static metric definition")
});
