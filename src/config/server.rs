//! `[server]` and `[log]`: where the gateway listens, what it accepts, how it shuts
//! down, and how it logs.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Problems;
use super::{LogConfig, LogFormat};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub header_read_timeout_secs: Option<u64>,
    pub body_read_timeout_secs: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_connections_per_peer: Option<u64>,
    pub metrics_listen: Option<String>,
    pub workers: Option<u64>,
    /// Browser origins allowed to call `/v1/*` (CORS); none by default.
    pub cors_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// How long the whole exit may take after SIGTERM: draining open requests and
    /// streams, background work, and the audit trail's last writes.
    #[serde(serialize_with = "crate::encode::as_secs")]
    pub shutdown_grace: Duration,
    /// A connection that has not sent a whole request head within this is closed
    /// (idle keep-alive connections too).
    #[serde(serialize_with = "crate::encode::as_secs")]
    pub header_read_timeout: Duration,
    /// A request body not received in full within this (from its head) is refused
    /// with 408, however steadily it trickles.
    #[serde(serialize_with = "crate::encode::as_secs")]
    pub body_read_timeout: Duration,
    /// Open connections in total, and from one client address; past either, a new
    /// connection gets 503 and is closed.
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// `/metrics` on its own address instead of the public one.
    pub metrics_listen: Option<SocketAddr>,
    /// Threads that serve connections, each connection on one of them start to
    /// finish (one per core by default).
    pub workers: usize,
    /// The origins whose pages may call `/v1/*` from a browser (`*`: any).
    pub cors_origins: Vec<String>,
}

pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

pub(super) const DEFAULT_MAX_BODY: u64 = 4 * 1024 * 1024;

pub(super) const MAX_BODY_CEILING: u64 = 256 * 1024 * 1024;

pub(super) fn server(raw: RawServer, problems: &mut Problems) -> ServerConfig {
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|e| {
        problems.add(
            "server.listen",
            format!("`{listen_text}` is not an address: {e}"),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let max_body = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if max_body == 0 || max_body > MAX_BODY_CEILING {
        problems.add(
            "server.max_body_bytes",
            format!("must be between 1 and {MAX_BODY_CEILING}"),
        );
    }
    let mut seconds = |key: &str, value: Option<u64>, default: u64| {
        let value = value.unwrap_or(default);
        if !(1..=3600).contains(&value) {
            problems.add(format!("server.{key}"), "must be between 1 and 3600");
        }
        Duration::from_secs(value.clamp(1, 3600))
    };
    let shutdown_grace = seconds("shutdown_grace_secs", raw.shutdown_grace_secs, 10);
    let header_read_timeout = seconds("header_read_timeout_secs", raw.header_read_timeout_secs, 10);
    let body_read_timeout = seconds("body_read_timeout_secs", raw.body_read_timeout_secs, 60);
    let mut count = |key: &str, value: Option<u64>, default: u64| {
        let value = value.unwrap_or(default);
        if !(1..=1_000_000).contains(&value) {
            problems.add(format!("server.{key}"), "must be between 1 and 1000000");
        }
        value.clamp(1, 1_000_000) as usize
    };
    let max_connections = count("max_connections", raw.max_connections, 10_000);
    let max_connections_per_peer = count(
        "max_connections_per_peer",
        raw.max_connections_per_peer,
        1_000,
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let workers = raw.workers.unwrap_or(cores);
    if !(1..=1024).contains(&workers) {
        problems.add("server.workers", "must be between 1 and 1024");
    }
    let metrics_listen = raw.metrics_listen.as_deref().and_then(|text| {
        text.parse::<SocketAddr>()
            .map_err(|e| {
                problems.add(
                    "server.metrics_listen",
                    format!("`{text}` is not an address: {e}"),
                );
            })
            .ok()
    });
    if metrics_listen == Some(listen) {
        problems.add(
            "server.metrics_listen",
            "must differ from server.listen (leave it out to serve /metrics there)",
        );
    }
    let cors_origins = raw.cors_origins.unwrap_or_default();
    for (i, origin) in cors_origins.iter().enumerate() {
        if let Err(why) = check_origin(origin) {
            problems.add(format!("server.cors_origins[{i}]"), why);
        }
    }
    ServerConfig {
        cors_origins,
        listen,
        max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
        shutdown_grace,
        header_read_timeout,
        body_read_timeout,
        max_connections,
        max_connections_per_peer,
        metrics_listen,
        workers: workers.clamp(1, 1024) as usize,
    }
}

/// An origin as a browser sends it: `scheme://host[:port]`, nothing after; or `*`.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let url =
        reqwest::Url::parse(origin).map_err(|e| format!("`{origin}` is not an origin: {e}"))?;
    let bare = url.origin().ascii_serialization();
    match matches!(url.scheme(), "http" | "https") && bare == origin {
        true => Ok(()),
        false => Err(format!(
            "`{origin}` is not an origin: write the scheme, host and port only, e.g. `{bare}`"
        )),
    }
}

pub(super) fn log(raw: RawLog, problems: &mut Problems) -> LogConfig {
    let level = raw.level.unwrap_or_else(|| "info".to_owned());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        problems.add("log.level", format!("`{level}` is not a log filter: {e}"));
    }
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            problems.add("log.format", format!("`{other}` is not one of: text, json"));
            LogFormat::Text
        }
    };
    LogConfig { level, format }
}
