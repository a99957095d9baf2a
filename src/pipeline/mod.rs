//! The request path. [`Pipeline::run`] calls the stages in order — admit, sanitize,
//! cache, retrieve, generate, respond, record — and does nothing else; each stage
//! lives in its own module behind a small trait.

mod ctx;
mod live;
mod passthrough;
mod record;
mod rerank;
mod respond;
mod stream;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

pub use ctx::{Caller, RequestCtx};
pub use live::{LiveCall, LiveClient, MAX_JSON};
pub use passthrough::PassThrough;
pub use rerank::{AliasRanker, RerankAsk};
pub use stream::data_frame;

use crate::admit::admission::{Admit, Ask};
use crate::audit::AuditSink;
use crate::cache::{AnswerCache, CacheLookup, CacheStatus};
use crate::error::GatewayError;
use crate::generate::{Answer, AnswerBody, Generate, Prompt};
use crate::retrieve::Retriever;
use crate::sanitize::guard::Verdict;
use crate::sanitize::{ContentGuard, Sanitizer, Scope, Vault, for_each_text};
use crate::telemetry::Metrics;
use crate::wire::{ChatCompletion, ChatRequest};
use record::Finished;
use respond::Shaping;

/// The stages, each behind its trait, plus what they share.
#[derive(Clone)]
pub struct Pipeline {
    /// Keys' and tenants' limits: a call reserves before it runs.
    pub admission: Arc<dyn Admit>,
    pub sanitizer: Arc<dyn Sanitizer>,
    /// The operator's list of refused words, applied to requests and answers.
    pub guard: Arc<ContentGuard>,
    pub cache: Arc<dyn AnswerCache>,
    pub retriever: Arc<dyn Retriever>,
    pub generator: Arc<dyn Generate>,
    /// `/v1/rerank`'s and retrieval's: rerank aliases' targets, then the embedder.
    pub ranker: Arc<crate::generate::Ranker>,
    pub audit: Arc<dyn AuditSink>,
    pub metrics: Arc<Metrics>,
    /// Streams and cache stores outlive their handler; they are tracked so that
    /// shutdown waits for them.
    pub tasks: TaskTracker,
}

/// The answer as it goes to the client (what came from upstream is a
/// [`generate::Answer`](Answer)).
pub struct Reply {
    pub target: Arc<str>,
    pub attempts: usize,
    /// The target that gave the rest of a whole answer another began.
    pub continued: Option<Arc<str>>,
    pub cache: CacheStatus,
    /// The caller's limits after this call: the `x-ratelimit-*` headers.
    pub headroom: crate::quota::Headroom,
    pub body: ReplyBody,
}

pub enum ReplyBody {
    Whole(Box<ChatCompletion>),
    /// Server-sent event frames, ready to write.
    Stream(mpsc::Receiver<Bytes>),
}

impl Pipeline {
    pub async fn run(
        &self,
        mut ctx: RequestCtx,
        request: ChatRequest,
    ) -> Result<Reply, GatewayError> {
        // 0. admit: the call's reservation against its key's and tenant's limits.
        match self.admission.admit(&ctx.call(), Ask::chat(&request)).await {
            Ok(permit) => ctx.permit = Some(permit),
            Err(error) => {
                self.record(&mut ctx, Finished::failed(&error));
                return Err(error);
            }
        }
        let (answer, shaping) = match self.answer(&mut ctx, request).await {
            Ok(answered) => answered,
            Err(error) => {
                self.record(&mut ctx, Finished::failed(&error)); // 6. record
                return Err(error);
            }
        };
        let (attempts, cache) = (ctx.attempts.len(), ctx.cache);
        let continued = ctx.resumed.continued_by();
        let headroom = ctx.permit.as_ref().map(|p| p.headroom).unwrap_or_default();
        let body = match answer.body {
            // 5. respond, then 6. record
            AnswerBody::Whole(completion) => {
                let text = respond::answer_text(&completion);
                let recorded = self.sanitize_for_record(&ctx, &shaping.vault, text);
                let (completion, finished) =
                    respond::whole(&ctx, &answer.target, *completion, &shaping, recorded);
                self.record(&mut ctx, finished);
                ReplyBody::Whole(Box::new(completion))
            }
            // A stream is shaped chunk by chunk in a task of its own, which records
            // the call when the stream ends.
            AnswerBody::Stream(chunks) => ReplyBody::Stream(self.stream(
                ctx,
                answer.target.clone(),
                answer.started,
                chunks,
                shaping,
            )),
        };
        Ok(Reply {
            target: answer.target,
            attempts,
            continued,
            cache,
            headroom,
            body,
        })
    }

    /// Stages 1–4: the answer as it came from upstream (or the cache), and how to
    /// shape it for this client.
    async fn answer(
        &self,
        ctx: &mut RequestCtx,
        mut prompt: ChatRequest,
    ) -> Result<(Answer, Shaping), GatewayError> {
        let guard = self.guard.list(); // 1. sanitize: the content guard, then PII
        let mut vault = {
            let _stage = ctx.trace.enter("sanitize");
            self.sanitize(ctx, &mut prompt, &guard)?
        };
        // The cache key includes what retrieval would use: a document change or a
        // template edit makes earlier answers unreachable.
        ctx.corpus_version = self.retriever.corpus_version(&ctx.call(), &prompt).await?;
        let call = ctx.call();
        let looked_up = self.cache.lookup(&call, &prompt);
        // A request the cache does not serve (its alias's policy, no cache)
        // records no cache span: nothing was looked up.
        let used = |found: &CacheLookup| !matches!(found, CacheLookup::Bypass);
        match ctx.trace.stage_if("cache", looked_up, used).await {
            // 2. cache
            CacheLookup::Hit(stored, tier) => {
                ctx.cache = tier;
                ctx.citations = respond::stored_citations(&stored);
                let answer = respond::from_cache(ctx, stored);
                return Ok((answer, Shaping::new(vault, guard)));
            }
            CacheLookup::Miss(key, flight) => {
                ctx.cache = CacheStatus::Miss;
                // `no-store`: looked up, but this answer is not kept.
                ctx.cache_key = (!ctx.cache_control.no_store).then_some(key);
                ctx.flight = flight;
            }
            CacheLookup::Bypass => ctx.cache = CacheStatus::Bypass,
        }
        let mut pii = Scope {
            sanitizer: self.sanitizer.as_ref(),
            vault: &mut vault,
        };
        let placeholders = pii.vault.placeholders().count();
        let call = ctx.call();
        let grounded = self.retriever.ground(&call, &mut prompt, &mut pii);
        // 3. retrieve: a span where there is a corpus to search (its version
        // says so), none for a request nothing is retrieved for.
        ctx.citations = match ctx.corpus_version.is_some() {
            true => ctx.trace.stage("retrieve", grounded).await?,
            false => grounded.await?,
        };
        // Passages brought personal data of their own: an answer may name it by a
        // placeholder only this request's vault holds, so it is not kept.
        if vault.placeholders().count() > placeholders {
            ctx.cache_key = None;
        }
        let prompt = Prompt {
            raw: raw_prompt(ctx, &prompt, &vault).map(Arc::new),
            sanitised: Arc::new(prompt),
        };
        let call = ctx.call();
        let generating = self.generator.generate(&call, &ctx.route, &prompt);
        let generated = ctx.trace.stage("generate", generating).await; // 4. generate
        ctx.attempts = generated.attempts;
        ctx.resumed = generated.resumed;
        let answer = generated.result?;
        ctx.raw_output = answer.raw_output;
        Ok((answer, Shaping::new(vault, guard)))
    }

    /// Stage 1: the content guard over what the user wrote, then personal data into
    /// placeholders. What was found is counted even when the request is refused.
    fn sanitize(
        &self,
        ctx: &mut RequestCtx,
        prompt: &mut ChatRequest,
        guard: &crate::sanitize::guard::GuardList,
    ) -> Result<Vault, GatewayError> {
        let mut blocked = false;
        for_each_text(prompt, &mut |text| match guard.check(text) {
            Verdict::Pass => {}
            Verdict::Masked(masked) => *text = masked,
            Verdict::Blocked(_) => blocked = true,
        });
        if blocked {
            self.metrics.guard_blocked("input");
            return Err(GatewayError::ContentFilter(
                "the request contains content this service does not accept".to_owned(),
            ));
        }
        let mut vault = Vault::new();
        let result = self.sanitizer.sanitize(prompt, &mut vault);
        for (kind, action, count) in vault.detections() {
            self.metrics.pii_detected(kind.name(), action.name(), count);
        }
        ctx.pii = vault.counts();
        // A refused request was wholly rewritten and may be recorded; after a failure
        // the text may be half raw, and is not.
        if matches!(result, Ok(()) | Err(GatewayError::PiiBlocked(_))) {
            ctx.user.clone_from(&prompt.user);
            if self.audit.keeps_text() {
                ctx.prompt_text = serde_json::to_string(&prompt.messages).unwrap_or_default();
            }
        }
        result.map(|()| vault)
    }

    /// The answer's text for the audit record: as the provider wrote it (it only
    /// ever saw placeholders), or sanitised again when the target read raw text.
    fn sanitize_for_record(&self, ctx: &RequestCtx, vault: &Vault, text: String) -> String {
        if !ctx.raw_output {
            return text;
        }
        // A failure here must not put raw text on the record: keep nothing instead.
        self.sanitizer
            .sanitize_text(&text, &mut vault.clone())
            .unwrap_or_default()
    }
}

/// The request with its own values back, for a target that reads raw text; `None`
/// when no target of the route does, or there is nothing to restore.
fn raw_prompt(ctx: &RequestCtx, prompt: &ChatRequest, vault: &Vault) -> Option<ChatRequest> {
    if vault.is_empty() || !ctx.route.targets.iter().any(|t| t.raw_input) {
        return None;
    }
    let mut raw = prompt.clone();
    for_each_text(&mut raw, &mut |text| *text = vault.restore(text));
    Some(raw)
}
