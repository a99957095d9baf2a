//! The record stage's durable half: one record per call, handed to an [`AuditSink`].
//!
//! [`NoAudit`] is the pass-through used while no audit store is configured: records
//! are dropped (the access log and metrics still see every call).

use std::time::{Duration, SystemTime};

use crate::generate::Attempt;
use crate::retrieve::Citation;
use crate::wire::Usage;

/// Everything known about one finished call. Text fields are already sanitised.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub at: SystemTime,
    pub request_id: String,
    pub tenant: String,
    pub key_id: Option<String>,
    pub user: Option<String>,
    pub alias: String,
    /// The target that answered, if any did.
    pub target: Option<String>,
    pub attempts: Vec<Attempt>,
    pub stream: bool,
    pub cache: &'static str,
    /// The HTTP status the client got (for a stream: the status of its head).
    pub status: u16,
    /// How the call ended: `ok`, `error`, `interrupted` or `abandoned`.
    pub outcome: &'static str,
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
