//! Retrieval quality on a labelled question set: recall@k and mean reciprocal rank.
//! A retrieved passage is relevant when it belongs to the question's document and
//! holds its answer span. The committed set is `tests/data/rag` (a test checks the
//! hybrid recall there; `make bench-rag` prints every mode); an operator can run the
//! same measure over their own documents and questions.

use serde::Deserialize;

use super::corpus::{Corpus, CorpusError, Mode};

/// One labelled question (a line of `questions.jsonl`).
#[derive(Debug, Clone, Deserialize)]
pub struct Labelled {
    pub q: String,
    pub lang: String,
    /// The id of the document that answers it.
    pub doc: String,
    /// A span of that document that the relevant passage contains.
    pub answer: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub questions: usize,
    /// Share of questions with a relevant passage in the top k.
    pub recall: f64,
    /// Mean of 1 / rank of the first relevant passage (0 when none in the top k).
    pub mrr: f64,
}

/// Scores `mode` over `questions`, asked as `tenant`, looking at the top `k`.
pub async fn evaluate(
    corpus: &Corpus,
    tenant: &str,
    questions: &[Labelled],
    mode: Mode,
    k: usize,
) -> Result<Score, CorpusError> {
    let mut found = 0usize;
    let mut reciprocal = 0.0;
    for question in questions {
        let passages = corpus.search(tenant, None, &question.q, mode, k).await?;
        let rank = passages.iter().position(|p| {
            p.hit.payload.doc_id == question.doc && p.hit.payload.text.contains(&question.answer)
        });
        if let Some(rank) = rank {
            found += 1;
            reciprocal += 1.0 / (rank + 1) as f64;
        }
    }
    let n = questions.len().max(1) as f64;
    Ok(Score {
        questions: questions.len(),
        recall: found as f64 / n,
        mrr: reciprocal / n,
    })
}

/// Like [`evaluate`] for hybrid search with a rerank step: `candidates` found,
/// ordered by `reranker`, the top `k` scored.
pub async fn evaluate_reranked(
    corpus: &Corpus,
    tenant: &str,
    questions: &[Labelled],
    reranker: &dyn super::rerank::Rerank,
    candidates: usize,
    k: usize,
) -> Result<Score, CorpusError> {
    let mut found = 0usize;
    let mut reciprocal = 0.0;
    for question in questions {
        let passages = corpus
            .search(tenant, None, &question.q, Mode::Hybrid, candidates)
            .await?;
        let texts: Vec<String> = passages
            .iter()
            .map(|p| p.hit.payload.text.clone())
            .collect();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let order = reranker
            .order(&question.q, &texts, deadline)
            .await
            .unwrap_or_else(|_| (0..passages.len()).collect());
        let rank = order.iter().take(k).position(|&i| {
            let p = &passages[i].hit.payload;
            p.doc_id == question.doc && p.text.contains(&question.answer)
        });
        if let Some(rank) = rank {
            found += 1;
            reciprocal += 1.0 / (rank + 1) as f64;
        }
    }
    let n = questions.len().max(1) as f64;
    Ok(Score {
        questions: questions.len(),
        recall: found as f64 / n,
        mrr: reciprocal / n,
    })
}

/// Reads a `questions.jsonl`.
pub fn read_questions(text: &str) -> Result<Vec<Labelled>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1)))
        .collect()
}
