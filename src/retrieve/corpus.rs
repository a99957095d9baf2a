//! A tenant's documents: ingestion (chunk, embed, store) and hybrid search, over
//! any [`VectorStore`]. The HTTP documents API, the `ragway ingest` command and the
//! retrieve stage all go through here.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use encoding_rs::Encoding;
use ragway_engine::Embedder;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::encode::hex;
use uuid::Uuid;

use super::chunk::{ChunkSize, chunk};
use super::extract::{Format, extract};
use super::fuse::{Fused, fuse};
use super::keyword;
use super::store::{
    ChunkPayload, DocumentInfo, Query, QueryVector, StoreError, StoredChunk, VectorStore,
};

/// The longest document id, title, source or collection name (each is copied into
/// every chunk).
const MAX_NAME_CHARS: usize = 512;
/// How the keyword list's weight follows the language of the nearest passages by
/// meaning (see `Corpus::search`): the share of the `nearest` best in the
/// question's language, raised to `sharpness` (a higher power trusts keywords less
/// once some of those passages are in another language). Chosen on one half of the
/// labelled questions (docs/BENCHMARKS.md, "fusion fit").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reach {
    pub nearest: usize,
    pub sharpness: i32,
}

impl Default for Reach {
    fn default() -> Reach {
        Reach {
            nearest: 10,
            sharpness: 3,
        }
    }
}
/// Locks that serialise writes to one document (by a hash of tenant and id).
const DOCUMENT_LOCKS: usize = 64;

/// A document to ingest, its text already extracted.
#[derive(Debug, Clone)]
pub struct NewDocument {
    /// The tenant's own id for it; ingesting the same id again replaces it.
    pub id: String,
    pub collection: String,
    pub title: String,
    pub source: String,
    pub text: String,
}

impl NewDocument {
    /// A document from a file's bytes: the text extracted by `format` (in the
    /// `charset` its sender declared, if any), the title given, or the file's own,
    /// or its first heading, or the name in `source`.
    pub fn from_bytes(
        id: String,
        collection: String,
        source: String,
        format: Format,
        charset: Option<&'static Encoding>,
        bytes: &[u8],
        title: Option<String>,
    ) -> Result<NewDocument, CorpusError> {
        let extracted = extract(format, charset, bytes).map_err(CorpusError::Invalid)?;
        let title = title
            .filter(|t| !t.trim().is_empty())
            .or(extracted.title)
            .or_else(|| first_heading(&extracted.text))
            .unwrap_or_else(|| file_stem(&source));
        Ok(NewDocument {
            id,
            collection,
            title,
            source,
            text: extracted.text,
        })
    }
}

fn first_heading(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("# "))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn file_stem(source: &str) -> String {
    let name = source.rsplit(['/', '\\']).next().unwrap_or(source);
    name.split_once('.')
        .map_or(name, |(stem, _)| stem)
        .to_owned()
}

/// What an ingest did.
#[derive(Debug, Clone, Serialize)]
pub struct Ingested {
    pub id: String,
    pub collection: String,
    pub title: String,
    pub chunks: u32,
    /// The same document was already stored: nothing was embedded or written.
    pub unchanged: bool,
    /// The tenant's corpus generation afterwards.
    pub generation: u64,
}

/// What a re-embedding did.
#[derive(Debug, Clone, Serialize)]
pub struct Reindexed {
    pub tenant: String,
    pub documents: usize,
    pub chunks: usize,
    /// The tenant's corpus generation afterwards.
    pub generation: u64,
}

/// Which half of the index a search uses (all three are measured against each
/// other in docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Dense,
    Keyword,
    Hybrid,
}

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The document or request is unusable; nothing was stored.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("embedding failed: {0}")]
    Embed(String),
    /// The caller went, the deadline passed or the gateway is stopping: the work
    /// was abandoned part-way (a document cut short is redone when sent again).
    #[error("ingestion was cancelled")]
    Cancelled,
}

impl From<CorpusError> for crate::error::GatewayError {
    fn from(error: CorpusError) -> Self {
        use crate::error::GatewayError;
        match error {
            CorpusError::Invalid(message) => GatewayError::invalid(message, None),
            CorpusError::Store(StoreError::Unavailable(message)) => GatewayError::Unavailable {
                message: format!("the document store is unavailable: {message}"),
                retry_after: std::time::Duration::from_secs(1),
            },
            CorpusError::Cancelled => GatewayError::Unavailable {
                message: "ingestion was stopped before the document was stored; send it again"
                    .to_owned(),
                retry_after: std::time::Duration::from_secs(1),
            },
            other => GatewayError::Internal(other.to_string()),
        }
    }
}

pub struct Corpus {
    store: Arc<dyn VectorStore>,
    embedder: Arc<Embedder>,
    size: ChunkSize,
    /// The dense ranking's weight in fusion for a question written in Chinese.
    cjk_dense_weight: f32,
    reach: Reach,
    /// Two writes of one document at once would each remove the other's chunks as
    /// stale: writes to a document take its lock.
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Documents in ingestion per tenant, and how many one may have at once.
    busy: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    max_busy: usize,
}

/// A tenant's place among the documents in ingestion; given back when dropped.
pub struct IngestSlot {
    tenant: String,
    busy: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Drop for IngestSlot {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = busy.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                busy.remove(&self.tenant);
            }
        }
    }
}

/// The default `cjk_dense_weight` with all-MiniLM-L6-v2: it was trained on
/// English, and its ranking of Chinese passages is close to noise (recall@5 0.24
/// on the labelled set, against 1.00 for keywords), so it only breaks ties among
/// keyword matches.
pub const CJK_DENSE_WEIGHT: f32 = 0.1;

/// The default `cjk_dense_weight` for a multilingual embedder (e5), which ranks
/// Chinese passages as well as English ones: chosen on one half of the labelled
/// questions, reported on the other (docs/BENCHMARKS.md, "fusion fit").
pub const MULTILINGUAL_CJK_DENSE_WEIGHT: f32 = 1.0;

/// The default `min_score` for a multilingual embedder's centered vectors: their
/// cosines spread wider than MiniLM's. Off-topic questions' best passages stayed
/// below it on the labelled corpus, and 95 % of the relevant passages of
/// questions in another language reached it (docs/BENCHMARKS.md).
pub const MULTILINGUAL_MIN_SCORE: f32 = 0.25;

impl Corpus {
    pub fn new(store: Arc<dyn VectorStore>, embedder: Arc<Embedder>, size: ChunkSize) -> Corpus {
        Corpus {
            store,
            embedder,
            size,
            cjk_dense_weight: CJK_DENSE_WEIGHT,
            reach: Reach::default(),
            locks: (0..DOCUMENT_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            busy: Arc::default(),
            max_busy: usize::MAX,
        }
    }

    /// At most `documents` in ingestion at once per tenant ([`Corpus::admit`]).
    pub fn with_ingest_concurrency(mut self, documents: usize) -> Corpus {
        self.max_busy = documents.max(1);
        self
    }

    /// A place for one more of `tenant`'s documents in ingestion, or `None` when it
    /// has as many under way as it may: one tenant cannot keep every core busy.
    pub fn admit(&self, tenant: &str) -> Option<IngestSlot> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let count = busy.entry(tenant.to_owned()).or_insert(0);
        if *count >= self.max_busy {
            return None;
        }
        *count += 1;
        Some(IngestSlot {
            tenant: tenant.to_owned(),
            busy: Arc::clone(&self.busy),
        })
    }

    fn lock(&self, tenant: &str, id: &str) -> &tokio::sync::Mutex<()> {
        let digest = Sha256::new()
            .chain_update(tenant.as_bytes())
            .chain_update([0])
            .chain_update(id.as_bytes())
            .finalize();
        &self.locks[usize::from(digest[0]) % DOCUMENT_LOCKS]
    }

    /// How the keyword list follows the nearest passages' language (benchmarks
    /// choose it; the default is the measured best).
    pub fn with_reach(mut self, reach: Reach) -> Corpus {
        self.reach = reach;
        self
    }

    /// The model its documents and questions are embedded with.
    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    /// For an embedder that reads Chinese as well as English, set 1.
    pub fn with_cjk_dense_weight(mut self, weight: f32) -> Corpus {
        self.cjk_dense_weight = weight;
        self
    }

    /// How much the dense ranking counts against the keyword ranking's 1 for this
    /// question: full for English, `cjk_dense_weight` for Chinese, in proportion
    /// for a mix (`share`: of ideographs among its letters; 0 without letters).
    fn dense_weight(&self, share: f32) -> f32 {
        1.0 - share * (1.0 - self.cjk_dense_weight)
    }

    pub fn store(&self) -> &Arc<dyn VectorStore> {
        &self.store
    }

    /// Chunks, embeds and stores a document, replacing an earlier version with the
    /// same id. An unchanged document costs one lookup.
    pub async fn ingest(&self, tenant: &str, doc: NewDocument) -> Result<Ingested, CorpusError> {
        self.ingest_until(tenant, doc, &CancellationToken::new())
            .await
    }

    /// [`Corpus::ingest`], abandoned as soon as `stop` is cancelled: the CPU work
    /// (chunking and embedding, on a blocking thread the caller's future cannot
    /// reach) looks at it between steps.
    pub async fn ingest_until(
        &self,
        tenant: &str,
        doc: NewDocument,
        stop: &CancellationToken,
    ) -> Result<Ingested, CorpusError> {
        check(&doc)?;
        let doc_hash = self.document_hash(&doc);
        let _writing = self.lock(tenant, &doc.id).lock().await;
        // Unchanged only if the stored version is whole: a write cut short (chunk 0
        // goes last, so it may be missing) or stale chunks left over are redone.
        if let Some(stored) = self.store.document(tenant, &doc.id).await?
            && stored.hash == doc_hash
            && self.store.count(tenant, Some(&doc.id)).await? == u64::from(stored.chunks)
        {
            return Ok(Ingested {
                id: doc.id,
                collection: doc.collection,
                title: doc.title,
                chunks: stored.chunks,
                unchanged: true,
                generation: self.store.generation(tenant).await?,
            });
        }
        let chunks = {
            let embedder = Arc::clone(&self.embedder);
            let (size, tenant, doc, doc_hash, stop) = (
                self.size,
                tenant.to_owned(),
                doc.clone(),
                doc_hash,
                stop.clone(),
            );
            tokio::task::spawn_blocking(move || {
                prepare(&embedder, size, &tenant, &doc, &doc_hash, &stop)
            })
            .await
            .map_err(|e| CorpusError::Embed(e.to_string()))??
        };
        if stop.is_cancelled() {
            return Err(CorpusError::Cancelled);
        }
        let count = chunks.len() as u32;
        self.store.replace(tenant, &doc.id, chunks).await?;
        let generation = self.store.bump_generation(tenant).await?;
        Ok(Ingested {
            id: doc.id,
            collection: doc.collection,
            title: doc.title,
            chunks: count,
            unchanged: false,
            generation,
        })
    }

    /// Embeds every stored chunk of the tenant again, from the text the store kept,
    /// with this corpus's embedder (after a switch of embedder: see
    /// [`VectorStore::is_stale`]); the documents are not sent again. Each document
    /// is rewritten whole under its lock, one at a time, and the tenant's searches
    /// go on meanwhile (by keywords alone while it is stale).
    pub async fn reindex(
        &self,
        tenant: &str,
        stop: &CancellationToken,
    ) -> Result<Reindexed, CorpusError> {
        // Every document with a chunk stored, whole or not (a write cut short
        // before its first chunk is still the old model's vectors).
        let documents = self.store.document_ids(tenant).await?;
        if documents.is_empty() {
            // Nothing to embed and nothing cached to invalidate.
            self.store.mark_current(tenant).await?;
            return Ok(Reindexed {
                tenant: tenant.to_owned(),
                documents: 0,
                chunks: 0,
                generation: self.store.generation(tenant).await?,
            });
        }
        let mut chunks = 0;
        for document in &documents {
            if stop.is_cancelled() {
                return Err(CorpusError::Cancelled);
            }
            let _writing = self.lock(tenant, document).lock().await;
            let passages = self.store.passages(tenant, document).await?;
            if passages.is_empty() {
                continue; // deleted since the list was read
            }
            let embedder = Arc::clone(&self.embedder);
            let stop_embedding = stop.clone();
            let stored =
                tokio::task::spawn_blocking(move || re_embed(&embedder, passages, &stop_embedding))
                    .await
                    .map_err(|e| CorpusError::Embed(e.to_string()))??;
            chunks += stored.len();
            self.store.replace(tenant, document, stored).await?;
        }
        self.store.mark_current(tenant).await?;
        // Answers cached from the old vectors' passages are not this corpus's.
        let generation = self.store.bump_generation(tenant).await?;
        Ok(Reindexed {
            tenant: tenant.to_owned(),
            documents: documents.len(),
            chunks,
            generation,
        })
    }

    /// Removes a document; returns how many chunks it had (0: there was none).
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<u64, CorpusError> {
        let _writing = self.lock(tenant, id).lock().await;
        let removed = self.store.delete(tenant, id).await?;
        if removed > 0 {
            self.store.bump_generation(tenant).await?;
        }
        Ok(removed)
    }

    pub async fn documents(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<DocumentInfo>, CorpusError> {
        Ok(self.store.documents(tenant, limit).await?)
    }

    pub async fn generation(&self, tenant: &str) -> Result<u64, CorpusError> {
        Ok(self.store.generation(tenant).await?)
    }

    /// The tenant's passages for `question`, best first, at most `limit`.
    pub async fn search(
        &self,
        tenant: &str,
        collection: Option<&str>,
        question: &str,
        mode: Mode,
        limit: usize,
    ) -> Result<Vec<Fused>, CorpusError> {
        // Each list is asked for more than the final count: fusion promotes
        // passages that rank well in both without being first in either.
        let candidates = (limit * 4).max(20);
        // A tenant whose vectors another embedder made is searched by keywords
        // until it is embedded again: the two models' vectors do not compare.
        let mode = match mode != Mode::Keyword && self.store.is_stale(tenant).await? {
            true => Mode::Keyword,
            false => mode,
        };
        let dense = match mode {
            Mode::Keyword => Vec::new(),
            Mode::Dense | Mode::Hybrid => {
                let vector = self.embed_question(question).await?;
                let query = Query {
                    tenant,
                    collection,
                    vector: QueryVector::Dense(&vector),
                    limit: candidates,
                };
                self.store.search(query).await?
            }
        };
        let keywords = match mode {
            Mode::Dense => Vec::new(),
            Mode::Keyword | Mode::Hybrid => {
                // Cutting words is CPU work in proportion to the question.
                let text = question.to_owned();
                let vector = crate::compute::run(move || keyword::query_vector(&text))
                    .await
                    .map_err(|e| CorpusError::Embed(e.to_string()))?;
                let query = Query {
                    tenant,
                    collection,
                    vector: QueryVector::Keywords(&vector),
                    limit: candidates,
                };
                self.store.search(query).await?
            }
        };
        // A list that was not asked counts for nothing. The keyword list counts as
        // far as the question's answer looks to be within its reach: by the share of
        // the best passages by meaning that are in the question's language. (An
        // English question whose nearest passages are Chinese is likely answered in
        // Chinese, where its words cannot be found.)
        // The question's script, measured once (for the dense weight, and, with an
        // embedder that reads across languages, every passage's reach).
        let share = ragway_engine::ideograph_share(question);
        let asked = self.embedder.is_multilingual().then_some(share);
        let dense_weight = match mode {
            Mode::Keyword => 0.0,
            Mode::Dense | Mode::Hybrid => self.dense_weight(share),
        };
        let keyword_weight = match mode {
            Mode::Dense => 0.0,
            Mode::Keyword => 1.0,
            Mode::Hybrid => {
                let nearest = &dense[..dense.len().min(self.reach.nearest)];
                match nearest.len() {
                    0 => 1.0,
                    n => {
                        let within: f32 = nearest.iter().map(|hit| keyword_reach(asked, hit)).sum();
                        (within / n as f32).powi(self.reach.sharpness)
                    }
                }
            }
        };
        // Reach weighs the keyword list against the dense one: with one list alone
        // it would only zero the scores of passages in another script.
        let mut fused = fuse(dense, keywords, dense_weight, |hit| match mode {
            Mode::Hybrid => keyword_weight * keyword_reach(asked, hit),
            Mode::Dense | Mode::Keyword => 1.0,
        });
        fused.truncate(limit);
        Ok(fused)
    }

    async fn embed_question(&self, question: &str) -> Result<Vec<f32>, CorpusError> {
        let embedder = Arc::clone(&self.embedder);
        let input = vec![question.to_owned()];
        let mut vectors = crate::compute::run(move || {
            embedder.embed_for_search(&input, ragway_engine::Role::Query)
        })
        .await
        .map_err(|e| CorpusError::Embed(e.to_string()))?
        .map_err(|e| CorpusError::Embed(e.to_string()))?;
        vectors
            .pop()
            .ok_or_else(|| CorpusError::Embed("no vector".to_owned()))
    }

    /// Everything that shapes the stored chunks: when it is unchanged, so are they.
    fn document_hash(&self, doc: &NewDocument) -> String {
        let mut hash = Sha256::new();
        for part in [&doc.collection, &doc.title, &doc.source, &doc.text] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hash.update(self.size.target.to_le_bytes());
        hash.update(self.size.overlap.to_le_bytes());
        hex(&hash.finalize())
    }
}

/// A document's names are short and on one line; its text is not empty.
fn check(doc: &NewDocument) -> Result<(), CorpusError> {
    let invalid = |message: String| Err(CorpusError::Invalid(message));
    if doc.id.trim().is_empty() {
        return invalid("the document id is empty".to_owned());
    }
    if doc.collection.trim().is_empty() {
        return invalid("the collection name is empty".to_owned());
    }
    for (what, value) in [
        ("document id", &doc.id),
        ("title", &doc.title),
        ("source", &doc.source),
        ("collection name", &doc.collection),
    ] {
        if value.chars().count() > MAX_NAME_CHARS || value.chars().any(char::is_control) {
            return invalid(format!(
                "a {what} is at most {MAX_NAME_CHARS} characters, without control characters"
            ));
        }
    }
    if doc.text.trim().is_empty() {
        return invalid("the document has no text".to_owned());
    }
    Ok(())
}

/// The document's chunks with their vectors and payloads.
fn prepare(
    embedder: &Embedder,
    size: ChunkSize,
    tenant: &str,
    doc: &NewDocument,
    doc_hash: &str,
    stop: &CancellationToken,
) -> Result<Vec<StoredChunk>, CorpusError> {
    // Once stopped, every piece "fits": the chunker finishes in one linear pass
    // instead of counting tokens, and its result is thrown away below.
    let count = |text: &str| match stop.is_cancelled() {
        true => 0,
        false => embedder.count_tokens(text),
    };
    let pieces = chunk(&doc.text, size, &count);
    if stop.is_cancelled() {
        return Err(CorpusError::Cancelled);
    }
    if pieces.is_empty() {
        return Err(CorpusError::Invalid("the document has no text".to_owned()));
    }
    let indexed: Vec<String> = pieces
        .iter()
        .map(|c| indexed_text(&doc.title, &c.headings, &c.text))
        .collect();
    let vectors = embed_until(embedder, &indexed, stop)?;
    let ingested_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let total = pieces.len() as u32;
    let mut chunks: Vec<StoredChunk> = pieces
        .into_iter()
        .zip(vectors)
        .zip(&indexed)
        .map(|((piece, dense), indexed)| {
            let hash = hex(&Sha256::digest(indexed.as_bytes()));
            StoredChunk {
                id: chunk_id(tenant, &doc.id, piece.index, &hash),
                dense,
                keywords: keyword::document_vector(indexed),
                payload: ChunkPayload {
                    tenant: tenant.to_owned(),
                    collection: doc.collection.clone(),
                    doc_id: doc.id.clone(),
                    chunk_index: piece.index,
                    chunks: total,
                    text: piece.text,
                    title: doc.title.clone(),
                    headings: piece.headings,
                    source: doc.source.clone(),
                    ingested_at,
                    hash,
                    doc_hash: doc_hash.to_owned(),
                },
            }
        })
        .collect();
    // Chunk 0 describes the document (see `ingest`): written last, it is there only
    // once every other chunk is.
    chunks.rotate_left(1);
    Ok(chunks)
}

/// How far the keyword list could have found `hit` for a question whose share of
/// ideographs is `asked`: fully in the question's script, not at all in another.
/// `None` when the embedder is not multilingual: then every passage is within
/// reach (its dense finds in another language are noise anyway).
fn keyword_reach(asked: Option<f32>, hit: &super::store::Hit) -> f32 {
    match asked {
        None => 1.0,
        Some(asked) => 1.0 - (asked - ragway_engine::ideograph_share(&hit.payload.text)).abs(),
    }
}

/// What is embedded and indexed of a chunk: its text under its title and
/// headings, so a passage is found by the topic its section is about.
fn indexed_text(title: &str, headings: &[String], text: &str) -> String {
    let mut indexed = title.to_owned();
    let repeats_title = headings.first().is_some_and(|h| h.trim() == title.trim());
    for heading in &headings[usize::from(repeats_title)..] {
        indexed.push_str(" › ");
        indexed.push_str(heading);
    }
    indexed.push('\n');
    indexed.push_str(text);
    indexed
}

/// A stored document's chunks with vectors from `embedder`, ids and payloads as
/// they were (so storing them overwrites the old points, one for one).
fn re_embed(
    embedder: &Embedder,
    passages: Vec<ChunkPayload>,
    stop: &CancellationToken,
) -> Result<Vec<StoredChunk>, CorpusError> {
    let indexed: Vec<String> = passages
        .iter()
        .map(|p| indexed_text(&p.title, &p.headings, &p.text))
        .collect();
    let vectors = embed_until(embedder, &indexed, stop)?;
    let mut chunks: Vec<StoredChunk> = passages
        .into_iter()
        .zip(vectors)
        .zip(&indexed)
        .map(|((payload, dense), indexed)| StoredChunk {
            id: chunk_id(
                &payload.tenant,
                &payload.doc_id,
                payload.chunk_index,
                &payload.hash,
            ),
            dense,
            keywords: keyword::document_vector(indexed),
            payload,
        })
        .collect();
    // Chunk 0 last, as `prepare` writes them.
    chunks.rotate_left(1);
    Ok(chunks)
}

/// How many chunks are embedded between two looks at `stop`: one of the embedder's
/// batches, about a second of work on a CPU core.
const EMBED_GROUP: usize = 32;

/// The vectors of `texts`, in order, stopping between groups when `stop` is
/// cancelled. Texts are grouped by length first, as the embedder batches best.
fn embed_until(
    embedder: &Embedder,
    texts: &[String],
    stop: &CancellationToken,
) -> Result<Vec<Vec<f32>>, CorpusError> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut vectors = vec![Vec::new(); texts.len()];
    for group in order.chunks(EMBED_GROUP) {
        if stop.is_cancelled() {
            return Err(CorpusError::Cancelled);
        }
        let batch: Vec<String> = group.iter().map(|&i| texts[i].clone()).collect();
        let embedded = embedder
            .embed_for_search(&batch, ragway_engine::Role::Passage)
            .map_err(|e| CorpusError::Embed(e.to_string()))?;
        // A short answer would leave chunks without vectors (and a rewrite of the
        // document would drop them).
        if embedded.len() != batch.len() {
            return Err(CorpusError::Embed(format!(
                "{} vectors for {} chunks",
                embedded.len(),
                batch.len()
            )));
        }
        for (&i, vector) in group.iter().zip(embedded) {
            vectors[i] = vector;
        }
    }
    Ok(vectors)
}

/// A chunk's point id: from its content and place, so storing the same chunk again
/// overwrites it, and a chunk that changed gets a new id (its old one is removed).
pub fn chunk_id(tenant: &str, doc_id: &str, index: u32, hash: &str) -> Uuid {
    let mut digest = Sha256::new();
    for part in [tenant, doc_id, hash] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    digest.update(index.to_le_bytes());
    let digest = digest.finalize();
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_follow_content_and_place() {
        let a = chunk_id("t", "doc", 0, "h1");
        assert_eq!(a, chunk_id("t", "doc", 0, "h1"));
        assert_ne!(a, chunk_id("t", "doc", 1, "h1"));
        assert_ne!(a, chunk_id("t", "doc", 0, "h2"));
        assert_ne!(a, chunk_id("u", "doc", 0, "h1"));
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn titles_come_from_the_document_or_its_name() {
        let doc = |text: &str, title: Option<&str>| {
            NewDocument::from_bytes(
                "id".into(),
                "c".into(),
                "docs/退货政策.md".into(),
                Format::Markdown,
                None,
                text.as_bytes(),
                title.map(str::to_owned),
            )
            .unwrap()
            .title
        };
        assert_eq!(doc("intro\n# Returns\nbody", None), "Returns");
        assert_eq!(doc("body", None), "退货政策");
        assert_eq!(doc("# Returns", Some("Given")), "Given");
    }

    #[test]
    fn names_are_checked() {
        let doc = |id: &str, title: &str| NewDocument {
            id: id.to_owned(),
            collection: "c".to_owned(),
            title: title.to_owned(),
            source: "s".to_owned(),
            text: "body".to_owned(),
        };
        assert!(check(&doc("manual.md", "Manual")).is_ok());
        assert!(check(&doc(" ", "Manual")).is_err());
        assert!(check(&doc("a\nb", "Manual")).is_err());
        assert!(check(&doc(&"x".repeat(MAX_NAME_CHARS + 1), "Manual")).is_err());
        assert!(check(&doc("m", &"标".repeat(MAX_NAME_CHARS + 1))).is_err());
    }
}
