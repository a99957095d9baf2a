//! The respond stage: shape an answer for the client. ragway's own id and timestamp,
//! the serving target as `model`, placeholders restored, citations attached, and
//! the usage chunk only for clients that asked for it.
//!
//! Unlike the other stages this is the pipeline's own logic with nothing to switch
//! or replace, so it is plain functions rather than a trait.

mod shape;
mod whole;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::RequestCtx;
use crate::sanitize::Vault;
use crate::sanitize::guard::{GuardList, Verdict};
use crate::wire::ChatCompletion;

pub(super) use shape::ChunkShaper;
pub(super) use whole::{answer_text, attach_citations, from_cache, stored_citations, whole};

/// The finish reason of an answer the content guard cut.
const FILTERED: &str = "content_filter";

/// How an upstream (sanitised) answer is shaped into the client's: this request's
/// own values restored, then the content guard.
#[derive(Clone)]
pub(super) struct Shaping {
    pub vault: Arc<Vault>,
    pub guard: Arc<GuardList>,
}

impl Shaping {
    pub(super) fn new(vault: Vault, guard: Arc<GuardList>) -> Self {
        Shaping {
            vault: Arc::new(vault),
            guard,
        }
    }

    /// One whole text; `true` when the guard cut it.
    fn text(&self, text: &str) -> (String, bool) {
        let restored = self.vault.restore(text);
        match self.guard.check(&restored) {
            Verdict::Pass => (restored, false),
            Verdict::Masked(masked) => (masked, false),
            Verdict::Blocked(before) => (before, true),
        }
    }
}

/// Whether an answer may be served again: finished by the model or at the
/// request's own `max_tokens` (part of the key), with no tool calls (a tool call's
/// result belongs to the conversation that made it).
pub(super) fn cacheable(answer: &ChatCompletion) -> bool {
    answer.choices.iter().all(|c| {
        matches!(c.finish_reason.as_deref(), Some("stop" | "length"))
            && c.message.tool_calls.is_none()
    })
}

fn response_id(ctx: &RequestCtx) -> String {
    format!("chatcmpl-{}", ctx.request_id)
}

fn citations(ctx: &RequestCtx) -> Option<Value> {
    (!ctx.citations.is_empty()).then(|| json!({ "citations": ctx.citations }))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
