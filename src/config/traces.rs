//! `[tracing]`: traces exported to an OTLP collector over gRPC (off without the
//! section).

use serde::Deserialize;

use super::validate::Problems;
pub use crate::telemetry::traces::TraceSettings;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The collector's OTLP/gRPC address, e.g. `http://otel-collector:4317`.
    pub endpoint: Option<String>,
    /// The share of new traces kept, 0 to 1 (default 1).
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub export_timeout: Option<String>,
}

pub(super) fn traces(raw: RawTracing, problems: &mut Problems) -> TraceSettings {
    let endpoint = raw.endpoint.unwrap_or_default();
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        problems.add(
            "tracing.endpoint",
            "the collector's OTLP/gRPC address, e.g. http://otel-collector:4317",
        );
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        problems.add("tracing.sample_ratio", "must be between 0 and 1");
    }
    let service_name = raw.service_name.unwrap_or_else(|| "ragway".to_owned());
    if service_name.trim().is_empty() {
        problems.add("tracing.service_name", "must not be empty");
    }
    let export_timeout = problems.duration(
        "tracing.export_timeout",
        raw.export_timeout.as_deref(),
        std::time::Duration::from_secs(10),
    );
    TraceSettings {
        endpoint,
        sample_ratio,
        service_name,
        export_timeout,
    }
}
