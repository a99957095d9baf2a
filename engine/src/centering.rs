//! Language centering for a multilingual embedder.
//!
//! multilingual-e5-small places a text by its language as well as by its meaning:
//! an English question's nearest passages are English ones about something else,
//! well before the Chinese passage that answers it (cross-lingual recall@5 0.36
//! from English and 0.00 from Chinese on the labelled set, docs/BENCHMARKS.md).
//! Subtracting each language's mean vector leaves mostly the meaning (Libovický et
//! al., 2020, "On the Language Neutrality of Pre-trained Multilingual
//! Representations"). The means are taken for questions and passages apart, as e5
//! embeds them behind different prefixes, from a fixed calibration set of parallel
//! Chinese and English sentences on everyday topics (`data/centering.jsonl`; none
//! is from an evaluation set), so they say little about any topic. A text between
//! the two scripts loses each mean in proportion to its share of ideographs.

use serde::Deserialize;

use crate::EngineError;
use crate::e5::Role;

/// The calibration set: one line per sentence pair, `{"role", "en", "zh"}`.
const CALIBRATION: &str = include_str!("../data/centering.jsonl");

/// What a store records beside the model's id for vectors centered this way: a
/// change to the calibration set or the rule is a new version, and vectors of two
/// versions are never compared.
pub const VERSION: &str = "centered-1";

#[derive(Deserialize)]
struct Pair {
    role: String,
    en: String,
    zh: String,
}

/// The mean vectors of one role's Chinese and English calibration sentences.
struct Means {
    zh: Vec<f32>,
    en: Vec<f32>,
}

pub struct Centering {
    query: Means,
    passage: Means,
}

impl Centering {
    /// Measures the means with `embed` (the model's own, uncentered vectors).
    pub fn measure(
        embed: impl Fn(&[String], Role) -> Result<Vec<Vec<f32>>, EngineError>,
    ) -> Result<Centering, EngineError> {
        let pairs: Vec<Pair> = CALIBRATION
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .map_err(|e| EngineError::Load(format!("the centering set: {e}")))?;
        let means = |role: Role, name: &str| -> Result<Means, EngineError> {
            let (zh, en): (Vec<String>, Vec<String>) = pairs
                .iter()
                .filter(|p| p.role == name)
                .map(|p| (p.zh.clone(), p.en.clone()))
                .unzip();
            Ok(Means {
                zh: mean(&embed(&zh, role)?)?,
                en: mean(&embed(&en, role)?)?,
            })
        };
        Ok(Centering {
            query: means(Role::Query, "query")?,
            passage: means(Role::Passage, "passage")?,
        })
    }

    /// Takes `text`'s language out of its `vector` (unit length again after).
    pub fn apply(&self, text: &str, role: Role, vector: &mut [f32]) {
        let means = match role {
            Role::Query => &self.query,
            Role::Passage => &self.passage,
        };
        let zh = ideograph_share(text);
        for ((v, z), e) in vector.iter_mut().zip(&means.zh).zip(&means.en) {
            *v -= zh * z + (1.0 - zh) * e;
        }
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > f32::EPSILON {
            vector.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

fn mean(vectors: &[Vec<f32>]) -> Result<Vec<f32>, EngineError> {
    let first = vectors
        .first()
        .ok_or_else(|| EngineError::Load("the centering set is empty".to_owned()))?;
    let mut sum = vec![0.0; first.len()];
    for vector in vectors {
        sum.iter_mut().zip(vector).for_each(|(s, v)| *s += v);
    }
    let n = vectors.len() as f32;
    sum.iter_mut().for_each(|s| *s /= n);
    Ok(sum)
}

/// The share of ideographs among `text`'s letters: 1 for Chinese, 0 for English
/// (and for a text without letters).
pub fn ideograph_share(text: &str) -> f32 {
    let (mut letters, mut ideographs) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        ideographs += usize::from(is_ideograph(c));
    }
    match letters {
        0 => 0.0,
        n => ideographs as f32 / n as f32,
    }
}

/// CJK ideographs (the unified blocks and their extensions, and the compatibility
/// block), the letters of Chinese text.
pub fn is_ideograph(c: char) -> bool {
    matches!(c,
        '\u{4E00}'..='\u{9FFF}'
        | '\u{3400}'..='\u{4DBF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{20000}'..='\u{2FA1F}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_script() {
        assert_eq!(ideograph_share("退货政策"), 1.0);
        assert_eq!(ideograph_share("refund policy"), 0.0);
        assert_eq!(ideograph_share("12:00 !"), 0.0);
        assert_eq!(ideograph_share("Lumio 退货"), 2.0 / 7.0);
    }

    #[test]
    fn each_language_loses_its_own_mean() {
        // A toy embedder: every Chinese text at (1, 1), every English one at (1, -1).
        let embed = |texts: &[String], _: Role| {
            Ok(texts
                .iter()
                .map(|t| match ideograph_share(t) > 0.5 {
                    true => vec![1.0, 1.0],
                    false => vec![1.0, -1.0],
                })
                .collect())
        };
        let centering = Centering::measure(embed).unwrap();
        let mut zh = vec![1.0, 1.0 + 0.5];
        centering.apply("退货", Role::Passage, &mut zh);
        let mut en = vec![1.0, -1.0 + 0.5];
        centering.apply("refund", Role::Query, &mut en);
        // What is left is what the two share beyond their language: the same.
        assert_eq!(zh, [0.0, 1.0]);
        assert_eq!(en, [0.0, 1.0]);
    }
}
