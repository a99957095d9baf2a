//! Reciprocal rank fusion: merges ranked lists whose scores are not comparable
//! (cosine similarity and BM25) by rank alone. A passage's score is the sum over
//! the lists of weight / (K + rank). The original paper's K = 60 (Cormack et al.,
//! 2009) suits many deep lists; ours are two lists of a few dozen candidates, where
//! it flattens the top ranks until noise in one list decides: K = 10 (measured in
//! docs/BENCHMARKS.md, with the alternatives). The
//! keyword list weighs 1; the dense list's weight says how far the embedder can be
//! trusted with the question (see `Corpus::dense_weight`).
//!
//! A passage in another language than the question's cannot share its words: the
//! keyword list could never have found it, and its absence there says nothing.
//! So each passage's score is the weighted mean of its reciprocal ranks over the
//! lists that could have found it — the keyword list's weight scaled by its
//! `reach` for that passage (1 in the question's script, 0 in another) — and a
//! Chinese passage first by meaning for an English question ties with an English
//! one first in both lists, instead of sinking below every English keyword match.

use std::collections::HashMap;

use uuid::Uuid;

use super::store::Hit;

const K: f32 = 10.0;

/// One fused passage, with what each list said of it.
#[derive(Debug, Clone)]
pub struct Fused {
    pub hit: Hit,
    /// The fused score scaled to 0..=1: 1 means first in every list.
    pub score: f32,
    pub dense: Option<f32>,
    pub keyword: Option<f32>,
}

/// Fuses the dense and keyword lists (each best first), best first. `reach` says
/// how far the keyword list could have found a passage (0..=1).
pub fn fuse(
    dense: Vec<Hit>,
    keyword: Vec<Hit>,
    dense_weight: f32,
    reach: impl Fn(&Hit) -> f32,
) -> Vec<Fused> {
    let mut by_id: HashMap<Uuid, (Fused, f32)> = HashMap::new();
    let mut order: Vec<Uuid> = Vec::new();
    for (list, is_dense) in [(dense, true), (keyword, false)] {
        for (rank, hit) in list.into_iter().enumerate() {
            let reciprocal = 1.0 / (K + rank as f32 + 1.0);
            let raw = hit.score;
            let (entry, keyword_weight) = by_id.entry(hit.id).or_insert_with(|| {
                order.push(hit.id);
                let weight = reach(&hit).clamp(0.0, 1.0);
                let fused = Fused {
                    hit,
                    score: 0.0,
                    dense: None,
                    keyword: None,
                };
                (fused, weight)
            });
            match is_dense {
                true => {
                    entry.score += dense_weight * reciprocal;
                    entry.dense = Some(raw);
                }
                false => {
                    entry.score += *keyword_weight * reciprocal;
                    entry.keyword = Some(raw);
                }
            }
        }
    }
    // Scaled so that first in every list that could have found it is 1.
    let best = 1.0 / (K + 1.0);
    let mut fused: Vec<Fused> = order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .map(|(mut f, keyword_weight)| {
            let weights = dense_weight + keyword_weight;
            f.score /= best * weights.max(f32::EPSILON);
            f
        })
        .collect();
    // Stable: ties keep dense order first.
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
    fused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieve::store::ChunkPayload;

    fn hit(n: u8, score: f32) -> Hit {
        Hit {
            id: Uuid::from_bytes([n; 16]),
            score,
            payload: ChunkPayload {
                tenant: "t".into(),
                collection: "c".into(),
                doc_id: format!("d{n}"),
                chunk_index: 0,
                chunks: 1,
                text: String::new(),
                title: String::new(),
                headings: Vec::new(),
                source: String::new(),
                ingested_at: 0,
                hash: String::new(),
                doc_hash: String::new(),
            },
        }
    }

    #[test]
    fn a_passage_found_by_both_lists_wins() {
        let fused = fuse(
            vec![hit(1, 0.9), hit(2, 0.8)],
            vec![hit(3, 12.0), hit(2, 7.0)],
            1.0,
            |_| 1.0,
        );
        let ids: Vec<u8> = fused.iter().map(|f| f.hit.id.as_bytes()[0]).collect();
        assert_eq!(ids, [2, 1, 3]);
        assert_eq!(fused[0].dense, Some(0.8));
        assert_eq!(fused[0].keyword, Some(7.0));
        assert!(fused[0].score < 1.0 && fused[0].score > 0.9);
    }

    #[test]
    fn first_in_both_scores_one() {
        let fused = fuse(vec![hit(1, 0.5)], vec![hit(1, 3.0)], 0.3, |_| 1.0);
        assert!((fused[0].score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_light_dense_list_defers_to_keywords() {
        let fused = fuse(
            vec![hit(1, 0.9), hit(2, 0.8)],
            vec![hit(2, 5.0), hit(3, 4.0)],
            0.2,
            |_| 1.0,
        );
        let ids: Vec<u8> = fused.iter().map(|f| f.hit.id.as_bytes()[0]).collect();
        assert_eq!(ids, [2, 3, 1]);
    }

    #[test]
    fn one_list_alone_keeps_its_order() {
        let fused = fuse(Vec::new(), vec![hit(4, 3.0), hit(5, 2.0)], 1.0, |_| 1.0);
        assert_eq!(fused.len(), 2);
        assert_eq!(fused[0].hit.id.as_bytes()[0], 4);
        assert_eq!(fused[0].dense, None);
    }

    #[test]
    fn a_passage_out_of_the_keywords_reach_is_not_held_back_by_them() {
        // 1 is in another language: first by meaning, absent from the keywords.
        // 2 and 3 share the question's words, lower by meaning.
        let dense = || vec![hit(1, 0.9), hit(2, 0.8), hit(3, 0.7)];
        let keyword = || vec![hit(2, 5.0), hit(3, 4.0)];
        let blind = fuse(dense(), keyword(), 1.0, |_| 1.0);
        assert_eq!(blind[0].hit.id.as_bytes()[0], 2);
        let aware = fuse(dense(), keyword(), 1.0, |h| {
            f32::from(h.id.as_bytes()[0] != 1)
        });
        let ids: Vec<u8> = aware.iter().map(|f| f.hit.id.as_bytes()[0]).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!((aware[0].score - 1.0).abs() < 1e-6);
    }
}
