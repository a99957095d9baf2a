//! The vector store contract, backend-agnostic ([`contract`]), and the embedded
//! backend against it and on its own: persistence, the directory lock, the
//! dimension check and index building.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ragway::retrieve::store::edge::EdgeStore;
use ragway::retrieve::store::{
    ChunkPayload, DocumentInfo, Hit, Query, QueryVector, SparseVector, StoreError, StoredChunk,
    VectorStore,
};
use uuid::Uuid;

/// The dimension of the hand-made vectors.
pub const DIMENSION: usize = 4;

/// The `i`th unit vector.
pub fn unit(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIMENSION];
    v[i] = 1.0;
    v
}

pub fn sparse(terms: &[(u32, f32)]) -> SparseVector {
    SparseVector {
        indices: terms.iter().map(|t| t.0).collect(),
        values: terms.iter().map(|t| t.1).collect(),
    }
}

/// A chunk with a fresh id.
pub fn chunk(
    tenant: &str,
    collection: &str,
    doc_id: &str,
    (index, chunks): (u32, u32),
    dense: Vec<f32>,
    keywords: SparseVector,
) -> StoredChunk {
    StoredChunk {
        id: Uuid::new_v4(),
        dense,
        keywords,
        payload: ChunkPayload {
            tenant: tenant.to_owned(),
            collection: collection.to_owned(),
            doc_id: doc_id.to_owned(),
            chunk_index: index,
            chunks,
            text: format!("{doc_id} chunk {index}"),
            title: format!("Title of {doc_id}"),
            headings: vec!["Top".to_owned(), format!("Section {index}")],
            source: format!("{doc_id}.md"),
            ingested_at: 1_700_000_000,
            hash: format!("hash-{doc_id}-{index}"),
            doc_hash: format!("dochash-{doc_id}"),
        },
    }
}

fn dense<'a>(tenant: &'a str, collection: Option<&'a str>, vector: &'a [f32]) -> Query<'a> {
    Query {
        tenant,
        collection,
        vector: QueryVector::Dense(vector),
        limit: 10,
    }
}

fn keywords<'a>(tenant: &'a str, vector: &'a SparseVector) -> Query<'a> {
    Query {
        tenant,
        collection: None,
        vector: QueryVector::Keywords(vector),
        limit: 10,
    }
}

fn ids(hits: &[Hit]) -> Vec<Uuid> {
    hits.iter().map(|h| h.id).collect()
}

/// Every [`VectorStore`] keeps this. Tenants are fresh, so a store that already
/// holds data (a shared server) works too.
pub async fn contract(store: &dyn VectorStore) {
    let a = format!("tenant-a-{}", Uuid::new_v4());
    let b = format!("tenant-b-{}", Uuid::new_v4());

    // Replace, then both halves of search find the chunks.
    let c0 = chunk(
        &a,
        "manuals",
        "doc1",
        (0, 3),
        unit(0),
        sparse(&[(1, 1.0), (2, 0.5)]),
    );
    let c1 = chunk(&a, "manuals", "doc1", (1, 3), unit(1), sparse(&[(3, 1.0)]));
    // No terms at all (a chunk of numbers or punctuation): still storable.
    let c2 = chunk(
        &a,
        "manuals",
        "doc1",
        (2, 3),
        unit(2),
        SparseVector::default(),
    );
    let doc1 = vec![c0.clone(), c1.clone(), c2.clone()];
    store.replace(&a, "doc1", doc1.clone()).await.unwrap();
    assert_eq!(store.count(&a, None).await.unwrap(), 3);
    assert_eq!(store.count(&a, Some("doc1")).await.unwrap(), 3);
    assert_eq!(store.count(&a, Some("doc2")).await.unwrap(), 0);

    // A document's chunks read back whole, in order, and only the tenant's own.
    let passages = store.passages(&a, "doc1").await.unwrap();
    let expected: Vec<ChunkPayload> = doc1.iter().map(|c| c.payload.clone()).collect();
    assert_eq!(passages, expected);
    assert!(store.passages(&b, "doc1").await.unwrap().is_empty());
    assert!(store.passages(&a, "doc9").await.unwrap().is_empty());
    assert_eq!(store.document_ids(&a).await.unwrap(), ["doc1"]);
    assert!(store.document_ids(&b).await.unwrap().is_empty());

    let hits = store.search(dense(&a, None, &unit(0))).await.unwrap();
    assert_eq!(hits[0].id, c0.id);
    assert_eq!(hits[0].payload, c0.payload);
    assert!(
        (hits[0].score - 1.0).abs() < 1e-4,
        "cosine of itself: {}",
        hits[0].score
    );
    assert_eq!(hits.len(), 3);

    let query = sparse(&[(3, 1.0)]);
    let hits = store.search(keywords(&a, &query)).await.unwrap();
    assert_eq!(ids(&hits), vec![c1.id], "only the chunk with the term");
    assert_eq!(hits[0].payload, c1.payload);
    assert!(hits[0].score > 0.0);
    let hits = store
        .search(keywords(&a, &SparseVector::default()))
        .await
        .unwrap();
    assert!(hits.is_empty(), "an empty keyword query finds nothing");

    // The same chunks again change nothing.
    store.replace(&a, "doc1", doc1).await.unwrap();
    assert_eq!(store.count(&a, None).await.unwrap(), 3);

    // A second document, in another collection.
    let d0 = chunk(&a, "notes", "doc2", (0, 1), unit(3), sparse(&[(9, 1.0)]));
    store.replace(&a, "doc2", vec![d0.clone()]).await.unwrap();
    assert_eq!(store.count(&a, None).await.unwrap(), 4);
    let hits = store
        .search(dense(&a, Some("manuals"), &unit(3)))
        .await
        .unwrap();
    assert!(!ids(&hits).contains(&d0.id), "another collection's chunk");
    assert!(hits.iter().all(|h| h.payload.collection == "manuals"));
    let hits = store
        .search(dense(&a, Some("notes"), &unit(3)))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![d0.id]);
    let hits = store.search(dense(&a, None, &unit(3))).await.unwrap();
    assert_eq!(hits[0].id, d0.id);
    assert_eq!(hits.len(), 4);

    // One entry per document, ordered by id, from its first chunk.
    let documents = store.documents(&a, 10).await.unwrap();
    assert_eq!(
        documents,
        vec![
            DocumentInfo::from(c0.payload.clone()),
            DocumentInfo::from(d0.payload.clone())
        ]
    );
    assert_eq!(documents[0].chunks, 3);
    assert_eq!(store.documents(&a, 1).await.unwrap().len(), 1);
    assert_eq!(
        store.document(&a, "doc1").await.unwrap(),
        Some(DocumentInfo::from(c0.payload.clone()))
    );
    assert_eq!(store.document(&a, "nope").await.unwrap(), None);

    // A new version of doc1 with two chunks: the stale one goes.
    let mut c0v2 = c0.clone();
    c0v2.payload.chunks = 2;
    let c1v2 = {
        let mut c = chunk(&a, "manuals", "doc1", (1, 2), unit(1), sparse(&[(4, 1.0)]));
        c.payload.text = "doc1 chunk 1, rewritten".to_owned();
        c
    };
    store
        .replace(&a, "doc1", vec![c0v2.clone(), c1v2.clone()])
        .await
        .unwrap();
    assert_eq!(store.count(&a, None).await.unwrap(), 3);
    let hits = store
        .search(dense(&a, Some("manuals"), &unit(2)))
        .await
        .unwrap();
    assert!(!ids(&hits).contains(&c2.id), "stale chunk still found");
    assert!(!ids(&hits).contains(&c1.id), "stale chunk still found");
    let hits = store.search(dense(&a, None, &unit(1))).await.unwrap();
    assert_eq!(hits[0].id, c1v2.id);
    assert_eq!(hits[0].payload, c1v2.payload);
    let old_term = sparse(&[(3, 1.0)]);
    assert!(
        store
            .search(keywords(&a, &old_term))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.document(&a, "doc1").await.unwrap().unwrap().chunks, 2);

    // Tenant isolation: B sees none of A's chunks, even with the same vectors and
    // document ids.
    assert!(
        store
            .search(dense(&b, None, &unit(0)))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .search(keywords(&b, &sparse(&[(4, 1.0)])))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.count(&b, None).await.unwrap(), 0);
    assert!(store.documents(&b, 10).await.unwrap().is_empty());
    assert_eq!(store.document(&b, "doc1").await.unwrap(), None);
    assert_eq!(store.delete(&b, "doc1").await.unwrap(), 0);
    assert_eq!(store.count(&a, None).await.unwrap(), 3);

    let e0 = chunk(&b, "manuals", "doc1", (0, 1), unit(0), sparse(&[(1, 1.0)]));
    store.replace(&b, "doc1", vec![e0.clone()]).await.unwrap();
    let hits = store.search(dense(&b, None, &unit(0))).await.unwrap();
    assert_eq!(ids(&hits), vec![e0.id]);
    let hits = store
        .search(keywords(&b, &sparse(&[(1, 1.0)])))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![e0.id]);
    assert_eq!(store.count(&b, None).await.unwrap(), 1);
    assert_eq!(store.document(&b, "doc2").await.unwrap(), None);
    assert_eq!(store.documents(&b, 10).await.unwrap().len(), 1);
    // B replacing its doc1 leaves A's doc1 alone.
    let e0v2 = chunk(&b, "manuals", "doc1", (0, 1), unit(1), sparse(&[(1, 1.0)]));
    store.replace(&b, "doc1", vec![e0v2]).await.unwrap();
    assert_eq!(store.count(&b, None).await.unwrap(), 1);
    assert_eq!(store.count(&a, None).await.unwrap(), 3);

    // A chunk of another tenant or document is refused.
    let stray = chunk(&a, "manuals", "doc3", (0, 1), unit(0), sparse(&[(1, 1.0)]));
    assert!(matches!(
        store.replace(&b, "doc3", vec![stray.clone()]).await,
        Err(StoreError::Failed(_))
    ));
    assert!(matches!(
        store.replace(&a, "other", vec![stray]).await,
        Err(StoreError::Failed(_))
    ));
    assert_eq!(store.count(&b, None).await.unwrap(), 1);
    assert_eq!(store.count(&a, None).await.unwrap(), 3);

    // An id another tenant's chunk has is refused, not taken over.
    let mut taken = chunk(&b, "manuals", "doc1", (0, 1), unit(0), sparse(&[(1, 1.0)]));
    taken.id = c0.id;
    assert!(store.replace(&b, "doc1", vec![taken]).await.is_err());
    let hits = store.search(dense(&a, None, &unit(0))).await.unwrap();
    assert_eq!(hits[0].id, c0.id);
    assert_eq!(hits[0].payload, c0v2.payload);
    assert_eq!(store.count(&b, None).await.unwrap(), 1);

    // Delete: returns how many, removes everything of the document only.
    assert_eq!(store.delete(&b, "doc1").await.unwrap(), 1);
    assert_eq!(store.count(&b, None).await.unwrap(), 0);
    assert_eq!(store.count(&a, None).await.unwrap(), 3);
    assert_eq!(store.delete(&a, "doc1").await.unwrap(), 2);
    assert_eq!(store.count(&a, None).await.unwrap(), 1);
    assert_eq!(store.document(&a, "doc1").await.unwrap(), None);
    let hits = store.search(dense(&a, None, &unit(0))).await.unwrap();
    assert!(hits.iter().all(|h| h.payload.doc_id != "doc1"));
    assert_eq!(store.delete(&a, "doc1").await.unwrap(), 0);
    assert_eq!(store.documents(&a, 10).await.unwrap().len(), 1);
    // Replacing with no chunks removes the document too.
    store.replace(&a, "doc2", Vec::new()).await.unwrap();
    assert_eq!(store.count(&a, None).await.unwrap(), 0);

    // Generations: 0 until bumped, then one at a time, per tenant.
    // Each bump gives a new, larger generation (the server backend's are times, so
    // that replicas bumping at once still differ); other tenants' stay as they are.
    assert_eq!(store.generation(&a).await.unwrap(), 0);
    let first = store.bump_generation(&a).await.unwrap();
    let second = store.bump_generation(&a).await.unwrap();
    assert!(first > 0 && second > first, "{first} then {second}");
    assert_eq!(store.generation(&a).await.unwrap(), second);
    assert_eq!(store.generation(&b).await.unwrap(), 0);

    store.maintain().await.unwrap();
}

/// A fresh directory, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        TempDir(std::env::temp_dir().join(format!("ragway-store-{}", Uuid::new_v4())))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn edge_store_keeps_the_contract() {
    let dir = TempDir::new();
    let store = EdgeStore::open(dir.path(), DIMENSION).unwrap();
    contract(&store).await;
    // The contract again on the same store: its tenants are fresh.
    contract(&store).await;
}

#[tokio::test]
async fn edge_store_keeps_everything_across_a_reopen() {
    let dir = TempDir::new();
    let tenant = "persistent";
    let first = chunk(tenant, "c", "doc1", (0, 1), unit(0), sparse(&[(7, 1.0)]));
    let second = chunk(tenant, "c", "doc2", (0, 1), unit(1), sparse(&[(8, 1.0)]));
    {
        let store = EdgeStore::open(dir.path(), DIMENSION).unwrap();
        store
            .replace(tenant, "doc1", vec![first.clone()])
            .await
            .unwrap();
        store.bump_generation(tenant).await.unwrap();
        store.maintain().await.unwrap();
        // Written after the last flush.
        store
            .replace(tenant, "doc2", vec![second.clone()])
            .await
            .unwrap();
        store.bump_generation(tenant).await.unwrap();
    }
    let store = EdgeStore::open(dir.path(), DIMENSION).unwrap();
    assert_eq!(store.count(tenant, None).await.unwrap(), 2);
    assert_eq!(store.generation(tenant).await.unwrap(), 2);
    let hits = store.search(dense(tenant, None, &unit(0))).await.unwrap();
    assert_eq!(hits[0].id, first.id);
    assert_eq!(hits[0].payload, first.payload);
    let query = sparse(&[(8, 1.0)]);
    let hits = store.search(keywords(tenant, &query)).await.unwrap();
    assert_eq!(ids(&hits), vec![second.id]);
    assert_eq!(store.documents(tenant, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn edge_store_refuses_a_directory_in_use() {
    let dir = TempDir::new();
    let _store = EdgeStore::open(dir.path(), DIMENSION).unwrap();
    match EdgeStore::open(dir.path(), DIMENSION) {
        Err(StoreError::Unavailable(message)) => {
            assert!(
                message.contains("in use by another ragway process"),
                "{message}"
            );
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a directory in use opened twice"),
    }
}

#[tokio::test]
async fn edge_store_refuses_another_embedder_of_the_same_width() {
    let dir = TempDir::new();
    {
        let store = EdgeStore::open_for(dir.path(), DIMENSION, "multilingual-e5-small").unwrap();
        let c = chunk("t", "c", "doc", (0, 1), unit(0), sparse(&[(1, 1.0)]));
        store.replace("t", "doc", vec![c]).await.unwrap();
    }
    match EdgeStore::open_for(dir.path(), DIMENSION, "all-MiniLM-L6-v2") {
        Err(StoreError::Unavailable(message)) => {
            assert!(
                message.contains("multilingual-e5-small") && message.contains("all-MiniLM-L6-v2"),
                "names both: {message}"
            );
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("opened with another embedder"),
    }
    let store = EdgeStore::open_for(dir.path(), DIMENSION, "multilingual-e5-small").unwrap();
    assert_eq!(store.count("t", None).await.unwrap(), 1);
    assert!(!store.is_stale("t").await.unwrap());
    store.bump_generation("t").await.unwrap();
    drop(store);
    // `ragway reindex` takes it over: every tenant is stale until embedded again,
    // and the switch is kept across a reopen.
    let switched = EdgeStore::switch_to(dir.path(), DIMENSION, "all-MiniLM-L6-v2").unwrap();
    assert!(switched.is_stale("t").await.unwrap());
    assert!(!switched.is_stale("u").await.unwrap());
    assert_eq!(switched.stale_tenants().await.unwrap(), ["t"]);
    drop(switched);
    let reopened = EdgeStore::open_for(dir.path(), DIMENSION, "all-MiniLM-L6-v2").unwrap();
    assert_eq!(reopened.stale_tenants().await.unwrap(), ["t"]);
    reopened.mark_current("t").await.unwrap();
    assert!(!reopened.is_stale("t").await.unwrap());
    drop(reopened);
    let reopened = EdgeStore::open_for(dir.path(), DIMENSION, "all-MiniLM-L6-v2").unwrap();
    assert!(reopened.stale_tenants().await.unwrap().is_empty());
    assert!(EdgeStore::open_for(dir.path(), DIMENSION, "multilingual-e5-small").is_err());
    drop(reopened);
    // A store made before stores recorded their embedder was made by MiniLM.
    let old = TempDir::new();
    drop(EdgeStore::open(old.path(), DIMENSION).unwrap());
    assert!(EdgeStore::open_for(old.path(), DIMENSION, "all-MiniLM-L6-v2").is_ok());
    assert!(EdgeStore::open_for(old.path(), DIMENSION, "multilingual-e5-small").is_err());
}

#[tokio::test]
async fn edge_store_refuses_another_dimension() {
    let dir = TempDir::new();
    {
        let store = EdgeStore::open(dir.path(), DIMENSION).unwrap();
        let c = chunk("t", "c", "doc", (0, 1), unit(0), sparse(&[(1, 1.0)]));
        store.replace("t", "doc", vec![c]).await.unwrap();
    }
    match EdgeStore::open(dir.path(), 8) {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("4-dimensional"), "{message}");
            assert!(message.contains("8-dimensional"), "{message}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("opened with another dimension"),
    }
    // Still fine with its own.
    let store = EdgeStore::open(dir.path(), DIMENSION).unwrap();
    assert_eq!(store.count("t", None).await.unwrap(), 1);
}

#[tokio::test]
async fn edge_store_optimizes_once_writes_are_quiet() {
    let dir = TempDir::new();
    let store = EdgeStore::open_with(dir.path(), DIMENSION, Duration::ZERO).unwrap();
    let tenant = "optimized";
    let mut chunks = Vec::new();
    for i in 0..200u32 {
        let mut v = unit(i as usize % DIMENSION);
        v[(i as usize + 1) % DIMENSION] = i as f32 / 200.0;
        chunks.push(chunk(
            tenant,
            "c",
            &format!("doc{i}"),
            (0, 1),
            v,
            sparse(&[(i, 1.0)]),
        ));
    }
    for c in &chunks {
        store
            .replace(tenant, &c.payload.doc_id, vec![c.clone()])
            .await
            .unwrap();
    }
    for c in chunks.iter().take(50) {
        assert_eq!(store.delete(tenant, &c.payload.doc_id).await.unwrap(), 1);
    }
    store.maintain().await.unwrap();
    store.maintain().await.unwrap();
    assert_eq!(store.count(tenant, None).await.unwrap(), 150);
    let target = &chunks[120];
    let hits = store
        .search(dense(tenant, None, &target.dense))
        .await
        .unwrap();
    assert_eq!(hits[0].id, target.id);
    let query = sparse(&[(120, 1.0)]);
    let hits = store.search(keywords(tenant, &query)).await.unwrap();
    assert_eq!(ids(&hits), vec![target.id]);
    store.finish().await.unwrap();

    // A long quiet time: maintain only flushes, and finish still works.
    drop(store);
    let store = EdgeStore::open_with(dir.path(), DIMENSION, Duration::from_secs(3600)).unwrap();
    store
        .replace(tenant, "doc0", vec![chunks[0].clone()])
        .await
        .unwrap();
    store.maintain().await.unwrap();
    store.finish().await.unwrap();
    assert_eq!(store.count(tenant, None).await.unwrap(), 151);
}
