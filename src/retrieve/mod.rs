//! The retrieve stage: ground the prompt in the tenant's own documents.
//!
//! [`NoRetrieval`] is the pass-through used while no document store is configured:
//! the prompt goes on unchanged and nothing is cited.

pub mod chunk;
pub mod prompt;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::GatewayError;
use crate::pipeline::RequestCtx;
use crate::sanitize::Scope;
use crate::wire::ChatRequest;

/// A passage the answer was grounded in, as shown to the client.
#[derive(Debug, Clone, Serialize)]
pub struct Citation {
    pub doc_id: String,
    pub title: String,
    pub source: String,
    pub chunk: u32,
    pub score: f32,
}

#[async_trait]
pub trait Retriever: Send + Sync {
    /// Adds the relevant passages to `prompt`; returns what it used. Every passage
    /// goes through `pii` first, into the request's own vault: a document's personal
    /// data reaches a provider only as placeholders, restored in the answer.
    async fn ground(
        &self,
        ctx: &RequestCtx,
        prompt: &mut ChatRequest,
        pii: &mut Scope<'_>,
    ) -> Result<Vec<Citation>, GatewayError>;
}

/// Pass-through: no retrieval.
pub struct NoRetrieval;

#[async_trait]
impl Retriever for NoRetrieval {
    async fn ground(
        &self,
        _ctx: &RequestCtx,
        _prompt: &mut ChatRequest,
        _pii: &mut Scope<'_>,
    ) -> Result<Vec<Citation>, GatewayError> {
        Ok(Vec::new())
    }
}
