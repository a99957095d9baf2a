//! The retrieve stage: ground the prompt in the tenant's own documents.
//!
//! - [`corpus`]: ingest (extract → chunk → embed → store) and hybrid search;
//! - [`store`]: the vector store contract and its two Qdrant backends;
//! - [`keyword`] and [`fuse`]: BM25 terms and reciprocal rank fusion;
//! - [`ground`]: the stage itself, through the templates of [`prompt`].
//!
//! [`NoRetrieval`] is the pass-through used while `[retrieval]` is not configured:
//! the prompt goes on unchanged and nothing is cited.

pub mod chunk;
pub mod corpus;
pub mod eval;
pub mod extract;
pub mod fuse;
pub mod ground;
pub mod keyword;
pub mod prompt;
pub mod rerank;
mod settings;
pub mod store;

use async_trait::async_trait;

use crate::call::Call;
use crate::call::Placeholders;
use crate::error::GatewayError;
use crate::wire::ChatRequest;

pub use crate::call::Citation;
pub use settings::{PromptLanguage, RagSettings};

#[async_trait]
pub trait Retriever: Send + Sync {
    /// Adds the relevant passages to `prompt`; returns what it used. Every passage
    /// goes through `pii` first, into the request's own vault: a document's personal
    /// data reaches a provider only as placeholders, restored in the answer.
    async fn ground(
        &self,
        call: &Call<'_>,
        prompt: &mut ChatRequest,
        pii: &mut dyn Placeholders,
    ) -> Result<Vec<Citation>, GatewayError>;

    /// What the answers of this caller are built on — the tenant's corpus
    /// generation and the template version — for the cache key; `None` when
    /// nothing is retrieved.
    async fn corpus_version(
        &self,
        _call: &Call<'_>,
        _prompt: &ChatRequest,
    ) -> Result<Option<String>, GatewayError> {
        Ok(None)
    }
}

/// Pass-through: no retrieval.
pub struct NoRetrieval;

#[async_trait]
impl Retriever for NoRetrieval {
    async fn ground(
        &self,
        _call: &Call<'_>,
        _prompt: &mut ChatRequest,
        _pii: &mut dyn Placeholders,
    ) -> Result<Vec<Citation>, GatewayError> {
        Ok(Vec::new())
    }
}
