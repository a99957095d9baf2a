//! The sanitize stage: personal data in a request is replaced by placeholders before
//! anything leaves the process, and restored in the answer for the client.
//!
//! - [`detect`] finds values (one multi-pattern automaton, then a validator per
//!   shape from [`validate`]), in text that [`normalize`] folded first (full-width
//!   digits, zero-width characters);
//! - [`check`] holds the check-digit and date arithmetic the validators use;
//! - [`Policy`] says per [`Kind`] what to do: placeholder, mask, hash, block, allow;
//! - [`Vault`] remembers the placeholders of one request and restores them, also
//!   in streams ([`StreamRestorer`]);
//! - [`guard`] is the operator's list of words and patterns refused or starred out
//!   in both directions.

pub mod check;
mod detect;
pub mod guard;
mod kind;
mod normalize;
mod replace;
mod validate;
mod vault;

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::Value;

pub use detect::{Detectors, Found};
pub use guard::ContentGuard;
pub use kind::{Action, Kind, Policy};
pub use vault::{StreamRestorer, Vault};

use crate::error::GatewayError;
use crate::wire::{ChatRequest, ContentPart};

pub trait Sanitizer: Send + Sync {
    /// Rewrites every text of `request` in place, recording its placeholders in
    /// `vault`. An error rejects the request: it is never forwarded unsanitised.
    fn sanitize(&self, request: &mut ChatRequest, vault: &mut Vault) -> Result<(), GatewayError>;

    /// One more text for the same request (a retrieved passage, or an answer that
    /// was produced from raw text), into the same vault. Never refuses: `block`
    /// applies to what the user sends.
    fn sanitize_text(&self, text: &str, vault: &mut Vault) -> Result<String, GatewayError>;
}

/// The detectors of [`detect`] under a [`Policy`].
pub struct PiiSanitizer {
    detectors: Detectors,
    policy: Policy,
    /// The key of the `hash` action.
    hash_key: Vec<u8>,
}

impl PiiSanitizer {
    pub fn new(policy: Policy, hash_key: Vec<u8>) -> PiiSanitizer {
        PiiSanitizer {
            detectors: Detectors::new(),
            policy,
            hash_key,
        }
    }

    /// `text` with its values replaced, or `None` when it holds none. Kinds whose
    /// action is `block` are added to `blocked` (and still replaced).
    fn rewrite(&self, text: &str, vault: &mut Vault, blocked: &mut Vec<Kind>) -> Option<String> {
        let found = self.detectors.find(text);
        if found.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len() + 8 * found.len());
        let mut last = 0;
        for Found { start, end, kind } in found {
            out.push_str(&text[last..start]);
            last = end;
            let value = &text[start..end];
            let action = self.policy.action(kind);
            if kind != Kind::Literal {
                vault.count(kind, action);
            }
            match action {
                Action::Placeholder => out.push_str(vault.placeholder(kind, value)),
                Action::Block => {
                    if !blocked.contains(&kind) {
                        blocked.push(kind);
                    }
                    out.push_str(vault.placeholder(kind, value));
                }
                // As it reads: `１３９…` is starred and hashed like `139…`.
                Action::Mask => out.push_str(&replace::mask(kind, &normalize::fold(value))),
                Action::Hash => {
                    let value = normalize::fold(value);
                    out.push_str(&replace::hash(kind, &value, &self.hash_key));
                }
                Action::Allow => out.push_str(value),
            }
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

/// Runs the detectors failing closed: a panic in one rejects the request instead of
/// letting it through.
fn fail_closed<T>(work: impl FnOnce() -> T) -> Result<T, GatewayError> {
    catch_unwind(AssertUnwindSafe(work))
        .map_err(|_| GatewayError::Internal("the PII sanitiser failed".to_owned()))
}

impl Sanitizer for PiiSanitizer {
    fn sanitize(&self, request: &mut ChatRequest, vault: &mut Vault) -> Result<(), GatewayError> {
        let mut blocked = Vec::new();
        fail_closed(|| {
            for_each_text(request, &mut |text| {
                if let Some(clean) = self.rewrite(text, vault, &mut blocked) {
                    *text = clean;
                }
            });
        })?;
        if blocked.is_empty() {
            return Ok(());
        }
        blocked.sort();
        Err(GatewayError::PiiBlocked(
            blocked.into_iter().map(Kind::name).collect(),
        ))
    }

    /// A kind whose action is `block` is replaced by a placeholder here: a document
    /// or an answer is not the user's request to refuse.
    fn sanitize_text(&self, text: &str, vault: &mut Vault) -> Result<String, GatewayError> {
        fail_closed(|| {
            self.rewrite(text, vault, &mut Vec::new())
                .unwrap_or_else(|| text.to_owned())
        })
    }
}

/// The sanitiser bound to one request's vault, for the stages after the first that
/// bring in more text (retrieved passages).
pub struct Scope<'a> {
    pub sanitizer: &'a dyn Sanitizer,
    pub vault: &'a mut Vault,
}

impl crate::call::Placeholders for Scope<'_> {
    fn text(&mut self, text: &str) -> Result<String, GatewayError> {
        self.sanitizer.sanitize_text(text, self.vault)
    }
}

/// Every text of a request that is sent upstream: message contents and text parts,
/// names, tool calls and any extra fields; tool definitions, `tool_choice`,
/// `response_format` and `stop`; the `user` field and the request's own extra
/// fields. Images, audio and files are not text and pass as they are.
pub fn for_each_text(request: &mut ChatRequest, f: &mut dyn FnMut(&mut String)) {
    use crate::wire::{Content, Stop};
    for message in &mut request.messages {
        match &mut message.content {
            Some(Content::Text(text)) => f(text),
            Some(Content::Parts(parts)) => {
                for part in parts {
                    if let ContentPart::Text { text } = part {
                        f(text);
                    }
                }
            }
            None => {}
        }
        if let Some(name) = &mut message.name {
            f(name);
        }
        for call in message.tool_calls.iter_mut().flatten() {
            for_each_json_text(call, f);
        }
        for value in message.extra.values_mut() {
            for_each_json_text(value, f);
        }
    }
    if let Some(user) = &mut request.user {
        f(user);
    }
    // A stop sequence is rewritten like the answer it must match.
    match &mut request.stop {
        Some(Stop::One(stop)) => f(stop),
        Some(Stop::Many(stops)) => stops.iter_mut().for_each(&mut *f),
        None => {}
    }
    let typed = [&mut request.tool_choice, &mut request.response_format];
    for value in request
        .tools
        .iter_mut()
        .flatten()
        .chain(typed.into_iter().flatten())
    {
        for_each_json_text(value, f);
    }
    for value in request.extra.values_mut() {
        for_each_json_text(value, f);
    }
}

fn for_each_json_text(value: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match value {
        Value::String(text) => f(text),
        Value::Array(items) => items.iter_mut().for_each(|v| for_each_json_text(v, f)),
        Value::Object(map) => map.values_mut().for_each(|v| for_each_json_text(v, f)),
        _ => {}
    }
}
