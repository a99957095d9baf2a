//! The retrieve stage proper: find the tenant's passages for the question, put them
//! in the prompt through the grounding template, and say which ones were used.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::corpus::{Corpus, CorpusError, Mode};
use super::fuse::Fused;
use super::prompt::{Lang, PassageView, Prompts};
use super::rerank::Rerank;
use super::{Citation, Retriever};
use super::{PromptLanguage, RagSettings};
use crate::call::Call;
use crate::call::Placeholders;
use crate::error::GatewayError;
use crate::wire::{ChatRequest, Content, Message, Role};

pub struct Grounding {
    corpus: Arc<Corpus>,
    prompts: Prompts,
    language: PromptLanguage,
    defaults: RagSettings,
    by_alias: BTreeMap<String, RagSettings>,
    /// Orders the candidates before they are kept (`retrieval.rerank`).
    reranker: Option<Arc<dyn Rerank>>,
}

impl Grounding {
    pub fn new(
        corpus: Arc<Corpus>,
        prompts: Prompts,
        language: PromptLanguage,
        defaults: RagSettings,
        by_alias: BTreeMap<String, RagSettings>,
    ) -> Grounding {
        Grounding {
            corpus,
            prompts,
            language,
            defaults,
            by_alias,
            reranker: None,
        }
    }

    /// With a rerank step: the search finds twice as many candidates, and
    /// `reranker` orders them before the ones that fit are kept.
    pub fn reranked_by(mut self, reranker: Arc<dyn Rerank>) -> Grounding {
        self.reranker = Some(reranker);
        self
    }

    fn settings(&self, alias: &str) -> &RagSettings {
        self.by_alias.get(alias).unwrap_or(&self.defaults)
    }

    /// Whether this request is grounded: its own `ragway.rag`, else its alias's.
    fn wanted(&self, call: &Call<'_>, prompt: &ChatRequest) -> bool {
        prompt
            .ragway
            .as_ref()
            .and_then(|o| o.rag)
            .unwrap_or(self.settings(call.alias).enabled)
    }

    /// The candidates for `question`: found by one of its words or similar
    /// enough in meaning, best first (twice the alias's count, or four times when
    /// a ranker will choose among them).
    async fn candidates(
        &self,
        tenant: &str,
        question: &str,
        settings: &RagSettings,
    ) -> Result<Vec<Fused>, CorpusError> {
        let wanted = settings.top_k * if self.reranker.is_some() { 4 } else { 2 };
        let found = self
            .corpus
            .search(
                tenant,
                settings.collection.as_deref(),
                question,
                Mode::Hybrid,
                wanted,
            )
            .await?;
        Ok(found
            .into_iter()
            .filter(|p| p.keyword.is_some() || p.dense.is_some_and(|s| s >= settings.min_score))
            .collect())
    }

    /// The candidates in the ranker's order. They leave sanitised, as the prompt
    /// will hold them; a ranker that fails leaves the search's order.
    async fn reranked(
        &self,
        call: &Call<'_>,
        question: &str,
        candidates: Vec<Fused>,
        pii: &mut dyn Placeholders,
    ) -> Result<Vec<Fused>, GatewayError> {
        let Some(reranker) = self.reranker.as_ref().filter(|_| candidates.len() > 1) else {
            return Ok(candidates);
        };
        let texts = candidates
            .iter()
            .map(|p| pii.text(&p.hit.payload.text))
            .collect::<Result<Vec<_>, _>>()?;
        match reranker.order(question, &texts, call.deadline).await {
            Ok(order) => {
                let mut slots: Vec<Option<Fused>> = candidates.into_iter().map(Some).collect();
                Ok(order
                    .into_iter()
                    .filter_map(|i| slots.get_mut(i)?.take())
                    .collect())
            }
            Err(why) => {
                tracing::warn!(%why, "reranking failed; the search's order is kept");
                Ok(candidates)
            }
        }
    }
}

/// The passages kept: best first, within the alias's count and token budget.
fn within_budget(candidates: Vec<Fused>, settings: &RagSettings) -> Vec<Fused> {
    let mut budget = settings.context_tokens;
    let mut kept = Vec::new();
    for passage in candidates {
        let cost = estimate_tokens(&passage.hit.payload.text);
        // The first passage is always kept: without it there is no grounding.
        if !kept.is_empty() && cost > budget {
            break;
        }
        budget = budget.saturating_sub(cost);
        kept.push(passage);
        if kept.len() == settings.top_k {
            break;
        }
    }
    kept
}

#[async_trait]
impl Retriever for Grounding {
    async fn ground(
        &self,
        call: &Call<'_>,
        prompt: &mut ChatRequest,
        pii: &mut dyn Placeholders,
    ) -> Result<Vec<Citation>, GatewayError> {
        let settings = self.settings(call.alias);
        let Some(question) = self
            .wanted(call, prompt)
            .then(|| last_user_text(prompt))
            .flatten()
        else {
            return Ok(Vec::new());
        };
        let candidates = self
            .candidates(&call.caller.tenant, &question, settings)
            .await?;
        let candidates = self.reranked(call, &question, candidates, pii).await?;
        let passages = within_budget(candidates, settings);
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        // The passages are the tenant's own text: their personal data goes into the
        // request's vault like the user's, and leaves only as placeholders.
        let mut shown = Vec::with_capacity(passages.len());
        for p in &passages {
            let payload = &p.hit.payload;
            let headings = payload
                .headings
                .iter()
                .map(|h| pii.text(h))
                .collect::<Result<Vec<_>, _>>()?;
            shown.push((
                pii.text(&payload.title)?,
                headings,
                pii.text(&payload.source)?,
                pii.text(&payload.text)?,
            ));
        }
        let views: Vec<PassageView<'_>> = shown
            .iter()
            .enumerate()
            .map(|(i, (title, headings, source, text))| PassageView {
                n: i + 1,
                title,
                headings: below_title(title, headings),
                source,
                text,
            })
            .collect();
        let lang = match self.language {
            PromptLanguage::Auto => Lang::of(&question),
            PromptLanguage::Zh => Lang::Zh,
            PromptLanguage::En => Lang::En,
        };
        let grounding = self
            .prompts
            .render_in(lang, &question, &views)
            .map_err(GatewayError::Internal)?;
        add_system_text(prompt, grounding);
        Ok(passages
            .into_iter()
            .map(|p| Citation {
                doc_id: p.hit.payload.doc_id,
                title: p.hit.payload.title,
                source: p.hit.payload.source,
                chunk: p.hit.payload.chunk_index,
                score: p.score,
            })
            .collect())
    }

    async fn corpus_version(
        &self,
        call: &Call<'_>,
        prompt: &ChatRequest,
    ) -> Result<Option<String>, GatewayError> {
        if !self.wanted(call, prompt) {
            return Ok(None);
        }
        let generation = self.corpus.generation(&call.caller.tenant).await?;
        Ok(Some(format!("{generation}/{}", self.prompts.version())))
    }
}

/// The heading path without a first heading that only repeats the title (a
/// Markdown document's `# Title`).
fn below_title<'a>(title: &str, headings: &'a [String]) -> &'a [String] {
    match headings.split_first() {
        Some((first, rest)) if first.trim() == title.trim() => rest,
        _ => headings,
    }
}

/// The question: the text of the last user message.
fn last_user_text(prompt: &ChatRequest) -> Option<String> {
    let message = prompt
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)?;
    let text = message.content.as_ref()?.text();
    (!text.trim().is_empty()).then_some(text)
}

/// Appends to the leading system message, or puts one first. One system message
/// suits every provider and chat template (some accept only one, and only first).
fn add_system_text(prompt: &mut ChatRequest, text: String) {
    match prompt.messages.first_mut() {
        Some(Message {
            role: Role::System | Role::Developer,
            content: Some(Content::Text(existing)),
            ..
        }) => {
            existing.push_str("\n\n");
            existing.push_str(&text);
        }
        _ => prompt.messages.insert(
            0,
            Message {
                role: Role::System,
                content: Some(Content::Text(text)),
                name: None,
                tool_calls: None,
                tool_call_id: None,
                extra: Default::default(),
            },
        ),
    }
}

/// Tokens a passage costs in a prompt, estimated without the provider's tokenizer
/// ([`crate::tokens`]).
pub fn estimate_tokens(text: &str) -> usize {
    usize::try_from(crate::tokens::text_tokens(text)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_estimates_count_ideographs_singly() {
        assert_eq!(estimate_tokens("退货政策"), 4);
        assert_eq!(estimate_tokens("abcdefgh"), 2);
        assert_eq!(estimate_tokens("七天 days"), 2 + 2);
    }

    #[test]
    fn grounding_joins_the_leading_system_message() {
        let mut prompt: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q"}]}"#,
        )
        .unwrap();
        add_system_text(&mut prompt, "Passages".to_owned());
        assert_eq!(prompt.messages.len(), 2);
        assert_eq!(
            prompt.messages[0].content.as_ref().unwrap().text(),
            "Be brief.\n\nPassages"
        );
        let mut bare: ChatRequest =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"Q"}]}"#)
                .unwrap();
        add_system_text(&mut bare, "Passages".to_owned());
        assert_eq!(bare.messages[0].role, Role::System);
        assert_eq!(last_user_text(&bare).as_deref(), Some("Q"));
    }
}
