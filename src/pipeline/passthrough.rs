//! The calls passed through to a provider endpoint other than chat (speech
//! recognition and synthesis, OCR): admitted against the caller's limits, text
//! to be spoken through the content guard and personal data, relayed to the
//! alias's targets with chat's breakers, retries, deadlines and failover, and
//! recorded with what they carried and what came back, sanitised. The answer is
//! the provider's own, as it sent it.

use serde_json::Value;

use crate::admit::admission::Ask;
use crate::call::Outcome;
use crate::error::GatewayError;
use crate::quota::Headroom;
use crate::sanitize::Vault;
use crate::sanitize::guard::Verdict;

use super::record::Finished;
use super::{Pipeline, RequestCtx};

/// One call to pass through.
pub struct PassThrough {
    /// The request body for a target; `model` is set to the target's own.
    pub body: Value,
    /// Where in `body` the text the target will speak is (a JSON pointer): it
    /// must hold no personal data (a placeholder cannot be spoken) and pass the
    /// content guard, which may mask words of it.
    pub spoken: Option<&'static str>,
    /// What the record keeps of the request (no personal data: sizes, formats).
    pub summary: Value,
    /// The recognised text in the answer, for the record (sanitised there).
    pub text_of: fn(&Value) -> Option<String>,
    /// Whether an answer is one: a target whose answer is refused failed, and
    /// the next is asked.
    pub accept: fn(&Value) -> Result<(), String>,
}

impl Pipeline {
    pub async fn pass_through(
        &self,
        mut ctx: RequestCtx,
        mut call: PassThrough,
    ) -> Result<(std::sync::Arc<str>, Value, Headroom), GatewayError> {
        let spoken = call
            .spoken
            .and_then(|at| call.body.pointer_mut(at))
            .and_then(|v| v.as_str().map(str::to_owned));
        let ask = Ask {
            prompt_tokens: spoken.as_deref().map_or(0, crate::tokens::text_tokens),
            max_output: Some(0),
        };
        match self.admission.admit(&ctx.call(), ask).await {
            Ok(permit) => ctx.permit = Some(permit),
            Err(error) => {
                self.record(&mut ctx, Finished::failed(&error));
                return Err(error);
            }
        }
        let mut summary = call.summary;
        if let (Some(text), Some(at)) = (spoken, call.spoken) {
            let speakable = {
                let _stage = ctx.trace.enter("sanitize");
                self.speakable(&mut ctx, &text)
            };
            match speakable {
                Ok((said, recorded)) => {
                    if let Some(slot) = call.body.pointer_mut(at) {
                        *slot = Value::String(said);
                    }
                    summary["text"] = Value::String(recorded);
                }
                Err(error) => {
                    self.record(&mut ctx, Finished::failed(&error));
                    return Err(error);
                }
            }
        }
        if self.audit.keeps_text() {
            ctx.prompt_text = summary.to_string();
        }
        let path = ctx.route.kind.route().trim_start_matches("/v1");
        let body = |target: &crate::generate::Target| {
            let mut body = call.body.clone();
            if body.get("model").is_some() {
                body["model"] = Value::String(target.model.clone());
            }
            body
        };
        let deadline = ctx.call().deadline;
        let accept = |answer: Value| (call.accept)(&answer).map(|()| answer);
        let relaying =
            crate::generate::relay(&self.metrics, &ctx.route, path, body, accept, deadline);
        let relayed = ctx.trace.stage("generate", relaying).await;
        ctx.attempts = relayed.attempts;
        let headroom = ctx.permit.as_ref().map(|p| p.headroom).unwrap_or_default();
        match relayed.result {
            Ok((target, answer)) => {
                let mut finished = Finished::answered(target.clone(), Outcome::Ok);
                if let Some(text) = (call.text_of)(&answer) {
                    finished.answer_chars = text.chars().count();
                    // Sanitised only for a trail that keeps text.
                    if self.audit.keeps_text() {
                        let mut vault = Vault::new();
                        finished.answer = self
                            .sanitizer
                            .sanitize_text(&text, &mut vault)
                            .unwrap_or_default();
                    }
                }
                self.record(&mut ctx, finished);
                Ok((target, answer, headroom))
            }
            Err(error) => {
                self.record(&mut ctx, Finished::failed(&error));
                Err(error)
            }
        }
    }

    /// Checks text to be spoken: the guard refuses (or masks) it as it does a
    /// message, and personal data refuses it by kind (spoken through a
    /// placeholder it would be lost; sent as it is, it would leave the gateway).
    /// Returns the text to speak, and the text as the record keeps it.
    fn speakable(
        &self,
        ctx: &mut RequestCtx,
        text: &str,
    ) -> Result<(String, String), GatewayError> {
        let said = match self.guard.list().check(text) {
            Verdict::Pass => text.to_owned(),
            Verdict::Masked(masked) => masked,
            Verdict::Blocked(_) => {
                self.metrics.guard_blocked("input");
                return Err(GatewayError::ContentFilter(
                    "the request contains content this service does not accept".to_owned(),
                ));
            }
        };
        let mut vault = Vault::new();
        let recorded = self.sanitizer.sanitize_text(&said, &mut vault)?;
        ctx.pii = vault.counts();
        if !ctx.pii.is_empty() {
            let kinds = ctx.pii.iter().map(|(kind, _)| kind.name()).collect();
            return Err(GatewayError::PiiBlocked(kinds));
        }
        Ok((said, recorded))
    }
}
