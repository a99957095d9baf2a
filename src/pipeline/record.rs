//! The record stage: once a call has ended, its answer is cached (when whole and
//! cacheable) and its record handed to the audit sink.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Pipeline, RequestCtx, respond};
use crate::audit::{CallRecord, PassageRef};
use crate::cache::CacheKey;
use crate::call::Outcome;
use crate::error::GatewayError;
use crate::generate::{Assembler, UpstreamError};
use crate::wire::ChatCompletion;

/// How a stream ended.
pub(super) enum StreamEnd {
    Complete,
    /// The upstream failed after the client had begun to receive the answer.
    Interrupted(UpstreamError),
    /// The client went away.
    Abandoned,
    /// The content guard cut the answer.
    Filtered,
}

impl StreamEnd {
    pub(super) fn outcome(&self) -> Outcome {
        match self {
            StreamEnd::Complete => Outcome::Ok,
            StreamEnd::Interrupted(_) => Outcome::Interrupted,
            StreamEnd::Abandoned => Outcome::Abandoned,
            StreamEnd::Filtered => Outcome::ContentFilter,
        }
    }
}

impl Pipeline {
    pub(super) fn record_whole(
        &self,
        ctx: &RequestCtx,
        target: &str,
        reply: &ChatCompletion,
        to_store: Option<Box<(CacheKey, ChatCompletion)>>,
        recorded: String,
        filtered: bool,
    ) {
        if let Some(stored) = to_store {
            let (key, answer) = *stored;
            self.store(key, answer);
        }
        let outcome = if filtered {
            self.metrics.guard_blocked("output");
            Outcome::ContentFilter
        } else {
            Outcome::Ok
        };
        let answer_chars = reply
            .choices
            .iter()
            .filter_map(|c| c.message.content.as_deref())
            .map(|t| t.chars().count())
            .sum();
        let mut record = base_record(ctx, 200, outcome);
        record.set_target(ctx, target);
        record.usage = reply.usage;
        record.answer_chars = answer_chars;
        record.answer = recorded;
        self.audit.record(record);
    }

    pub(super) fn record_error(&self, ctx: &RequestCtx, error: &GatewayError) {
        let status = error.status();
        let mut record = base_record(ctx, status, Outcome::Error);
        record.error = Some(error.code());
        self.audit.record(record);
    }

    pub(super) fn record_stream(
        &self,
        ctx: &RequestCtx,
        target: &str,
        end: StreamEnd,
        accumulated: Assembler,
        first_token: Option<Duration>,
        recorded: String,
    ) {
        let outcome = end.outcome();
        self.metrics.stream_finished(
            &ctx.route.alias,
            target,
            outcome.as_str(),
            ctx.started.elapsed(),
        );
        let mut record = base_record(ctx, 200, outcome);
        record.set_target(ctx, target);
        record.time_to_first_token = first_token;
        record.usage = accumulated.usage();
        record.answer_chars = accumulated.answer_chars();
        record.answer = recorded;
        if let StreamEnd::Interrupted(_) = end {
            record.error = Some("stream_interrupted");
        }
        // Only an answer that finished is worth serving again, and one produced from
        // raw text may hold raw values.
        if let (StreamEnd::Complete, Some(key), false) =
            (&end, ctx.cache_key.clone(), ctx.raw_output)
            && let Some(mut answer) = accumulated.finish()
            && respond::cacheable(&answer)
        {
            answer.model = target.to_owned();
            respond::attach_citations(ctx, &mut answer);
            self.store(key, answer);
        }
        self.audit.record(record);
    }

    fn store(&self, key: CacheKey, answer: ChatCompletion) {
        // Requests waiting on this question get the answer now; the tiers get it
        // in the background.
        self.cache.publish(&key, &answer);
        let cache = Arc::clone(&self.cache);
        self.tasks
            .spawn(async move { cache.store(key, answer).await });
    }
}

impl CallRecord {
    fn set_target(&mut self, ctx: &RequestCtx, target: &str) {
        self.target = Some(target.to_owned());
        self.local = ctx
            .route
            .targets
            .iter()
            .any(|t| t.local && &*t.id == target);
    }
}

fn base_record(ctx: &RequestCtx, status: u16, outcome: Outcome) -> CallRecord {
    CallRecord {
        at: SystemTime::now(),
        request_id: ctx.request_id.to_string(),
        origin: ctx.origin.clone(),
        tenant: Some(ctx.caller.tenant.to_string()),
        key_id: ctx.caller.key_id.as_deref().map(str::to_owned),
        user: ctx.user.clone(),
        alias: Some(ctx.route.alias.to_string()),
        target: None,
        local: false,
        attempts: ctx.attempts.clone(),
        stream: ctx.stream,
        cache: Some(ctx.cache),
        status,
        outcome,
        error: None,
        latency: ctx.started.elapsed(),
        time_to_first_token: None,
        usage: None,
        answer_chars: 0,
        pii: ctx.pii.iter().map(|&(kind, n)| (kind.name(), n)).collect(),
        prompt: ctx.prompt_text.clone(),
        answer: String::new(),
        passages: ctx.citations.iter().map(PassageRef::from).collect(),
    }
}
