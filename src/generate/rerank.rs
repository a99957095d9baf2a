//! Reranking: documents ordered by how well each answers a query. A rerank
//! alias's targets are asked at their API's `/rerank` (the shape SiliconFlow,
//! Jina and Cohere-compatible servers share) through the [`relay`]; when none
//! answers and the alias allows it, the local embedder ranks them, by the cosine
//! of the query's vector and each document's.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::relay::relay;
use super::{Attempt, Route};
use crate::call::AttemptKind;
use crate::error::GatewayError;
use crate::telemetry::Metrics;

pub struct Ranker {
    metrics: Arc<Metrics>,
    embedder: Option<Arc<ragway_engine::Embedder>>,
}

/// Documents by relevance, the most relevant first.
#[derive(Debug, Clone)]
pub struct Ranking {
    /// Who ranked them: a target, or `embedder:<model>`.
    pub target: Arc<str>,
    /// (index into the documents, relevance score), best first; every document once.
    pub order: Vec<(usize, f64)>,
    /// The tokens the ranker read, as it counted them (none when it did not say).
    pub tokens: u64,
}

/// What a ranking did: every attempt, and the ranking.
pub struct Ranked {
    pub attempts: Vec<Attempt>,
    pub result: Result<Ranking, GatewayError>,
}

impl Ranker {
    pub fn new(metrics: Arc<Metrics>, embedder: Option<Arc<ragway_engine::Embedder>>) -> Ranker {
        Ranker { metrics, embedder }
    }

    /// Ranks `documents` for `query` on `route`'s targets, then the embedder.
    pub async fn rank(
        &self,
        route: &Route,
        query: &str,
        documents: &[String],
        deadline: Instant,
    ) -> Ranked {
        let body = |target: &super::Target| {
            json!({"model": target.model, "query": query, "documents": documents,
                "top_n": documents.len(), "return_documents": false})
        };
        let read = |answer: Value| read_ranking(answer, documents.len());
        let relayed = relay(&self.metrics, route, "/rerank", body, read, deadline).await;
        let mut attempts = relayed.attempts;
        let failed = match relayed.result {
            Ok((target, (order, tokens))) => {
                return Ranked {
                    attempts,
                    result: Ok(Ranking {
                        target,
                        order,
                        tokens,
                    }),
                };
            }
            Err(error) => error,
        };
        let Some(embedder) = self.embedder.clone().filter(|_| route.rank_locally) else {
            return Ranked {
                attempts,
                result: Err(failed),
            };
        };
        if let Some(from) = attempts.last().map(|a| a.target.clone()) {
            self.metrics.failover(&from, "local", "rerank");
        }
        let started = Instant::now();
        let target: Arc<str> = format!("embedder:{}", embedder.model_id()).into();
        let result = local_ranking(embedder, query, documents, deadline).await;
        attempts.push(Attempt {
            target: target.clone(),
            latency: started.elapsed(),
            failure: result.as_ref().err().map(|e| crate::call::Failure {
                class: "local",
                status: None,
                message: e.to_string(),
            }),
            kind: AttemptKind::Plain,
        });
        Ranked {
            attempts,
            result: result.map(|(order, tokens)| Ranking {
                target,
                order,
                tokens,
            }),
        }
    }
}

/// A provider's ranking, checked: every index in range and named once, every
/// score a number. Documents it left out follow, in their order, below the rest.
fn read_ranking(answer: Value, documents: usize) -> Result<(Vec<(usize, f64)>, u64), String> {
    let results = answer["results"]
        .as_array()
        .ok_or("no `results` in the rerank answer")?;
    let mut seen = vec![false; documents];
    let mut order = Vec::with_capacity(documents);
    for result in results {
        let index = result["index"]
            .as_u64()
            .map(|i| i as usize)
            .filter(|i| *i < documents)
            .ok_or("a rerank result's `index` is not one of the documents")?;
        let score = result["relevance_score"]
            .as_f64()
            .filter(|s| s.is_finite())
            .ok_or("a rerank result without a `relevance_score`")?;
        if std::mem::replace(&mut seen[index], true) {
            return Err("a rerank answer names a document twice".to_owned());
        }
        order.push((index, score));
    }
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    let floor = order.last().map_or(0.0, |last| last.1);
    order.extend((0..documents).filter(|i| !seen[*i]).map(|i| (i, floor)));
    // Jina's `usage`, SiliconFlow's `meta.tokens`, or `tokens` alone.
    let tokens = [
        &answer["usage"]["total_tokens"],
        &answer["meta"]["tokens"]["input_tokens"],
        &answer["tokens"]["input_tokens"],
    ]
    .into_iter()
    .find_map(Value::as_u64)
    .unwrap_or(0);
    Ok((order, tokens))
}

/// The embedder's ranking: cosine of the query's vector and each document's
/// (the vectors are unit length), on the compute threads.
async fn local_ranking(
    embedder: Arc<ragway_engine::Embedder>,
    query: &str,
    documents: &[String],
    deadline: Instant,
) -> Result<(Vec<(usize, f64)>, u64), GatewayError> {
    let (query, documents) = (vec![query.to_owned()], documents.to_vec());
    let work = crate::compute::run(move || {
        use ragway_engine::Role;
        let question = embedder.embed_for_search(&query, Role::Query)?;
        let passages = embedder.embed_for_search(&documents, Role::Passage)?;
        let tokens: usize = query
            .iter()
            .chain(&documents)
            .map(|t| embedder.count_tokens(t).min(embedder.max_tokens()))
            .sum();
        Ok::<_, ragway_engine::EngineError>((question, passages, tokens))
    });
    let (question, passages, tokens) = tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| GatewayError::Unavailable {
            message: "the local embedder ran out of time ranking the documents".to_owned(),
            retry_after: std::time::Duration::from_secs(1),
        })?
        .map_err(|e| GatewayError::Internal(e.to_string()))?
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let query = &question[0];
    let mut order: Vec<(usize, f64)> = passages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                i,
                query.iter().zip(p).map(|(a, b)| a * b).sum::<f32>() as f64,
            )
        })
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok((order, tokens as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_providers_ranking_is_checked_and_completed() {
        let answer = json!({"results": [{"index": 2, "relevance_score": 0.9},
            {"index": 0, "relevance_score": 0.1}], "meta": {"tokens": {"input_tokens": 12}}});
        let (order, tokens) = read_ranking(answer, 4).unwrap();
        assert_eq!(order, [(2, 0.9), (0, 0.1), (1, 0.1), (3, 0.1)]);
        assert_eq!(tokens, 12);
        for bad in [
            json!({}),
            json!({"results": [{"index": 4, "relevance_score": 0.5}]}),
            json!({"results": [{"index": 0}]}),
            json!({"results": [{"index": 1, "relevance_score": 0.5}, {"index": 1, "relevance_score": 0.4}]}),
        ] {
            assert!(read_ranking(bad.clone(), 4).is_err(), "{bad}");
        }
    }
}
