//! The record stage's durable half: one record per call, handed to an [`AuditSink`].
//!
//! The gateway's sink is the [`writer::AuditWriter`]: records go through a bounded
//! channel to one task that chains them ([`chain`]) and writes them in batches to
//! Postgres or a SQLite file ([`store`]), or to a local spool ([`spool`]) while the
//! database cannot take them. [`NoAudit`] is the pass-through for embedders that
//! want no trail.

pub mod chain;
pub mod export;
pub mod row;
mod settings;
pub mod spool;
pub mod store;
pub mod time;
pub mod usage;
pub mod verify;
pub mod writer;

pub use settings::{AuditConfig, AuditDatabase};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::call::Citation;
use crate::call::{Attempt, CacheStatus, Outcome};
use crate::wire::Usage;

/// Hides personal data and credentials in a text the sanitize stage never saw: a
/// request id, user agent, document id or a provider's error, on their way into the
/// audit row. The composition root supplies the gateway's sanitiser.
pub trait Redact: Send + Sync {
    fn redact(&self, text: &str) -> String;
}

/// Credentials only ([`crate::secret::scrub`]): for a trail without a sanitiser.
pub struct SecretsOnly;

impl Redact for SecretsOnly {
    fn redact(&self, text: &str) -> String {
        crate::secret::scrub(text).into_owned()
    }
}

/// Everything known about one finished call. Prompt, answer and `user` are already
/// sanitised; the other texts are redacted as rows are built ([`Redact`]).
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub at: SystemTime,
    pub request_id: String,
    pub origin: Origin,
    /// `None` when the caller was not identified (a refused key).
    pub tenant: Option<String>,
    pub key_id: Option<String>,
    pub user: Option<String>,
    /// The alias asked for, when it names a configured one.
    pub alias: Option<String>,
    /// The target that answered, if any did.
    pub target: Option<String>,
    /// The target that answered is the local model.
    pub local: bool,
    pub attempts: Vec<Attempt>,
    pub stream: bool,
    /// `hit-l1`, `hit-l2`, `hit-semantic`, `hit-coalesced`, `miss`, `bypass`; `None`
    /// for calls that never reached the cache stage.
    pub cache: Option<CacheStatus>,
    /// The HTTP status the client got (for a stream: the status of its head).
    pub status: u16,
    /// How the call ended.
    pub outcome: Outcome,
    /// The error code, for calls that failed.
    pub error: Option<&'static str>,
    pub latency: Duration,
    pub time_to_first_token: Option<Duration>,
    pub usage: Option<Usage>,
    pub answer_chars: usize,
    /// Personal data found in the request: kind and count, never a value.
    pub pii: Vec<(&'static str, u32)>,
    /// The messages as sent upstream (placeholders, never raw values), as JSON.
    pub prompt: String,
    /// The answer's text before restoring (placeholders, never raw values).
    pub answer: String,
    /// The passages the answer was grounded in.
    pub passages: Vec<PassageRef>,
}

impl CallRecord {
    /// A call refused before any stage ran (bad key, unreadable body, unknown
    /// model …): what the HTTP layer knows about it.
    pub fn refused(
        request_id: &str,
        origin: Origin,
        status: u16,
        error: Option<&'static str>,
    ) -> Self {
        CallRecord {
            at: SystemTime::now(),
            request_id: request_id.to_owned(),
            origin,
            tenant: None,
            key_id: None,
            user: None,
            alias: None,
            target: None,
            local: false,
            attempts: Vec::new(),
            stream: false,
            cache: None,
            status,
            outcome: if status < 400 {
                Outcome::Ok
            } else {
                Outcome::Error
            },
            error,
            latency: Duration::ZERO,
            time_to_first_token: None,
            usage: None,
            answer_chars: 0,
            pii: Vec::new(),
            prompt: String::new(),
            answer: String::new(),
            passages: Vec::new(),
        }
    }
}

/// Where a call came from, as the HTTP layer saw it.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The route's pattern (`/v1/chat/completions`), never the raw path.
    pub route: Arc<str>,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<Arc<str>>,
    /// The gateway made the request id (the client sent none, or none usable):
    /// it holds nothing of the client's, so it is stored without the redaction
    /// client text passes through. A random id is also the costliest text to
    /// scan: it leads the detectors' automaton into new states on every call.
    pub request_id_is_ours: bool,
}

impl Origin {
    /// For records made outside an HTTP request (tests, embedders).
    pub fn internal(route: &str) -> Self {
        Origin {
            route: route.into(),
            client_ip: None,
            user_agent: None,
            request_id_is_ours: false,
        }
    }
}

/// A retrieved passage as the record keeps it: which one, and how it scored (its
/// title and source are the tenant's text, not the record's).
#[derive(Debug, Clone, PartialEq)]
pub struct PassageRef {
    pub doc_id: String,
    pub chunk: u32,
    pub score: f32,
}

impl From<&Citation> for PassageRef {
    fn from(c: &Citation) -> Self {
        PassageRef {
            doc_id: c.doc_id.clone(),
            chunk: c.chunk,
            score: c.score,
        }
    }
}

pub trait AuditSink: Send + Sync {
    /// Takes one record. Must return at once: it runs on the request path.
    fn record(&self, record: CallRecord);

    /// Whether records keep the prompt's text; when not, the pipeline does not
    /// serialise it for them.
    fn keeps_text(&self) -> bool {
        true
    }
}

/// Pass-through: records are dropped.
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn record(&self, _record: CallRecord) {}

    fn keeps_text(&self) -> bool {
        false
    }
}

/// The gateway's audit trail: the writer on the request path, and the store the
/// query endpoint reads.
pub struct AuditTrail {
    pub writer: Arc<writer::AuditWriter>,
    pub store: Arc<dyn store::AuditStore>,
    /// Set once a reader has made sure of the schema (see [`AuditTrail::readable`]).
    schema: tokio::sync::OnceCell<()>,
    /// Held while a chain check asked over HTTP runs: one at a time, since each
    /// reads every row of its range.
    pub verifying: tokio::sync::Mutex<()>,
}

impl AuditTrail {
    /// Opens the store and spool and starts the writer (needs a Tokio runtime).
    pub fn start(
        config: &AuditConfig,
        metrics: Arc<crate::telemetry::Metrics>,
        redact: Arc<dyn Redact>,
    ) -> Result<AuditTrail, String> {
        let store = open_store(&config.database).map_err(|e| e.to_string())?;
        let spool = spool::Spool::open(&config.spool_dir, &config.instance)
            .map_err(|e| format!("audit spool {}: {e}", config.spool_dir.display()))?;
        let rows = row::RowBuilder {
            text: config.text,
            prices: config.prices.clone().into_iter().collect(),
            redact,
        };
        let settings = writer::WriterSettings {
            instance: config.instance.clone(),
            queue: config.queue,
            batch_rows: config.batch_rows,
            flush_every: config.flush_every,
            write_timeout: config.write_timeout,
            shutdown_deadline: config.shutdown_deadline,
            retention: config.retention,
        };
        let writer = writer::AuditWriter::start(
            Arc::clone(&store),
            Arc::new(spool),
            rows,
            settings,
            metrics,
        );
        Ok(AuditTrail {
            writer: Arc::new(writer),
            store,
            schema: tokio::sync::OnceCell::new(),
            verifying: tokio::sync::Mutex::new(()),
        })
    }

    /// The store, for reading, its schema made first. The writer migrates as it
    /// connects, in the background and after any backoff; a read that comes
    /// before (a busy start, a database that was down) would find no table and
    /// answer an error where the answer is "nothing yet".
    pub async fn readable(&self) -> Result<&dyn store::AuditStore, store::StoreError> {
        self.schema.get_or_try_init(|| self.store.migrate()).await?;
        Ok(self.store.as_ref())
    }
}

/// The configured database (connecting lazily).
pub fn open_store(
    database: &AuditDatabase,
) -> Result<Arc<dyn store::AuditStore>, store::StoreError> {
    Ok(match database {
        AuditDatabase::Postgres(url) => {
            Arc::new(store::postgres::PgStore::connect_lazy(url.expose())?)
        }
        AuditDatabase::Sqlite(url) => Arc::new(store::sqlite::SqliteStore::open(url)?),
    })
}
