//! Resuming an answer that broke after part of it was received: a stream cut,
//! stalled past its idle deadline, sent a malformed chunk or an error event. The
//! route's next target that can continue an assistant message is asked for the
//! rest — the same conversation plus an assistant message holding exactly the text
//! already received, in its provider's prefill dialect — and its words are spliced
//! into the same answer: no word repeated or missing, one finish reason, one usage.
//!
//! Left as they broke (the client gets the in-band error): an answer with tool
//! calls or several choices, which no dialect continues; and one no later target
//! can continue. The personal data of the answer stays where it was: text that came
//! from a target reading placeholders is continued with placeholders, and the
//! user's own text (a target reading it) goes only to a target that may read it.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::{Instant, timeout_at};

use super::assemble::{Assembler, collect_into};
use super::retry::classify;
use super::router::{
    enter_gates, first_content, settle_at_end, settle_pass_at_end, with_deadlines,
};
use super::{Attempt, ChunkStream, Target, TimeoutPhase, UpstreamError};
use crate::call::AttemptKind;
use crate::telemetry::Metrics;
use crate::wire::{ChatChunk, ChatCompletion, ChatRequest, Content, Message, Role, Usage};

/// How many times one answer may be resumed: each is a different target's words.
const MAX_RESUMES: usize = 3;

/// How a provider continues an assistant message it is given
/// (`[providers.NAME] prefill`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefill {
    /// It cannot: it is only asked again from the start, when nothing of the
    /// answer's text had arrived (only its reasoning).
    #[default]
    None,
    /// DeepSeek's prefix completion: `"prefix": true` on the final assistant
    /// message, sent to the beta base URL.
    Deepseek,
    /// vLLM: `continue_final_message: true` and `add_generation_prompt: false`.
    Vllm,
    /// A final assistant message is continued as it stands.
    Assistant,
}

impl Prefill {
    pub fn parse(name: &str) -> Option<Prefill> {
        match name {
            "none" => Some(Prefill::None),
            "deepseek" => Some(Prefill::Deepseek),
            "vllm" => Some(Prefill::Vllm),
            "assistant" => Some(Prefill::Assistant),
            _ => None,
        }
    }

    /// `request` asking for the rest of an answer that began with `delivered`, in
    /// this dialect; `None` where it cannot be asked.
    pub fn request(self, request: &ChatRequest, delivered: &str) -> Option<ChatRequest> {
        let mut resumed = request.clone();
        resumed.n = None;
        if delivered.is_empty() {
            return Some(resumed);
        }
        // The answer's length limit covers what was given already.
        let given = u32::try_from(crate::tokens::text_tokens(delivered)).unwrap_or(u32::MAX);
        for n in [&mut resumed.max_tokens, &mut resumed.max_completion_tokens]
            .into_iter()
            .flatten()
        {
            *n = n.saturating_sub(given).max(1);
        }
        let mut message = Message {
            role: Role::Assistant,
            content: Some(Content::Text(delivered.to_owned())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Default::default(),
        };
        match self {
            Prefill::None => return None,
            Prefill::Assistant => {}
            Prefill::Vllm => {
                resumed
                    .extra
                    .insert("continue_final_message".to_owned(), true.into());
                resumed
                    .extra
                    .insert("add_generation_prompt".to_owned(), false.into());
            }
            Prefill::Deepseek => {
                message.extra.insert("prefix".to_owned(), true.into());
            }
        }
        resumed.messages.push(message);
        Some(resumed)
    }
}

/// The attempts made while resuming one answer, for its record: the stream that
/// makes them outlives the router's call.
#[derive(Clone, Default, Debug)]
pub struct ResumeLog(Arc<Mutex<Vec<Attempt>>>);

impl ResumeLog {
    fn push(&self, attempt: Attempt) {
        if let Ok(mut attempts) = self.0.lock() {
            attempts.push(attempt);
        }
    }

    /// The attempts logged so far, leaving none.
    pub fn take(&self) -> Vec<Attempt> {
        self.0
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default()
    }

    /// The targets of the attempts logged so far, in order.
    pub fn targets(&self) -> Vec<Arc<str>> {
        self.0
            .lock()
            .map(|a| a.iter().map(|a| a.target.clone()).collect())
            .unwrap_or_default()
    }

    /// The last attempt, which had begun to give the rest, broke too.
    fn failed_last(&self, error: &UpstreamError) {
        if let Ok(mut attempts) = self.0.lock()
            && let Some(last) = attempts.last_mut()
        {
            last.failure = Some(error.failure());
        }
    }

    /// The target that gave the rest of the answer, once one has.
    pub fn continued_by(&self) -> Option<Arc<str>> {
        let attempts = self.0.lock().ok()?;
        let last = attempts.iter().rev().find(|a| a.failure.is_none())?;
        Some(last.target.clone())
    }
}

/// What resuming needs of the request, owned.
#[derive(Clone)]
pub(super) struct Resumer {
    /// The targets after the one answering, in route order.
    next: Vec<Arc<Target>>,
    /// The request as the answering target was given it: a continuation reads
    /// placeholders where it did, and the user's own text only where it did.
    request: Arc<ChatRequest>,
    deadline: Instant,
    from: Arc<str>,
    metrics: Arc<Metrics>,
    log: ResumeLog,
}

impl Resumer {
    /// For an answer from `targets[at]`, or `None` when no later target could
    /// continue one.
    pub(super) fn new(
        targets: &[Arc<Target>],
        at: usize,
        request: &Arc<ChatRequest>,
        deadline: Instant,
        metrics: &Arc<Metrics>,
        log: &ResumeLog,
    ) -> Option<Resumer> {
        let from = targets.get(at)?;
        if request.n.unwrap_or(1) > 1 {
            return None;
        }
        // Only what can continue, and the user's own text only to a target that
        // may read it.
        let next: Vec<Arc<Target>> = targets
            .iter()
            .skip(at + 1)
            .filter(|t| t.provider.prefill() != Prefill::None)
            .filter(|t| !from.raw_input || t.raw_input)
            .cloned()
            .collect();
        if next.is_empty() {
            return None;
        }
        Some(Resumer {
            next,
            request: Arc::clone(request),
            deadline,
            from: from.id.clone(),
            metrics: Arc::clone(metrics),
            log: log.clone(),
        })
    }

    /// The rest of the answer from the next target that gives it, and the prompt
    /// tokens that request cost (estimated); the original error when none does.
    async fn resume(
        &mut self,
        delivered: &str,
        broke: UpstreamError,
    ) -> Result<(ChunkStream, u64), UpstreamError> {
        while !self.next.is_empty() {
            let target = self.next.remove(0);
            let now = Instant::now();
            if now >= self.deadline {
                break;
            }
            let Some(request) = target.provider.prefill().request(&self.request, delivered) else {
                continue;
            };
            let (permit, transition) = target.breaker.try_acquire(now);
            if let Some(state) = transition {
                self.metrics.breaker_changed(&target.id, state);
            }
            let Some(permit) = permit else {
                continue;
            };
            let prompt_tokens = crate::tokens::prompt_tokens(&request);
            let gates = enter_gates(
                &self.metrics,
                &target,
                &request,
                || prompt_tokens,
                self.deadline,
            );
            let Ok(pass) = gates.await else {
                continue;
            };
            let first_token_by = now
                .checked_add(target.deadlines.first_token)
                .map_or(self.deadline, |t| t.min(self.deadline));
            // Out of the request's own time, the target is not to blame.
            let phase = match first_token_by == self.deadline {
                true => TimeoutPhase::Total,
                false => TimeoutPhase::FirstToken,
            };
            let opened = timeout_at(first_token_by, async {
                let stream = target.provider.stream(&target.model, &request).await?;
                first_content(stream).await
            })
            .await
            .unwrap_or(Err(UpstreamError::Timeout(phase)));
            let latency = now.elapsed();
            match opened {
                Ok(chunks) => {
                    self.log.push(Attempt {
                        target: target.id.clone(),
                        latency,
                        failure: None,
                        kind: AttemptKind::Continuation,
                    });
                    self.metrics
                        .upstream_attempt(&target.id, "ok", latency, None);
                    self.metrics.failover(&self.from, &target.id, "continued");
                    self.from = target.id.clone();
                    let chunks = with_deadlines(chunks, target.deadlines.idle, self.deadline);
                    let chunks = settle_at_end(&self.metrics, &target, chunks, permit);
                    return Ok((settle_pass_at_end(chunks, pass), prompt_tokens));
                }
                Err(error) => {
                    if let Some(pass) = pass {
                        pass.settle(Some(0)).await;
                    }
                    let classified = classify(&error, false);
                    if let Some(state) = permit.record(classified.verdict, Instant::now()) {
                        self.metrics.breaker_changed(&target.id, state);
                    }
                    let message = error.to_string();
                    self.metrics.upstream_attempt(
                        &target.id,
                        error.class(),
                        latency,
                        Some(&message),
                    );
                    self.log.push(Attempt {
                        target: target.id.clone(),
                        latency,
                        failure: Some(error.failure()),
                        kind: AttemptKind::Continuation,
                    });
                }
            }
        }
        Err(broke)
    }
}

/// `chunks`, resumed by `resumer` when they break after text has arrived.
pub(super) fn splice(chunks: ChunkStream, resumer: Resumer) -> ChunkStream {
    spliced(chunks, resumer, String::new())
}

/// A whole answer that broke after `partial`, finished by the first of
/// `resumer`'s targets that continues it; the error it broke with when none does
/// (or it cannot be continued: tool calls, several choices).
pub(super) async fn finish_whole(
    resumer: &Resumer,
    mut partial: Assembler,
    broke: UpstreamError,
) -> Result<ChatCompletion, UpstreamError> {
    let Some(delivered) = partial.resumable_text().map(str::to_owned) else {
        return Err(broke);
    };
    if broke.is_content_filter() {
        return Err(broke);
    }
    // A stream that breaks at once, with the text so far already counted: the
    // splice resumes it from there.
    let broken: ChunkStream = Box::pin(futures_util::stream::iter([Err(broke)]));
    collect_into(&mut partial, spliced(broken, resumer.clone(), delivered)).await
}

fn spliced(chunks: ChunkStream, resumer: Resumer, delivered: String) -> ChunkStream {
    let state = Splice {
        current: chunks,
        resumer,
        attempt_text: delivered.clone(),
        delivered,
        attempt_prompt: None,
        broken: Usage::default(),
        resumed: 0,
        continuing: false,
        finished: false,
        unresumable: false,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        },
    ))
}

struct Splice {
    current: ChunkStream,
    resumer: Resumer,
    /// The answer's text so far, over every attempt.
    delivered: String,
    /// What the current attempt added to it.
    attempt_text: String,
    /// What the current attempt's request cost, in prompt tokens (estimated);
    /// `None` for the first, counted only if it breaks.
    attempt_prompt: Option<u64>,
    /// The usage of the attempts that broke, estimated: added to the last one's.
    broken: Usage,
    resumed: usize,
    /// The current stream continues another's: no role, no reasoning again.
    continuing: bool,
    /// A finish reason has arrived: a later failure does not cut the answer.
    finished: bool,
    /// Tool calls or several choices: nothing can continue it.
    unresumable: bool,
    done: bool,
}

impl Splice {
    async fn next(&mut self) -> Option<Result<ChatChunk, UpstreamError>> {
        loop {
            if self.done {
                return None;
            }
            match self.current.next().await {
                None => return None,
                Some(Ok(mut chunk)) => {
                    self.observe(&chunk);
                    if self.continuing {
                        self.as_continuation(&mut chunk);
                        if chunk.choices.is_empty() && chunk.usage.is_none() {
                            continue;
                        }
                    }
                    return Some(Ok(chunk));
                }
                Some(Err(error)) => {
                    if self.continuing {
                        self.resumer.log.failed_last(&error);
                    }
                    // A refusal on content grounds is the answer, not a break.
                    let resumable = !self.finished
                        && !self.unresumable
                        && !error.is_content_filter()
                        && self.resumed < MAX_RESUMES;
                    if !resumable {
                        self.done = true;
                        return Some(Err(error));
                    }
                    match self.resumer.resume(&self.delivered, error).await {
                        Ok((chunks, prompt_tokens)) => {
                            self.broken.prompt_tokens += self.attempt_prompt.unwrap_or_else(|| {
                                crate::tokens::prompt_tokens(&self.resumer.request)
                            });
                            self.broken.completion_tokens +=
                                crate::tokens::text_tokens(&self.attempt_text);
                            self.attempt_text.clear();
                            self.attempt_prompt = Some(prompt_tokens);
                            self.current = chunks;
                            self.continuing = true;
                            self.resumed += 1;
                        }
                        Err(error) => {
                            self.done = true;
                            return Some(Err(error));
                        }
                    }
                }
            }
        }
    }

    fn observe(&mut self, chunk: &ChatChunk) {
        for choice in &chunk.choices {
            if choice.index != 0 || choice.delta.tool_calls.is_some() {
                self.unresumable = true;
            }
            if let Some(text) = &choice.delta.content {
                self.delivered.push_str(text);
                self.attempt_text.push_str(text);
            }
            if choice.finish_reason.is_some() {
                self.finished = true;
            }
        }
    }

    /// A continuation's chunk as part of the first answer: its role announced
    /// already, its reasoning (thinking again about an answer half given) left
    /// out, and its usage counting the attempts that broke too.
    fn as_continuation(&self, chunk: &mut ChatChunk) {
        for choice in &mut chunk.choices {
            choice.delta.role = None;
            choice.delta.reasoning_content = None;
        }
        chunk.choices.retain(|c| {
            c.finish_reason.is_some()
                || c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
                || !c.delta.extra.is_empty()
        });
        if let Some(usage) = &mut chunk.usage {
            usage.prompt_tokens += self.broken.prompt_tokens;
            usage.completion_tokens += self.broken.completion_tokens;
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ChatRequest {
        serde_json::from_str(r#"{"model":"m","n":1,"messages":[{"role":"user","content":"Q"}]}"#)
            .unwrap()
    }

    #[test]
    fn each_dialect_asks_for_the_rest_its_own_way() {
        let asked = |prefill: Prefill| {
            let request = prefill.request(&request(), "The answer is").unwrap();
            serde_json::to_value(&request).unwrap()
        };
        let assistant = asked(Prefill::Assistant);
        assert_eq!(
            assistant["messages"][1],
            serde_json::json!({"role": "assistant", "content": "The answer is"})
        );
        assert!(assistant.get("n").is_none());
        let vllm = asked(Prefill::Vllm);
        assert_eq!(vllm["continue_final_message"], true);
        assert_eq!(vllm["add_generation_prompt"], false);
        let deepseek = asked(Prefill::Deepseek);
        assert_eq!(deepseek["messages"][1]["prefix"], true);
        assert!(Prefill::None.request(&request(), "The answer is").is_none());
        // Nothing of the answer yet: any provider is asked afresh.
        let afresh = Prefill::None.request(&request(), "").unwrap();
        assert_eq!(afresh.messages.len(), 1);
    }
}
