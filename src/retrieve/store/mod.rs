//! Where chunks live. [`VectorStore`] is the whole contract; two backends keep the
//! same points and payload schema:
//!
//! - [`edge::EdgeStore`]: Qdrant Edge in process, data on local disk (the default,
//!   so a single machine needs no server);
//! - [`server::QdrantServer`]: a Qdrant server over gRPC (production), one collection
//!   per deployment with a tenant payload index.
//!
//! Every point carries a dense vector (`dense`, cosine) from the embedder and a
//! sparse one (`keywords`, BM25 term weights whose IDF the store applies), so both
//! halves of hybrid retrieval are filtered, persisted and deleted together.
//!
//! Tenant isolation lives here: every read and write takes the tenant and adds it
//! to the store's filter itself, so no caller can forget it.

pub mod edge;
pub mod server;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The dense vector's name in both backends.
pub const DENSE: &str = "dense";
/// The sparse (keyword) vector's name in both backends.
pub const KEYWORDS: &str = "keywords";

/// The embedder of a store made before stores recorded theirs: the only one there
/// was then.
const FIRST_EMBEDDER: &str = "all-MiniLM-L6-v2";

/// What to do with a store another embedder filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// Refuse to open it, naming both models (serving).
    Refuse,
    /// Record the new embedder, and every tenant as stale.
    Adopt,
}

/// What every stored chunk carries besides its vectors. Field names are the payload
/// keys in both backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPayload {
    pub tenant: String,
    pub collection: String,
    pub doc_id: String,
    pub chunk_index: u32,
    /// How many chunks the document has (so chunk 0 describes the document).
    pub chunks: u32,
    pub text: String,
    pub title: String,
    /// Headings above the chunk, outermost first.
    pub headings: Vec<String>,
    /// Where the document came from: a path, a file name or a URL.
    pub source: String,
    /// Unix seconds.
    pub ingested_at: u64,
    /// SHA-256 (hex) of the chunk's content: its id derives from it.
    pub hash: String,
    /// SHA-256 (hex) of the whole document: an unchanged document is not re-embedded.
    pub doc_hash: String,
}

/// A sparse vector: term ids and weights, ids ascending and unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseVector {
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// A chunk ready to store.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub id: Uuid,
    pub dense: Vec<f32>,
    pub keywords: SparseVector,
    pub payload: ChunkPayload,
}

/// Which half of the index a search asks.
#[derive(Debug, Clone, Copy)]
pub enum QueryVector<'a> {
    Dense(&'a [f32]),
    Keywords(&'a SparseVector),
}

#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub tenant: &'a str,
    /// Search one collection of the tenant's, or all of them.
    pub collection: Option<&'a str>,
    pub vector: QueryVector<'a>,
    pub limit: usize,
}

/// One search result, best first.
#[derive(Debug, Clone)]
pub struct Hit {
    pub id: Uuid,
    /// Cosine similarity for dense searches; BM25 for keyword searches.
    pub score: f32,
    pub payload: ChunkPayload,
}

impl Hit {
    /// A hit from a stored point; a point whose payload does not parse is skipped
    /// (and logged) rather than failing the search.
    fn parsed(id: Uuid, score: f32, payload: serde_json::Result<ChunkPayload>) -> Option<Hit> {
        match payload {
            Ok(payload) => Some(Hit { id, score, payload }),
            Err(error) => {
                tracing::warn!(%id, %error, "skipping a stored chunk with a bad payload");
                None
            }
        }
    }
}

/// A stored document, as `GET /v1/documents` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DocumentInfo {
    pub id: String,
    pub collection: String,
    pub title: String,
    pub source: String,
    pub chunks: u32,
    pub ingested_at: u64,
    pub hash: String,
}

impl DocumentInfo {
    /// From a chunk's payload holding at least [`DOCUMENT_FIELDS`].
    fn from_fields(payload: serde_json::Value) -> Option<DocumentInfo> {
        #[derive(Deserialize)]
        struct Fields {
            doc_id: String,
            collection: String,
            title: String,
            source: String,
            chunks: u32,
            ingested_at: u64,
            doc_hash: String,
        }
        let f: Fields = serde_json::from_value(payload).ok()?;
        Some(DocumentInfo {
            id: f.doc_id,
            collection: f.collection,
            title: f.title,
            source: f.source,
            chunks: f.chunks,
            ingested_at: f.ingested_at,
            hash: f.doc_hash,
        })
    }
}

impl From<ChunkPayload> for DocumentInfo {
    fn from(p: ChunkPayload) -> Self {
        DocumentInfo {
            id: p.doc_id,
            collection: p.collection,
            title: p.title,
            source: p.source,
            chunks: p.chunks,
            ingested_at: p.ingested_at,
            hash: p.doc_hash,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be opened or reached.
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
    /// The store refused or failed an operation.
    #[error("vector store: {0}")]
    Failed(String),
}

/// The payload fields a document's description needs: not the chunk's text.
const DOCUMENT_FIELDS: &[&str] = &[
    "doc_id",
    "collection",
    "title",
    "source",
    "chunks",
    "ingested_at",
    "doc_hash",
];

/// What both backends check before a write: every chunk belongs to the tenant and
/// document being written (the store keeps tenants apart itself), and has a vector
/// of the store's dimension.
fn check_chunks(
    tenant: &str,
    doc_id: &str,
    dimension: usize,
    chunks: &[StoredChunk],
) -> Result<(), StoreError> {
    for chunk in chunks {
        if chunk.payload.tenant != tenant || chunk.payload.doc_id != doc_id {
            return Err(StoreError::Failed(format!(
                "chunk {} belongs to {}/{}, not to {tenant}/{doc_id}",
                chunk.id, chunk.payload.tenant, chunk.payload.doc_id
            )));
        }
        if chunk.dense.len() != dimension {
            return Err(StoreError::Failed(format!(
                "chunk {} has a {}-dimensional vector; the store holds {dimension}",
                chunk.id,
                chunk.dense.len()
            )));
        }
    }
    Ok(())
}

#[async_trait]
pub trait VectorStore: Send + Sync {
    /// Stores a document's chunks and removes those of its earlier version that are
    /// not among them. Ids derive from content, so storing the same chunks again
    /// changes nothing. New chunks are written before old ones go: a search never
    /// finds the document missing.
    async fn replace(
        &self,
        tenant: &str,
        doc_id: &str,
        chunks: Vec<StoredChunk>,
    ) -> Result<(), StoreError>;

    /// Removes a document's chunks; returns how many there were.
    async fn delete(&self, tenant: &str, doc_id: &str) -> Result<u64, StoreError>;

    /// The stored document's description (from its first chunk), if there is one.
    async fn document(
        &self,
        tenant: &str,
        doc_id: &str,
    ) -> Result<Option<DocumentInfo>, StoreError>;

    /// The tenant's documents, at most `limit`, ordered by id.
    async fn documents(&self, tenant: &str, limit: usize) -> Result<Vec<DocumentInfo>, StoreError>;

    /// The tenant's nearest chunks to the query vector, best first.
    async fn search(&self, query: Query<'_>) -> Result<Vec<Hit>, StoreError>;

    /// How many chunks the tenant has stored: all, or one document's.
    async fn count(&self, tenant: &str, doc_id: Option<&str>) -> Result<u64, StoreError>;

    /// The tenant's corpus generation: bumped by every change to its documents, and
    /// part of the answer cache's key, so no cached answer outlives its sources.
    async fn generation(&self, tenant: &str) -> Result<u64, StoreError>;

    /// Bumps the tenant's generation; returns the new one.
    async fn bump_generation(&self, tenant: &str) -> Result<u64, StoreError>;

    /// The ids of the tenant's documents with any chunk stored (a document whose
    /// write was cut short before its first chunk included), sorted.
    async fn document_ids(&self, tenant: &str) -> Result<Vec<String>, StoreError>;

    /// A document's stored chunks, in order (what re-embedding reads back).
    async fn passages(&self, tenant: &str, doc_id: &str) -> Result<Vec<ChunkPayload>, StoreError>;

    /// Whether the tenant's dense vectors were made by an embedder other than the
    /// store's (it was switched, and the tenant not yet re-embedded): its searches
    /// then go by keywords alone. Backends without an embedder record say no.
    async fn is_stale(&self, _tenant: &str) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// The tenants whose vectors are stale, as [`VectorStore::is_stale`] says.
    async fn stale_tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// After every one of the tenant's chunks was embedded again by the store's
    /// embedder: its dense vectors count again.
    async fn mark_current(&self, _tenant: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Makes every write durable and, after a burst of writes, rebuilds indexes.
    /// Backends that do both themselves do nothing.
    async fn maintain(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Before the process ends: makes every write durable and builds the indexes
    /// that writes since the last build need, without waiting for quiet.
    async fn finish(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
