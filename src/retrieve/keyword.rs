//! Keyword scoring for hybrid retrieval: BM25 as sparse vectors.
//!
//! The default embedder reads English well and Chinese poorly, so exact terms carry
//! much of the signal for Chinese questions. Text is cut into terms — `jieba` for
//! Chinese (its search mode also yields the shorter words inside long compounds),
//! lower-cased words with a light plural fold for everything else — and stop words
//! dropped. A chunk's vector holds each term's BM25 term-frequency weight; the store
//! multiplies in the inverse document frequency at query time (Qdrant's `idf`
//! modifier), so adding documents never rewrites old vectors. A question's vector
//! holds 1 per distinct term: the dot product is then the BM25 score.
//!
//! Term ids are a 32-bit FNV-1a hash of the term: stable across builds and
//! processes (they are stored), and collisions between the few thousand terms of a
//! tenant's corpus are rare enough not to matter for ranking.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use jieba_rs::Jieba;

use super::store::SparseVector;

/// BM25 term-frequency saturation.
const K1: f32 = 1.2;
/// BM25 length normalisation.
const B: f32 = 0.75;
/// The typical chunk's length in terms (chunks are cut to a token target, so their
/// lengths vary little; a constant keeps stored weights independent of the corpus).
const AVERAGE_TERMS: f32 = 100.0;

/// Terms that say nothing about a passage's topic. (Negations stay: "not" and
/// "no" change what a question asks.)
#[rustfmt::skip]
const STOP_WORDS: &[&str] = &[
    // English
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "does", "for", "from",
    "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me", "my", "of", "on", "or",
    "our", "so", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this",
    "to", "was", "we", "were", "what", "when", "where", "which", "who", "why", "will", "with",
    "would", "you", "your", "should", "could", "about", "any", "after", "before", "all", "get",
    "did", "been", "being",
    // Chinese particles and question words
    "的", "了", "是", "在", "和", "与", "及", "或", "吗", "呢", "吧", "啊", "呀", "我", "你", "您",
    "他", "她", "它", "我们", "你们", "他们", "怎么", "怎样", "如何", "什么", "哪些", "哪个",
    "请问", "请", "一个", "这", "那", "这个", "那个", "就", "都", "也", "还", "把", "被", "为",
    "以", "之", "等", "个", "有", "要", "会", "能", "可以", "需要", "应该", "是否", "多少", "几",
    "其", "该", "对", "从", "到", "由", "于",
];

fn jieba() -> &'static Jieba {
    static JIEBA: OnceLock<Jieba> = OnceLock::new();
    JIEBA.get_or_init(Jieba::new)
}

fn is_stop_word(term: &str) -> bool {
    STOP_WORDS.contains(&term)
}

/// The terms of `text`, in order, repeats kept.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    // Runs of ideographs go to jieba; everything else is split at non-alphanumerics
    // here (jieba's own handling of Latin compounds yields overlapping pieces).
    while let Some(first) = rest.chars().next() {
        let cjk = is_cjk(first);
        let end = rest
            .char_indices()
            .find(|&(_, c)| is_cjk(c) != cjk)
            .map_or(rest.len(), |(at, _)| at);
        let (run, after) = rest.split_at(end);
        if cjk {
            for token in jieba().cut_for_search(run, true) {
                if let Some(term) = normalise(token.word) {
                    out.push(term);
                }
            }
        } else {
            out.extend(
                run.split(|c: char| !c.is_alphanumeric())
                    .filter_map(normalise),
            );
        }
        rest = after;
    }
    out
}

/// The ideographs cut by jieba. (Narrower than `ragway_engine::is_ideograph`:
/// stored term vectors were cut by this rule, so it stays as it was.)
pub fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{f900}'..='\u{faff}')
}

fn normalise(piece: &str) -> Option<String> {
    if piece.is_empty() {
        return None;
    }
    let term = piece.to_lowercase();
    let ascii = term.is_ascii();
    // One Latin letter says nothing; one digit or one ideograph may.
    if ascii && term.len() == 1 && !term.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    if is_stop_word(&term) {
        return None;
    }
    Some(if ascii { fold_plural(term) } else { term })
}

/// `passwords` → `password`, `policies` → `policy`; leaves `access`, `status`.
fn fold_plural(mut term: String) -> String {
    if term.len() > 4 && term.ends_with("ies") {
        term.truncate(term.len() - 3);
        term.push('y');
    } else if term.len() > 3
        && term.ends_with('s')
        && !term.ends_with("ss")
        && !term.ends_with("us")
        && !term.ends_with("is")
        && !term.bytes().all(|b| b.is_ascii_digit() || b == b's')
    {
        term.pop();
    }
    term
}

/// The stored id of a term.
pub fn term_id(term: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in term.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// A passage's vector: each term's BM25 term-frequency weight.
pub fn document_vector(text: &str) -> SparseVector {
    let terms = terms(text);
    let length = terms.len() as f32;
    let mut counts: BTreeMap<u32, f32> = BTreeMap::new();
    for term in &terms {
        *counts.entry(term_id(term)).or_default() += 1.0;
    }
    let norm = K1 * (1.0 - B + B * length / AVERAGE_TERMS);
    let (indices, values) = counts
        .into_iter()
        .map(|(id, tf)| (id, tf * (K1 + 1.0) / (tf + norm)))
        .unzip();
    SparseVector { indices, values }
}

/// A question's vector: 1 per distinct term.
pub fn query_vector(text: &str) -> SparseVector {
    let ids: std::collections::BTreeSet<u32> = terms(text).iter().map(|t| term_id(t)).collect();
    SparseVector {
        values: vec![1.0; ids.len()],
        indices: ids.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_is_cut_into_words_without_particles() {
        let t = terms("如何重置路由器的密码？");
        assert!(t.contains(&"重置".to_owned()), "{t:?}");
        assert!(t.contains(&"密码".to_owned()), "{t:?}");
        assert!(!t.iter().any(|w| w == "的" || w == "如何"), "{t:?}");
    }

    #[test]
    fn latin_words_are_lowercased_split_and_folded() {
        let t = terms("How do I reset the Wi-Fi passwords? Policies apply.");
        assert_eq!(t, ["reset", "wi", "fi", "password", "policy", "apply"]);
    }

    #[test]
    fn mixed_text_keeps_both_scripts() {
        let t = terms("Lumio 设备的固件升级 v2.3");
        assert!(t.contains(&"lumio".to_owned()), "{t:?}");
        assert!(t.contains(&"固件".to_owned()), "{t:?}");
        assert_eq!(t[t.len() - 2..], ["v2", "3"]);
    }

    #[test]
    fn repeated_terms_weigh_more_but_saturate() {
        let once = document_vector("refund");
        let thrice = document_vector("refund refund refund");
        assert_eq!(once.indices, thrice.indices);
        assert!(thrice.values[0] > once.values[0]);
        assert!(thrice.values[0] < K1 + 1.0);
    }

    #[test]
    fn query_vectors_are_sorted_and_unique() {
        let q = query_vector("refund refund policy");
        assert_eq!(q.indices.len(), 2);
        assert!(q.indices.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(q.values, [1.0, 1.0]);
    }

    #[test]
    fn term_ids_are_stable() {
        // Stored vectors depend on these values never changing.
        assert_eq!(term_id(""), 0x811c_9dc5);
        assert_eq!(term_id("a"), 0xe40c_292c);
    }
}
