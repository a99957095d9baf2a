//! The record stage: once a call has ended, its reservation is settled, its answer
//! cached (when whole and cacheable) and its record handed to the audit sink.

use std::sync::Arc;
use std::task::Context;
use std::time::{Duration, SystemTime};

use super::{Pipeline, RequestCtx};
use crate::admit::admission::{Permit, Used};
use crate::audit::{CallRecord, PassageRef};
use crate::call::Outcome;
use crate::error::GatewayError;
use crate::tokens;
use crate::wire::{ChatCompletion, Usage};

/// How a call ended, all the record stage needs of it. The whole-answer path makes
/// one as it replies, the stream task when its stream ends, and a failure its own.
pub(super) struct Finished {
    /// The target that served the answer; `None` when none did.
    pub target: Option<Arc<str>>,
    /// The HTTP status the client got.
    pub status: u16,
    pub outcome: Outcome,
    /// The error's code, when it ended in one.
    pub error: Option<&'static str>,
    pub usage: Option<Usage>,
    pub answer_chars: usize,
    /// The answer's text as the audit record keeps it (sanitised).
    pub answer: String,
    pub first_token: Option<Duration>,
    /// The sanitised answer to keep under the call's cache key.
    pub to_store: Option<ChatCompletion>,
}

impl Finished {
    fn new(target: Option<Arc<str>>, status: u16, outcome: Outcome) -> Self {
        Finished {
            target,
            status,
            outcome,
            error: None,
            usage: None,
            answer_chars: 0,
            answer: String::new(),
            first_token: None,
            to_store: None,
        }
    }

    /// An answer `target` served, ending as `outcome`; the rest is filled in by the
    /// path that served it.
    pub(super) fn answered(target: Arc<str>, outcome: Outcome) -> Self {
        Finished::new(Some(target), 200, outcome)
    }

    /// A call refused or failed before its answer began.
    pub(super) fn failed(error: &GatewayError) -> Self {
        Finished {
            error: Some(error.code()),
            ..Finished::new(None, error.status(), Outcome::Error)
        }
    }
}

impl Pipeline {
    /// Runs a settlement here when it needs no waiting (counters in memory), and
    /// in a task of its own otherwise (Redis): a task per call would cost a
    /// wake-up per call for work that is already done.
    fn settle(&self, settlement: impl Future<Output = ()> + Send + 'static) {
        let mut settlement = Box::pin(settlement);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        if settlement.as_mut().poll(&mut cx).is_pending() {
            // Polled again in the task, with a waker that is heard.
            self.tasks.spawn(settlement);
        }
    }

    /// Stage 6.
    pub(super) fn record(&self, ctx: &mut RequestCtx, finished: Finished) {
        let _stage = ctx.trace.enter("record");
        annotate(ctx, &finished);
        if let Some(permit) = ctx.permit.take() {
            let used = used(ctx, &permit, &finished);
            self.metrics.tokens_used(
                &ctx.caller.tenant,
                &ctx.route.alias,
                used.prompt_tokens,
                used.cached_tokens,
                used.completion_tokens,
            );
            // A permit that counts nothing (no governance) needs no settling.
            if permit.settles() {
                let admission = Arc::clone(&self.admission);
                self.settle(async move { admission.settle(permit, used).await });
            }
        }
        if finished.outcome == Outcome::ContentFilter {
            self.metrics.guard_blocked("output");
        }
        if let (Some(answer), Some(key)) = (finished.to_store, ctx.cache_key.clone()) {
            // Requests waiting on this question get the answer now; the tiers get it
            // in the background.
            self.cache.publish(&key, &answer);
            let cache = Arc::clone(&self.cache);
            self.tasks
                .spawn(async move { cache.store(key, answer).await });
        }
        let local = finished.target.as_deref().is_some_and(|served| {
            ctx.route
                .targets
                .iter()
                .any(|t| t.local && &*t.id == served)
        });
        self.audit.record(CallRecord {
            at: SystemTime::now(),
            request_id: ctx.request_id.to_string(),
            origin: ctx.origin.clone(),
            tenant: Some(ctx.caller.tenant.to_string()),
            key_id: ctx.caller.key_id.as_deref().map(str::to_owned),
            user: ctx.user.clone(),
            alias: Some(ctx.route.alias.to_string()),
            target: finished.target.as_deref().map(str::to_owned),
            local,
            attempts: ctx
                .attempts
                .iter()
                .cloned()
                .chain(ctx.resumed.take())
                .collect(),
            stream: ctx.stream,
            cache: Some(ctx.cache),
            status: finished.status,
            outcome: finished.outcome,
            error: finished.error,
            latency: ctx.started.elapsed(),
            time_to_first_token: finished.first_token,
            usage: finished.usage,
            answer_chars: finished.answer_chars,
            pii: ctx.pii.iter().map(|&(kind, n)| (kind.name(), n)).collect(),
            prompt: ctx.prompt_text.clone(),
            answer: finished.answer,
            passages: ctx.citations.iter().map(PassageRef::from).collect(),
        });
    }
}

/// The request's span gets the call's GenAI attributes: what was asked, who
/// served it, the tokens, the failover chain, how it ended. No text, no key.
fn annotate(ctx: &RequestCtx, finished: &Finished) {
    ctx.trace.set_all(|span| {
        span.set("gen_ai.operation.name", ctx.route.kind.name());
        span.text("gen_ai.request.model", &ctx.route.alias);
        if let Some((system, model)) = finished.target.as_deref().and_then(provider_and_model) {
            span.text("gen_ai.system", system);
            span.text("gen_ai.response.model", model);
        }
        if let Some(usage) = &finished.usage {
            span.set("gen_ai.usage.input_tokens", usage.prompt_tokens as i64);
            span.set("gen_ai.usage.output_tokens", usage.completion_tokens as i64);
        }
        let resumed = ctx.resumed.targets();
        let mut chain = ctx.attempts.iter().map(|a| &a.target).chain(&resumed);
        match (chain.next(), chain.next()) {
            (Some(only), None) => span.text("ragway.failover.chain", only),
            (Some(first), Some(second)) => {
                let rest = [first, second].into_iter().chain(chain);
                let chain: Vec<&str> = rest.map(|t| &**t).collect();
                span.text("ragway.failover.chain", &chain.join(" > "));
            }
            (None, _) => {}
        }
        span.text("ragway.tenant", &ctx.caller.tenant);
        span.set("ragway.cache", ctx.cache.as_str());
        span.set("ragway.outcome", finished.outcome.as_str());
        span.set("ragway.stream", ctx.stream);
        if let Some(error) = finished.error {
            span.set("error.type", error);
        }
    });
}

/// `provider:model` split at its colon, found byte by byte: `split_once(':')`
/// runs a general character searcher, several times the cost for targets this
/// short.
fn provider_and_model(target: &str) -> Option<(&str, &str)> {
    let at = target.bytes().position(|b| b == b':')?;
    Some((&target[..at], &target[at + 1..]))
}

/// What a call used: the provider's count; for an answer that ended without one
/// (cut, abandoned), the prompt as counted and what was delivered; nothing for a
/// cache hit or a call that failed before an answer.
fn used(ctx: &RequestCtx, permit: &Permit, finished: &Finished) -> Used {
    if ctx.cache.is_hit() || finished.target.is_none() {
        return Used::default();
    }
    let target = finished.target.clone();
    match finished.usage {
        Some(usage) if usage.prompt_tokens + usage.completion_tokens > 0 => Used {
            prompt_tokens: usage.prompt_tokens,
            cached_tokens: usage.cached_tokens(),
            completion_tokens: usage.completion_tokens,
            target,
        },
        _ => Used {
            prompt_tokens: permit.prompt_tokens,
            cached_tokens: 0,
            completion_tokens: tokens::text_tokens(&finished.answer),
            target,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::provider_and_model;

    #[test]
    fn a_target_splits_at_its_first_colon_as_split_once_does() {
        for target in [
            "deepseek:deepseek-chat",
            "local",
            "a:b:c",
            ":",
            "qiniu:",
            "智谱:glm-4",
        ] {
            assert_eq!(
                provider_and_model(target),
                target.split_once(':'),
                "{target}"
            );
        }
    }
}
