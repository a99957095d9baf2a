//! `[retrieval]`: where the tenants' documents live and how answers are grounded in
//! them; per model alias, `rag = false` or `rag = { top_k = …, … }` overrides.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::validate::Problems;
use super::{Env, Secret};

/// The retrieve stage's settings.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalConfig {
    pub store: StoreConfig,
    /// A directory with `rag.zh.j2` and `rag.en.j2`; the built-in templates without.
    pub prompts: Option<PathBuf>,
    pub language: PromptLanguage,
    /// Chunk size and overlap, in the embedder's tokens.
    pub chunk_tokens: usize,
    pub chunk_overlap: usize,
    /// The largest document `POST /v1/documents` takes.
    pub max_document_bytes: usize,
    /// How long one document's ingestion (extract, chunk, embed, store) may take
    /// before it is abandoned.
    #[serde(serialize_with = "crate::encode::as_secs")]
    pub ingest_timeout: std::time::Duration,
    /// Documents one tenant may have in ingestion at once over HTTP; more get 429.
    pub ingest_concurrency: usize,
    /// The collection documents go into when none is named.
    pub default_collection: String,
    /// How much the embedder's ranking counts, against keywords' 1, for a question
    /// in Chinese: low for an English-only embedder (the default), 1 for a
    /// multilingual one.
    pub cjk_dense_weight: f32,
    /// For every alias that does not override them.
    pub defaults: RagSettings,
    /// The rerank alias that orders the passages found, when set: the search
    /// finds twice as many candidates, and the ranker picks among them.
    pub rerank: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreConfig {
    /// Qdrant Edge in process, data under `path`.
    Embedded { path: PathBuf },
    /// A Qdrant server (gRPC).
    Qdrant {
        url: String,
        collection: String,
        api_key_env: Option<String>,
        api_key: Option<Secret>,
        cluster: ClusterSettings,
    },
}

use crate::retrieve::store::server::ClusterSettings;

pub use crate::retrieve::{PromptLanguage, RagSettings};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetrieval {
    /// `embedded` (the default) or `qdrant`.
    pub store: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub collection: Option<String>,
    pub api_key_env: Option<String>,
    // The collection's layout on a Qdrant cluster (see `ClusterSettings`).
    pub shard_number: Option<u32>,
    pub replication_factor: Option<u32>,
    pub write_consistency_factor: Option<u32>,
    pub on_disk_payload: Option<bool>,
    pub prompts: Option<String>,
    pub language: Option<String>,
    pub chunk_tokens: Option<usize>,
    pub chunk_overlap: Option<usize>,
    pub max_document_bytes: Option<u64>,
    pub ingest_timeout_secs: Option<u64>,
    pub ingest_concurrency: Option<u64>,
    pub default_collection: Option<String>,
    pub cjk_dense_weight: Option<f32>,
    /// A rerank alias that orders the passages found before they are kept.
    pub rerank: Option<String>,
    // The defaults of every alias (see `RawRagSettings`).
    pub enabled: Option<bool>,
    pub top_k: Option<usize>,
    pub min_score: Option<f32>,
    pub context_tokens: Option<usize>,
    pub search_collection: Option<String>,
}

/// A model's `rag`: `false`, `true`, or a table of settings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawRag {
    Switch(bool),
    Settings(RawRagSettings),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRagSettings {
    pub enabled: Option<bool>,
    pub top_k: Option<usize>,
    pub min_score: Option<f32>,
    pub context_tokens: Option<usize>,
    pub search_collection: Option<String>,
}

const DEFAULT_PATH: &str = "data/qdrant";
const DEFAULT_MAX_DOCUMENT: u64 = 16 * 1024 * 1024;

pub(super) fn retrieval(
    raw: RawRetrieval,
    embedder: Option<&super::embeddings::EmbeddingsConfig>,
    env: &Env,
    problems: &mut Problems,
) -> RetrievalConfig {
    // Fusion and the cut-off follow what the embedder can read (docs/retrieval.md).
    let multilingual = embedder.is_some_and(|e| e.is_multilingual());
    if embedder.is_none() {
        problems.add(
            "retrieval",
            "needs [embeddings]: documents and questions are embedded by it",
        );
    }
    let store = match raw.store.as_deref().unwrap_or("embedded") {
        "embedded" => StoreConfig::Embedded {
            path: PathBuf::from(raw.path.as_deref().unwrap_or(DEFAULT_PATH)),
        },
        "qdrant" => {
            let url = raw.url.clone().unwrap_or_default();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.add(
                    "retrieval.url",
                    "store = \"qdrant\" needs the server's gRPC URL, e.g. http://qdrant:6334",
                );
            }
            let api_key = raw
                .api_key_env
                .as_deref()
                .and_then(|var| problems.secret("retrieval.api_key_env", var, env));
            StoreConfig::Qdrant {
                url,
                collection: raw
                    .collection
                    .clone()
                    .unwrap_or_else(|| "ragway".to_owned()),
                api_key_env: raw.api_key_env.clone(),
                api_key,
                cluster: cluster(&raw, problems),
            }
        }
        other => {
            problems.add(
                "retrieval.store",
                format!("`{other}` is not \"embedded\" or \"qdrant\""),
            );
            StoreConfig::Embedded {
                path: PathBuf::from(DEFAULT_PATH),
            }
        }
    };
    if !matches!(store, StoreConfig::Qdrant { .. }) {
        let laid_out = [
            ("shard_number", raw.shard_number.is_some()),
            ("replication_factor", raw.replication_factor.is_some()),
            (
                "write_consistency_factor",
                raw.write_consistency_factor.is_some(),
            ),
            ("on_disk_payload", raw.on_disk_payload.is_some()),
        ];
        for (key, _) in laid_out.iter().filter(|(_, set)| *set) {
            problems.add(
                format!("retrieval.{key}"),
                "lays out a Qdrant server's collection: set store = \"qdrant\"",
            );
        }
    }
    let language = match raw.language.as_deref().unwrap_or("auto") {
        "auto" => PromptLanguage::Auto,
        "zh" => PromptLanguage::Zh,
        "en" => PromptLanguage::En,
        other => {
            problems.add(
                "retrieval.language",
                format!("`{other}` is not auto, zh or en"),
            );
            PromptLanguage::Auto
        }
    };
    let chunk_tokens = raw.chunk_tokens.unwrap_or(200);
    if !(16..=512).contains(&chunk_tokens) {
        problems.add("retrieval.chunk_tokens", "must be between 16 and 512");
    }
    let chunk_overlap = raw.chunk_overlap.unwrap_or(chunk_tokens / 7);
    if chunk_overlap >= chunk_tokens {
        problems.add(
            "retrieval.chunk_overlap",
            "must be smaller than chunk_tokens",
        );
    }
    let max_document_bytes = raw.max_document_bytes.unwrap_or(DEFAULT_MAX_DOCUMENT);
    if max_document_bytes == 0 || max_document_bytes > 256 * 1024 * 1024 {
        problems.add(
            "retrieval.max_document_bytes",
            "must be between 1 and 268435456",
        );
    }
    let ingest_timeout_secs = raw.ingest_timeout_secs.unwrap_or(600);
    if !(1..=86_400).contains(&ingest_timeout_secs) {
        problems.add(
            "retrieval.ingest_timeout_secs",
            "must be between 1 and 86400",
        );
    }
    let ingest_concurrency = raw.ingest_concurrency.unwrap_or(2);
    if !(1..=64).contains(&ingest_concurrency) {
        problems.add("retrieval.ingest_concurrency", "must be between 1 and 64");
    }
    let cjk_dense_weight = raw.cjk_dense_weight.unwrap_or(match multilingual {
        true => crate::retrieve::corpus::MULTILINGUAL_CJK_DENSE_WEIGHT,
        false => crate::retrieve::corpus::CJK_DENSE_WEIGHT,
    });
    if !(0.0..=1.0).contains(&cjk_dense_weight) {
        problems.add("retrieval.cjk_dense_weight", "must be between 0 and 1");
    }
    let base = RagSettings {
        enabled: true,
        top_k: 4,
        min_score: match multilingual {
            true => crate::retrieve::corpus::MULTILINGUAL_MIN_SCORE,
            false => 0.3,
        },
        context_tokens: 1500,
        collection: None,
    };
    let own = RawRagSettings {
        enabled: raw.enabled,
        top_k: raw.top_k,
        min_score: raw.min_score,
        context_tokens: raw.context_tokens,
        search_collection: raw.search_collection,
    };
    let defaults = settings("retrieval", own, &base, problems);
    RetrievalConfig {
        store,
        prompts: raw.prompts.map(PathBuf::from),
        language,
        chunk_tokens,
        chunk_overlap,
        max_document_bytes: max_document_bytes as usize,
        ingest_timeout: std::time::Duration::from_secs(ingest_timeout_secs.clamp(1, 86_400)),
        ingest_concurrency: ingest_concurrency.clamp(1, 64) as usize,
        default_collection: raw
            .default_collection
            .unwrap_or_else(|| "default".to_owned()),
        cjk_dense_weight,
        defaults,
        rerank: raw.rerank,
    }
}

/// An alias's settings: `base` with `raw`'s overrides.
pub(super) fn alias_settings(
    at: &str,
    raw: Option<RawRag>,
    base: &RagSettings,
    problems: &mut Problems,
) -> RagSettings {
    match raw {
        None => base.clone(),
        Some(RawRag::Switch(enabled)) => RagSettings {
            enabled,
            ..base.clone()
        },
        Some(RawRag::Settings(raw)) => settings(&format!("{at}.rag"), raw, base, problems),
    }
}

fn settings(
    at: &str,
    raw: RawRagSettings,
    base: &RagSettings,
    problems: &mut Problems,
) -> RagSettings {
    let top_k = raw.top_k.unwrap_or(base.top_k);
    if !(1..=50).contains(&top_k) {
        problems.add(format!("{at}.top_k"), "must be between 1 and 50");
    }
    let min_score = raw.min_score.unwrap_or(base.min_score);
    if !(-1.0..=1.0).contains(&min_score) {
        problems.add(format!("{at}.min_score"), "must be between -1 and 1");
    }
    let context_tokens = raw.context_tokens.unwrap_or(base.context_tokens);
    if context_tokens < 16 {
        problems.add(format!("{at}.context_tokens"), "must be at least 16");
    }
    RagSettings {
        enabled: raw.enabled.unwrap_or(base.enabled),
        top_k,
        min_score,
        context_tokens,
        collection: raw.search_collection.or_else(|| base.collection.clone()),
    }
}

/// The collection's layout on a Qdrant cluster, each number in range and no
/// more replicas asked to confirm a write than there are.
fn cluster(raw: &RawRetrieval, problems: &mut Problems) -> ClusterSettings {
    let numbers = [
        ("shard_number", raw.shard_number, 1..=1024),
        ("replication_factor", raw.replication_factor, 1..=32),
        (
            "write_consistency_factor",
            raw.write_consistency_factor,
            1..=32,
        ),
    ];
    for (key, value, range) in numbers {
        if let Some(n) = value
            && !range.contains(&n)
        {
            problems.add(
                format!("retrieval.{key}"),
                format!("must be between {} and {}", range.start(), range.end()),
            );
        }
    }
    if let Some(confirming) = raw.write_consistency_factor
        && confirming > raw.replication_factor.unwrap_or(1)
    {
        problems.add(
            "retrieval.write_consistency_factor",
            "must not exceed replication_factor (1 when unset): more replicas would have to \
             confirm a write than hold it",
        );
    }
    ClusterSettings {
        shard_number: raw.shard_number,
        replication_factor: raw.replication_factor,
        write_consistency_factor: raw.write_consistency_factor,
        on_disk_payload: raw.on_disk_payload,
    }
}
