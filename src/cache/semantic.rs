//! The semantic tier (off by default): a question close enough in meaning to one
//! already answered — same tenant, alias, corpus version and everything else in the
//! request — may reuse its answer. Closeness alone is not enough: the two questions
//! must also agree on their numbers, negations, opposite-pair words (enable/disable,
//! 开启/关闭) and names, or "how do I enable search" would get the answer to "how do
//! I disable search" (their embeddings are nearly identical). The false-hit rate on
//! a set of paraphrases and near misses is measured in docs/BENCHMARKS.md.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragway_engine::Embedder;

use super::CacheKey;
use crate::wire::{ChatRequest, Content, Role};

/// Questions remembered per context; the oldest go first.
const PER_CONTEXT: usize = 256;

pub struct Semantic {
    embedder: Arc<Embedder>,
    threshold: f32,
    /// Answered questions by context (the key of the request without its question).
    index: moka::sync::Cache<[u8; 32], Arc<Mutex<Vec<Remembered>>>>,
    /// Misses waiting for their answer to be stored, by key.
    pending: moka::sync::Cache<CacheKey, Arc<Probe>>,
}

struct Remembered {
    vector: Vec<f32>,
    features: Features,
    key: CacheKey,
}

/// A question, ready to match or remember.
pub struct Probe {
    context: [u8; 32],
    vector: Vec<f32>,
    features: Features,
}

impl Semantic {
    pub fn new(embedder: Arc<Embedder>, threshold: f32, ttl: Duration) -> Semantic {
        Semantic {
            embedder,
            threshold,
            index: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
            pending: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }

    /// The request's question, embedded; `None` when its last message is not a
    /// user's text.
    pub async fn probe(
        &self,
        tenant: &str,
        alias: &str,
        corpus: Option<&str>,
        purged: u64,
        prompt: &ChatRequest,
    ) -> Option<Probe> {
        let last = prompt.messages.last()?;
        if last.role != Role::User {
            return None;
        }
        // Images, files and audio are not compared: a question about one file must
        // never get the answer about another.
        if let Some(Content::Parts(parts)) = &last.content
            && parts
                .iter()
                .any(|p| !matches!(p, crate::wire::ContentPart::Text { .. }))
        {
            return None;
        }
        let question = last.content.as_ref()?.text();
        let mut context = prompt.clone();
        if let Some(message) = context.messages.last_mut() {
            message.content = Some(Content::Text(String::new()));
        }
        let context = super::key::key(tenant, alias, corpus, purged, &context)?.hash;
        let embedder = Arc::clone(&self.embedder);
        let text = question.clone();
        // Search vectors: a multilingual model's raw cosines crowd near 0.9 for any
        // two questions; centered ones spread (measured in docs/BENCHMARKS.md).
        let vector = crate::compute::run(move || {
            embedder.embed_for_search(&[text], ragway_engine::Role::Query)
        })
        .await
        .ok()?
        .ok()?
        .pop()?;
        Some(Probe {
            context,
            vector,
            features: Features::of(&question),
        })
    }

    /// The key of the closest remembered question the guard agrees with.
    pub fn find(&self, probe: &Probe) -> Option<CacheKey> {
        let entries = self.index.get(&probe.context)?;
        let entries = entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .iter()
            .filter(|e| e.features == probe.features)
            .map(|e| (cosine(&e.vector, &probe.vector), e))
            .filter(|(similarity, _)| *similarity >= self.threshold)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, e)| e.key.clone())
    }

    /// Holds the probe of a miss until its answer is stored under `key`.
    pub fn expect(&self, key: CacheKey, probe: Probe) {
        self.pending.insert(key, Arc::new(probe));
    }

    /// The answer to a pending miss was stored: its question can be matched now.
    pub fn stored(&self, key: &CacheKey) {
        let Some(probe) = self.pending.remove(key) else {
            return;
        };
        let entries = self
            .index
            .get_with(probe.context, || Arc::new(Mutex::new(Vec::new())));
        let mut entries = entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() == PER_CONTEXT {
            entries.remove(0);
        }
        entries.push(Remembered {
            vector: probe.vector.clone(),
            features: probe.features.clone(),
            key: key.clone(),
        });
    }
}

impl Probe {
    /// How close two questions are in meaning (cosine of their embeddings).
    pub fn similarity(&self, other: &Probe) -> f32 {
        cosine(&self.vector, &other.vector)
    }

    /// Whether the guard lets one question's answer serve the other.
    pub fn agrees(&self, other: &Probe) -> bool {
        self.features == other.features
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    // The embedder's vectors are unit length.
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// What two questions must share to have the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// In order: "from 3 to 7" is not "from 7 to 3".
    numbers: Vec<String>,
    negations: usize,
    polar: BTreeSet<&'static str>,
    names: BTreeSet<String>,
}

/// Words whose opposite asks the opposite question, in pairs.
const OPPOSITES: &[(&str, &str)] = &[
    ("enable", "disable"),
    ("on", "off"),
    ("open", "close"),
    ("start", "stop"),
    ("allow", "deny"),
    ("add", "remove"),
    ("increase", "decrease"),
    ("before", "after"),
    ("maximum", "minimum"),
    ("max", "min"),
    ("upload", "download"),
    ("import", "export"),
    ("lock", "unlock"),
    ("in", "out"),
    ("up", "down"),
    ("include", "exclude"),
    ("subscribe", "unsubscribe"),
    ("开启", "关闭"),
    ("打开", "关闭"),
    ("启用", "禁用"),
    ("增加", "减少"),
    ("上传", "下载"),
    ("允许", "禁止"),
    ("添加", "删除"),
    ("之前", "之后"),
    ("最大", "最小"),
    ("导入", "导出"),
    ("加锁", "解锁"),
];

const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "none",
    "nothing",
    "nobody",
    "cannot",
    "without",
    "don't",
    "doesn't",
    "isn't",
    "aren't",
    "won't",
    "can't",
    "shouldn't",
    "didn't",
];
const CJK_NEGATIONS: &[char] = &['不', '没', '无', '别', '未', '非', '勿', '莫'];
const CJK_NUMERALS: &str = "零一二两三四五六七八九十百千万亿";
/// Numbers written as words count as numbers.
const NUMBER_WORDS: &[&str] = &[
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "fifteen", "twenty", "thirty", "forty", "fifty", "sixty", "hundred",
    "thousand", "million", "first", "second", "third", "half", "double", "once", "twice",
];
/// Comparisons: "more" asks the opposite of "less".
const COMPARATIVES: &[&str] = &[
    "more", "less", "fewer", "most", "least", "higher", "lower", "cheaper", "faster", "slower",
    "earlier", "later", "larger", "smaller", "longer", "shorter", "多于", "少于", "超过", "低于",
    "以上", "以下", "最多", "最少",
];

impl Features {
    pub fn of(question: &str) -> Features {
        // A typographic apostrophe is an apostrophe ("doesn’t").
        let question = &question.replace('\u{2019}', "'");
        let lower = question.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| {
                !(c.is_alphanumeric() || c == '\'' || c == '<' || c == '>' || c == '_')
            })
            .filter(|w| !w.is_empty())
            .collect();
        let mut numbers = Vec::new();
        let mut run = String::new();
        for c in question.chars().chain([' ']) {
            // Any script's digits (full-width ３ too), and a decimal point inside.
            if c.is_numeric() || CJK_NUMERALS.contains(c) || (c == '.' && !run.is_empty()) {
                run.push(c);
            } else if !run.is_empty() {
                numbers.push(std::mem::take(&mut run).trim_end_matches('.').to_owned());
            }
        }
        numbers.extend(
            words
                .iter()
                .filter(|w| NUMBER_WORDS.contains(w))
                .map(|w| (*w).to_owned()),
        );
        let negations = words.iter().filter(|w| NEGATIONS.contains(w)).count()
            + question
                .chars()
                .filter(|c| CJK_NEGATIONS.contains(c))
                .count();
        let mut polar: BTreeSet<&'static str> = COMPARATIVES
            .iter()
            .copied()
            .filter(|c| {
                if c.is_ascii() {
                    words.contains(c)
                } else {
                    question.contains(c)
                }
            })
            .collect();
        for &(a, b) in OPPOSITES {
            for side in [a, b] {
                let present = if side.is_ascii() {
                    words.contains(&side)
                } else {
                    question.contains(side)
                };
                if present {
                    polar.insert(side);
                }
            }
        }
        // Names: capitalised words past a sentence's first, product codes mixing
        // letters and digits, and placeholders of personal data.
        let mut names = BTreeSet::new();
        let mut first = true;
        for word in
            question.split(|c: char| !(c.is_alphanumeric() || c == '<' || c == '>' || c == '_'))
        {
            if word.is_empty() {
                continue;
            }
            // ("I" is capitalised everywhere and names nothing.)
            let capital =
                word.chars().next().is_some_and(char::is_uppercase) && word.chars().count() > 1;
            let code = word.chars().any(|c| c.is_ascii_digit())
                && word.chars().any(|c| c.is_ascii_alphabetic());
            let placeholder = word.starts_with('<') && word.ends_with('>');
            if (capital && !first) || code || placeholder {
                names.insert(word.to_owned());
            }
            first = false;
        }
        Features {
            numbers,
            negations,
            polar,
            names,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_tells_near_misses_from_paraphrases() {
        let same = |a: &str, b: &str| Features::of(a) == Features::of(b);
        assert!(!same("How do I enable search?", "How do I disable search?"));
        assert!(!same(
            "Can I return it after 7 days?",
            "Can I return it after 30 days?"
        ));
        assert!(!same(
            "Does it cover water damage?",
            "Does it not cover water damage?"
        ));
        assert!(!same(
            "What is the price of the Lumio Hub?",
            "What is the price of the Lumio Lamp?"
        ));
        assert!(!same("如何开启搜索功能？", "如何关闭搜索功能？"));
        assert!(!same("三天内可以退货吗？", "七天内可以退货吗？"));
        assert!(!same("退货需要付运费吗？", "退货不需要付运费吗？"));
        assert!(same(
            "How do I reset my password?",
            "What is the way to reset my password?"
        ));
        assert!(same("退款多久能到账？", "退款需要多长时间到账？"));
        assert!(!same(
            "Return after seven days?",
            "Return after thirty days?"
        ));
        assert!(!same("３天内能退吗？", "７天内能退吗？"));
        assert!(!same("It doesn’t work, why?", "It does work, why?"));
        assert!(!same("From 3 to 7 items?", "From 7 to 3 items?"));
        assert!(!same("Which plan costs more?", "Which plan costs less?"));
    }
}
