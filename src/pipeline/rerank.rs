//! A rerank through the pipeline: admitted against the caller's limits, its
//! query and documents through the content guard and personal data (the ranker
//! sees placeholders), ranked by the alias's targets or the local embedder, and
//! recorded like any call. Nothing is cached: a ranking is cheap to redo and
//! documents change.

use crate::admit::admission::Ask;
use crate::call::Outcome;
use crate::error::GatewayError;
use std::sync::Arc;

use crate::generate::{Ranker, Ranking, Route};
use crate::quota::Headroom;
use crate::wire::{ChatRequest, Usage};

use super::record::Finished;
use super::{Pipeline, RequestCtx};

/// What a client asks to rank.
pub struct RerankAsk {
    pub query: String,
    pub documents: Vec<String>,
}

impl Pipeline {
    pub async fn rerank(
        &self,
        mut ctx: RequestCtx,
        ask: RerankAsk,
    ) -> Result<(Ranking, Headroom), GatewayError> {
        // As the sanitize stage reads texts: each one a user message.
        let mut prompt = as_prompt(&ctx.route.alias, &ask)?;
        let admit = Ask {
            prompt_tokens: crate::tokens::prompt_tokens(&prompt),
            max_output: Some(0),
        };
        match self.admission.admit(&ctx.call(), admit).await {
            Ok(permit) => ctx.permit = Some(permit),
            Err(error) => {
                self.record(&mut ctx, Finished::failed(&error));
                return Err(error);
            }
        }
        let guard = self.guard.list();
        let sanitized = {
            let _stage = ctx.trace.enter("sanitize");
            self.sanitize(&mut ctx, &mut prompt, &guard)
        };
        if let Err(error) = sanitized {
            self.record(&mut ctx, Finished::failed(&error));
            return Err(error);
        }
        let mut texts = prompt
            .messages
            .iter()
            .map(|m| m.content.as_ref().map(|c| c.text()).unwrap_or_default());
        let query = texts.next().unwrap_or_default();
        let documents: Vec<String> = texts.collect();
        let deadline = ctx.call().deadline;
        let ranking = self.ranker.rank(&ctx.route, &query, &documents, deadline);
        let ranked = ctx.trace.stage("generate", ranking).await;
        ctx.attempts = ranked.attempts;
        let headroom = ctx.permit.as_ref().map(|p| p.headroom).unwrap_or_default();
        match ranked.result {
            Ok(ranking) => {
                let mut finished = Finished::answered(ranking.target.clone(), Outcome::Ok);
                finished.usage = Some(Usage {
                    prompt_tokens: ranking.tokens,
                    total_tokens: ranking.tokens,
                    ..Usage::default()
                });
                self.record(&mut ctx, finished);
                Ok((ranking, headroom))
            }
            Err(error) => {
                self.record(&mut ctx, Finished::failed(&error));
                Err(error)
            }
        }
    }
}

fn as_prompt(alias: &str, ask: &RerankAsk) -> Result<ChatRequest, GatewayError> {
    let messages: Vec<serde_json::Value> = std::iter::once(&ask.query)
        .chain(&ask.documents)
        .map(|text| serde_json::json!({"role": "user", "content": text}))
        .collect();
    serde_json::from_value(serde_json::json!({"model": alias, "messages": messages}))
        .map_err(|e| GatewayError::Internal(e.to_string()))
}

/// Retrieval's rerank step (`retrieval.rerank`) on a rerank alias: its targets,
/// then the embedder, ordering the passages a search found.
pub struct AliasRanker {
    ranker: Arc<Ranker>,
    route: Arc<Route>,
}

impl AliasRanker {
    pub fn new(ranker: Arc<Ranker>, route: Arc<Route>) -> AliasRanker {
        AliasRanker { ranker, route }
    }
}

#[async_trait::async_trait]
impl crate::retrieve::rerank::Rerank for AliasRanker {
    async fn order(
        &self,
        question: &str,
        passages: &[String],
        deadline: tokio::time::Instant,
    ) -> Result<Vec<usize>, String> {
        let ranked = self
            .ranker
            .rank(&self.route, question, passages, deadline)
            .await;
        let ranking = ranked.result.map_err(|e| e.to_string())?;
        Ok(ranking.order.into_iter().map(|(i, _)| i).collect())
    }
}
