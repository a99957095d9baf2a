//! How an alias grounds its answers, and in which language's template: the
//! retrieve stage's own settings (`config` reads them from `[retrieval]` and each
//! model's `rag` table).

use serde::{Deserialize, Serialize};

/// Which grounding template a question gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptLanguage {
    /// By the question's script.
    Auto,
    Zh,
    En,
}

/// How one alias grounds its answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RagSettings {
    pub enabled: bool,
    /// Passages per answer, at most.
    pub top_k: usize,
    /// The cosine similarity below which a passage found only by meaning (not by
    /// any of the question's words) is left out.
    pub min_score: f32,
    /// The passages' budget in tokens (estimated).
    pub context_tokens: usize,
    /// Search this collection only; all of the tenant's when unset.
    pub collection: Option<String>,
}
