//! The vector store on a Qdrant server, over gRPC (`http://host:6334`): for
//! production, where several gateway replicas share one index.
//!
//! **One collection per deployment, tenants told apart by payload.** Every point
//! carries its `tenant`, and every read and write of this backend adds
//! `tenant == T` to its filter itself. That is Qdrant's own advice for many tenants
//! (<https://qdrant.tech/documentation/guides/multiple-partitions/>): a collection
//! per tenant costs memory and start-up time per collection and does not scale to
//! many small tenants, while a keyword index on the tenant field with `is_tenant`
//! makes Qdrant store each tenant's points together, so a tenant's search reads
//! its own segment ranges. Searches are always filtered by tenant, so the dense
//! HNSW graph is built per tenant (`payload_m`) rather than globally (`m = 0`), as
//! that guide also recommends.
//!
//! The collection holds the same points and payload as the embedded backend
//! ([`super::edge`]): a named dense vector [`DENSE`] (cosine) and a named sparse
//! vector [`KEYWORDS`] whose IDF Qdrant applies (`Modifier::Idf`), with payload
//! indexes on `tenant` (the tenant index), `collection`, `doc_id` and `chunk_index`.
//!
//! The tenants' corpus generations live in a second, tiny collection,
//! `{collection}_generations`: one point per tenant (see [`generation_point_id`]).
//! The collection records which embedder made its vectors, and the generations
//! collection which tenants' vectors another one made ([`embedder`]).
//!
//! Writes use `wait = true`, so a call returns once its change is searchable, and
//! the server makes them durable and indexes them itself: [`VectorStore::maintain`]
//! and [`VectorStore::finish`] have nothing to do.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use qdrant_client::qdrant::r#match::MatchValue;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::{
    CollectionInfo, Condition, CountPointsBuilder, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance, FieldType, Filter,
    GetPointsBuilder, HnswConfigDiffBuilder, IntegerIndexParamsBuilder, KeywordIndexParamsBuilder,
    Modifier, PayloadIncludeSelector, PointId, PointStruct, PointsIdsList, Query as QdrantQuery,
    QueryPointsBuilder, RetrievedPoint, ScrollPointsBuilder, SparseVectorParamsBuilder,
    SparseVectorsConfigBuilder, UpdateCollectionBuilder, UpsertPointsBuilder, Value, Vector,
    VectorInput, VectorParamsBuilder, VectorsConfigBuilder, payload_index_params, vectors_config,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    ChunkPayload, DENSE, DOCUMENT_FIELDS, DocumentInfo, Hit, KEYWORDS, Query, QueryVector,
    StoreError, StoredChunk, Switch, VectorStore, check_chunks,
};

pub mod cluster;
pub mod embedder;
mod errors;
mod filters;
mod generations;
mod schema;

pub use cluster::{ClusterSettings, Difference};
pub use embedder::{EMBEDDER_KEY, stale_point_id};
use embedder::{Verdict, payload_tenant, recorded_model, stale_marks, stale_payload};
use errors::*;
use filters::*;
pub use generations::{GENERATION_TTL, generation_point_id, generations_collection};
use generations::{next_generation, parse_generation, tenant_point_id, unix_micros};
use schema::*;

/// The Qdrant server releases this backend is tested with: 1.16 (the suite's
/// server, v1.16.3) up to the client's own (1.20). Earlier ones lack the
/// payload and index options the collection is made with.
pub const TESTED_RELEASES: std::ops::RangeInclusive<(u32, u32)> = (1, 16)..=(1, 20);

/// Whether release `version` (`1.16.3`, `v1.17.0`) is within [`TESTED_RELEASES`].
fn tested_release(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split('.');
    let mut number = || parts.next().and_then(|n| n.parse::<u32>().ok());
    match (number(), number()) {
        (Some(major), Some(minor)) => TESTED_RELEASES.contains(&(major, minor)),
        _ => false,
    }
}

/// Points per upsert request: a long document's chunks go in several requests
/// (all written before the old version's stale chunks are deleted).
const UPSERT_BATCH: usize = 128;
/// Points read per scroll request when listing documents.
const SCROLL_PAGE: u32 = 256;

/// The Qdrant server backend. Cheap to share behind an `Arc`; the client keeps a
/// small pool of gRPC connections and reconnects by itself.
pub struct QdrantServer {
    client: Qdrant,
    collection: String,
    generations_collection: String,
    dimension: usize,
    /// Tenant → (generation, when it was read or written here).
    generations: Mutex<HashMap<String, (u64, Instant)>>,
    /// The model this process embeds with, once [`QdrantServer::for_embedder`]
    /// checked it against the collection's record (`None`: not checked).
    embedder: Option<String>,
    /// The model the collection records instead, when another process switched it
    /// after this one connected: this process's vectors no longer compare.
    superseded_by: Mutex<Option<String>>,
    /// Tenant → (whether its vectors are stale, when that was read here).
    stale: Mutex<HashMap<String, (bool, Instant)>>,
    /// How the collection is laid out on the cluster, as configured.
    cluster: ClusterSettings,
    /// Where the existing collection is laid out otherwise.
    differences: Vec<Difference>,
    /// The server's release, as it reports it (`1.16.3`).
    version: String,
}

impl QdrantServer {
    /// Connects to the Qdrant server at `url` (gRPC, e.g. `http://localhost:6334`),
    /// creating `collection` (and its generations collection) if missing, for dense
    /// vectors of `dimension`, and the payload indexes still missing. `timeout`
    /// bounds connecting and every request.
    ///
    /// Fails with [`StoreError::Unavailable`] if the server cannot be reached, and
    /// if the collection exists with vectors of another size (another embedding
    /// model) or without this backend's vectors.
    pub async fn connect(
        url: &str,
        api_key: Option<String>,
        collection: &str,
        dimension: usize,
        timeout: Duration,
    ) -> Result<QdrantServer, StoreError> {
        let default = ClusterSettings::default();
        QdrantServer::connect_laid_out(url, api_key, collection, dimension, timeout, default).await
    }

    /// [`QdrantServer::connect`], creating the collection laid out as `cluster`
    /// says and comparing an existing one with it ([`QdrantServer::differences`]).
    pub async fn connect_laid_out(
        url: &str,
        api_key: Option<String>,
        collection: &str,
        dimension: usize,
        timeout: Duration,
        cluster: ClusterSettings,
    ) -> Result<QdrantServer, StoreError> {
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .timeout(timeout)
            .connect_timeout(timeout)
            // The check runs a blocking health check on a thread of its own and
            // prints to stdout; the health check below says more.
            .skip_compatibility_check()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("Qdrant at {url}: {}", describe(&e))))?;
        let health = client.health_check().await.map_err(|e| {
            StoreError::Unavailable(format!("cannot reach Qdrant at {url}: {}", describe(&e)))
        })?;
        let mut store = QdrantServer {
            client,
            collection: collection.to_owned(),
            generations_collection: generations_collection(collection),
            dimension,
            generations: Mutex::new(HashMap::new()),
            embedder: None,
            superseded_by: Mutex::new(None),
            stale: Mutex::new(HashMap::new()),
            cluster,
            differences: Vec::new(),
            version: health.version,
        };
        store.differences = store.prepare_chunks().await?;
        store.prepare_generations().await?;
        Ok(store)
    }

    /// Where the existing collection is laid out otherwise than configured.
    pub fn differences(&self) -> &[Difference] {
        &self.differences
    }

    /// The server's release when it is not one this backend is tested with
    /// ([`TESTED_RELEASES`]): it may lack what the backend asks of it.
    pub fn untested_version(&self) -> Option<&str> {
        (!tested_release(&self.version)).then_some(self.version.as_str())
    }

    /// The collection this store writes to.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// Checks the collection's vectors were made by `embedder` (a model id): a new
    /// collection records it, and one another model filled is refused, naming both
    /// (two models' vectors of one width are not comparable, and nothing else would
    /// say so), or, with [`Switch::Adopt`] (what `ragway reindex` does), taken over
    /// with every tenant stale, searched by keywords alone until embedded again.
    pub async fn for_embedder(
        mut self,
        embedder: &str,
        switch: Switch,
    ) -> Result<QdrantServer, StoreError> {
        let info = self.collection_info(&self.collection).await?;
        let empty = self.count_matching(Filter::default()).await? == 0;
        let verdict = embedder::verdict(
            &self.collection,
            recorded_model(&info),
            empty,
            embedder,
            switch,
        )?;
        if let Verdict::Record { stale } = verdict {
            if let Some(from) = &stale {
                let marked = self.mark_every_tenant_stale().await?;
                tracing::warn!(
                    from = %from,
                    to = embedder,
                    stale = marked,
                    collection = %self.collection,
                    "the Qdrant collection now takes the new embedder's vectors; its tenants are \
                     searched by keywords alone until embedded again"
                );
            }
            self.client
                .update_collection(
                    UpdateCollectionBuilder::new(&self.collection)
                        .metadata(embedder::record(embedder)),
                )
                .await
                .map_err(unavailable(&format!(
                    "cannot record the embedder of collection `{}`",
                    self.collection
                )))?;
        }
        self.embedder = Some(embedder.to_owned());
        Ok(self)
    }

    /// Marks every tenant with a generation stale; returns how many there are.
    async fn mark_every_tenant_stale(&self) -> Result<usize, StoreError> {
        let tenants = self.tenants_marked(Filter::default()).await?;
        let points = tenants
            .iter()
            .map(|tenant| {
                Ok(PointStruct::new(
                    stale_point_id(tenant).to_string(),
                    vec![1.0_f32],
                    stale_payload(tenant)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.upsert(&self.generations_collection, points).await?;
        self.stale_cache().clear();
        Ok(tenants.len())
    }

    /// The tenants named by the generations collection's points `filter` matches.
    async fn tenants_marked(
        &self,
        filter: Filter,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let payloads = self
            .scroll_payloads(
                &self.generations_collection,
                filter,
                Some(vec!["tenant".to_owned()]),
            )
            .await?;
        Ok(payloads.into_iter().filter_map(payload_tenant).collect())
    }

    /// The model the collection records, when it is no longer this process's.
    fn superseded(&self) -> Option<String> {
        guard(&self.superseded_by).clone()
    }

    /// Creates the chunks' collection if missing, checks its vectors and creates
    /// the payload indexes still missing; returns where its layout differs from
    /// the configured one.
    async fn prepare_chunks(&self) -> Result<Vec<Difference>, StoreError> {
        let name = &self.collection;
        let mut vectors = VectorsConfigBuilder::default();
        vectors.add_named_vector_params(
            DENSE,
            VectorParamsBuilder::new(self.dimension as u64, Distance::Cosine),
        );
        let mut sparse = SparseVectorsConfigBuilder::default();
        sparse.add_named_vector_params(
            KEYWORDS,
            SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
        );
        let create = CreateCollectionBuilder::new(name)
            .vectors_config(vectors)
            .sparse_vectors_config(sparse)
            .hnsw_config(HnswConfigDiffBuilder::default().payload_m(PAYLOAD_M).m(0));
        self.ensure_collection(name, self.cluster.apply(create))
            .await?;
        let info = self.collection_info(name).await?;
        check_schema(&info, name, self.dimension)?;
        let differences = info
            .config
            .as_ref()
            .and_then(|c| c.params.as_ref())
            .map(|params| self.cluster.differences(params))
            .unwrap_or_default();
        for (field, field_type, params) in payload_indexes() {
            if info.payload_schema.contains_key(field) {
                continue;
            }
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(name, field, field_type)
                        .field_index_params(params)
                        .wait(true),
                )
                .await
                .map_err(unavailable(&format!(
                    "cannot index `{field}` in collection `{name}`"
                )))?;
        }
        Ok(differences)
    }

    /// Creates the generations' collection if missing: one point per tenant, with
    /// a constant one-dimensional vector (Qdrant points need one) and the payload
    /// `{tenant, generation}`.
    async fn prepare_generations(&self) -> Result<(), StoreError> {
        let name = &self.generations_collection;
        let create = CreateCollectionBuilder::new(name)
            .vectors_config(VectorParamsBuilder::new(1, Distance::Dot));
        // As safely kept as the chunks, in one shard: it holds a point per tenant.
        let layout = ClusterSettings {
            shard_number: None,
            ..self.cluster
        };
        self.ensure_collection(name, layout.apply(create)).await
    }

    /// Creates a collection unless it exists. Another replica may create it at
    /// the same time: a failed create is fine if the collection exists afterwards.
    async fn ensure_collection(
        &self,
        name: &str,
        create: CreateCollectionBuilder,
    ) -> Result<(), StoreError> {
        let exists = self
            .client
            .collection_exists(name)
            .await
            .map_err(unavailable(&format!("cannot look up collection `{name}`")))?;
        if exists {
            return Ok(());
        }
        match self.client.create_collection(create).await {
            Ok(_) => {
                tracing::info!(collection = name, "Qdrant collection created");
                Ok(())
            }
            Err(error) => match self.client.collection_exists(name).await {
                Ok(true) => Ok(()),
                _ => Err(unavailable(&format!("cannot create collection `{name}`"))(
                    error,
                )),
            },
        }
    }

    async fn collection_info(&self, name: &str) -> Result<CollectionInfo, StoreError> {
        self.client
            .collection_info(name)
            .await
            .map_err(unavailable(&format!("cannot read collection `{name}`")))?
            .result
            .ok_or_else(|| {
                StoreError::Unavailable(format!("Qdrant described no collection `{name}`"))
            })
    }

    /// Upserts points, `UPSERT_BATCH` at a time, each batch applied before the call
    /// returns.
    async fn upsert(&self, collection: &str, points: Vec<PointStruct>) -> Result<(), StoreError> {
        let mut points = points.into_iter().peekable();
        while points.peek().is_some() {
            let batch: Vec<PointStruct> = points.by_ref().take(UPSERT_BATCH).collect();
            self.client
                .upsert_points(UpsertPointsBuilder::new(collection, batch).wait(true))
                .await
                .map_err(failed("write"))?;
        }
        Ok(())
    }

    async fn delete_matching(&self, filter: Filter) -> Result<(), StoreError> {
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(filter)
                    .wait(true),
            )
            .await
            .map_err(failed("delete"))?;
        Ok(())
    }

    async fn count_matching(&self, filter: Filter) -> Result<u64, StoreError> {
        let response = self
            .client
            .count(
                CountPointsBuilder::new(&self.collection)
                    .filter(filter)
                    .exact(true),
            )
            .await
            .map_err(failed("count"))?;
        Ok(response.result.map_or(0, |r| r.count))
    }

    /// The descriptions of the documents whose first chunks `filter` matches, in
    /// the order Qdrant returns them (by point id), reading every page.
    async fn scroll_documents(&self, filter: Filter) -> Result<Vec<DocumentInfo>, StoreError> {
        let fields: Vec<String> = DOCUMENT_FIELDS.iter().map(|f| (*f).to_owned()).collect();
        let payloads = self
            .scroll_payloads(&self.collection, filter, Some(fields))
            .await?;
        Ok(payloads.into_iter().filter_map(document_info).collect())
    }

    /// The payloads of the points of `collection` that `filter` matches (only
    /// `fields`, when named), reading every page.
    async fn scroll_payloads(
        &self,
        collection: &str,
        filter: Filter,
        fields: Option<Vec<String>>,
    ) -> Result<Vec<HashMap<String, qdrant_client::qdrant::Value>>, StoreError> {
        let mut payloads = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut request = ScrollPointsBuilder::new(collection)
                .filter(filter.clone())
                .limit(SCROLL_PAGE)
                .with_vectors(false);
            request = match &fields {
                Some(fields) => request.with_payload(PayloadIncludeSelector::new(fields.clone())),
                None => request.with_payload(true),
            };
            if let Some(offset) = offset.take() {
                request = request.offset(offset);
            }
            let page = self.client.scroll(request).await.map_err(failed("read"))?;
            payloads.extend(page.result.into_iter().map(|p| p.payload));
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(payloads),
            }
        }
    }

    /// The tenant's generation as stored on the server (0 if never bumped).
    async fn read_generation(&self, tenant: &str) -> Result<u64, StoreError> {
        let point = self
            .tenant_point(generation_point_id(tenant), "read the corpus generation")
            .await?;
        match point {
            None => Ok(0),
            Some(point) => parse_generation(point.payload).ok_or_else(|| {
                StoreError::Failed(format!(
                    "the corpus generation of tenant {tenant:?} in `{}` is damaged",
                    self.generations_collection
                ))
            }),
        }
    }

    /// A point of the generations collection, with its payload, if it exists.
    async fn tenant_point(
        &self,
        id: Uuid,
        what: &'static str,
    ) -> Result<Option<RetrievedPoint>, StoreError> {
        let response = self
            .client
            .get_points(
                GetPointsBuilder::new(
                    &self.generations_collection,
                    vec![PointId::from(id.to_string())],
                )
                .with_payload(true)
                .with_vectors(false),
            )
            .await
            .map_err(failed(what))?;
        Ok(response.result.into_iter().next())
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        guard(&self.generations)
    }

    fn stale_cache(&self) -> MutexGuard<'_, HashMap<String, (bool, Instant)>> {
        guard(&self.stale)
    }
}

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl VectorStore for QdrantServer {
    async fn replace(
        &self,
        tenant: &str,
        doc_id: &str,
        chunks: Vec<StoredChunk>,
    ) -> Result<(), StoreError> {
        check_chunks(tenant, doc_id, self.dimension, &chunks)?;
        if let (Some(recorded), Some(own)) = (self.superseded(), &self.embedder) {
            return Err(StoreError::Failed(format!(
                "{} (it was switched after this process started: restart it with the \
                 configured embedder)",
                embedder::refusal(&self.collection, &recorded, own)
            )));
        }
        let ids: Vec<String> = chunks.iter().map(|c| c.id.to_string()).collect();
        // Ids derive from the tenant too, so this never happens by chance; but an
        // upsert would take another tenant's point over, so it is checked here.
        if !ids.is_empty()
            && self
                .count_matching(foreign_filter(tenant, ids.clone()))
                .await?
                > 0
        {
            return Err(StoreError::Failed(
                "a chunk id is taken by another tenant's chunk".to_owned(),
            ));
        }
        let points = chunks
            .into_iter()
            .map(point)
            .collect::<Result<Vec<_>, _>>()?;
        // The new version first, so a search never finds the document missing...
        self.upsert(&self.collection, points).await?;
        // ...then whatever of the document is not among its new chunks.
        self.delete_matching(stale_filter(tenant, doc_id, ids))
            .await
    }

    async fn delete(&self, tenant: &str, doc_id: &str) -> Result<u64, StoreError> {
        let filter = document_filter(tenant, doc_id);
        let count = self.count_matching(filter.clone()).await?;
        if count > 0 {
            self.delete_matching(filter).await?;
        }
        Ok(count)
    }

    async fn document(
        &self,
        tenant: &str,
        doc_id: &str,
    ) -> Result<Option<DocumentInfo>, StoreError> {
        let mut filter = document_filter(tenant, doc_id);
        filter.must.push(first_chunk());
        Ok(self.scroll_documents(filter).await?.into_iter().next())
    }

    async fn document_ids(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let payloads = self
            .scroll_payloads(
                &self.collection,
                tenant_filter(tenant),
                Some(vec!["doc_id".to_owned()]),
            )
            .await?;
        let ids: std::collections::BTreeSet<String> = payloads
            .into_iter()
            .filter_map(|mut p| match p.remove("doc_id")?.kind? {
                qdrant_client::qdrant::value::Kind::StringValue(id) => Some(id),
                _ => None,
            })
            .collect();
        Ok(ids.into_iter().collect())
    }

    async fn passages(&self, tenant: &str, doc_id: &str) -> Result<Vec<ChunkPayload>, StoreError> {
        let payloads = self
            .scroll_payloads(&self.collection, document_filter(tenant, doc_id), None)
            .await?;
        // A chunk that does not parse fails the read: re-embedding what could be
        // read would drop it.
        let mut passages = payloads
            .into_iter()
            .map(|p| chunk_payload(p).map_err(|e| StoreError::Failed(format!("a chunk: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        passages.sort_by_key(|p| p.chunk_index);
        Ok(passages)
    }

    async fn documents(&self, tenant: &str, limit: usize) -> Result<Vec<DocumentInfo>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = tenant_filter(tenant);
        filter.must.push(first_chunk());
        // Points come in id order, not the documents' order: read all, then sort.
        // (Qdrant orders scrolls only by numeric or datetime fields.)
        let mut documents = self.scroll_documents(filter).await?;
        documents.sort_by(|a, b| a.id.cmp(&b.id));
        documents.dedup_by(|a, b| a.id == b.id);
        documents.truncate(limit);
        Ok(documents)
    }

    async fn search(&self, query: Query<'_>) -> Result<Vec<Hit>, StoreError> {
        let (using, vector) = match query.vector {
            QueryVector::Dense(dense) => (DENSE, VectorInput::new_dense(dense.to_vec())),
            // No terms: nothing can match, and Qdrant would refuse an empty vector.
            QueryVector::Keywords(sparse) if sparse.is_empty() => return Ok(Vec::new()),
            QueryVector::Keywords(sparse) => (
                KEYWORDS,
                VectorInput::new_sparse(sparse.indices.clone(), sparse.values.clone()),
            ),
        };
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let response = self
            .client
            .query(
                QueryPointsBuilder::new(&self.collection)
                    .query(QdrantQuery::new_nearest(vector))
                    .using(using)
                    .filter(search_filter(query.tenant, query.collection))
                    .limit(query.limit as u64)
                    .with_payload(true)
                    .with_vectors(false),
            )
            .await
            .map_err(failed("search"))?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|point| {
                let id = point_uuid(point.id.as_ref())?;
                Hit::parsed(id, point.score, chunk_payload(point.payload))
            })
            .collect())
    }

    async fn count(&self, tenant: &str, doc_id: Option<&str>) -> Result<u64, StoreError> {
        let filter = match doc_id {
            Some(doc_id) => document_filter(tenant, doc_id),
            None => tenant_filter(tenant),
        };
        self.count_matching(filter).await
    }

    /// Read from the server at most once per [`GENERATION_TTL`] per tenant.
    async fn generation(&self, tenant: &str) -> Result<u64, StoreError> {
        if let Some(&(generation, at)) = self.cache().get(tenant)
            && at.elapsed() < GENERATION_TTL
        {
            return Ok(generation);
        }
        let generation = self.read_generation(tenant).await?;
        self.cache()
            .insert(tenant.to_owned(), (generation, Instant::now()));
        Ok(generation)
    }

    /// Sets the generation to `max(old + 1, now in Unix microseconds)`, so values
    /// are not consecutive. Replicas share the value but not a lock: two bumping at
    /// once both read `old` and the last write wins. With plain `old + 1` both
    /// would write the same value, and a replica that read a stale `old` (a lagging
    /// replica of a Qdrant cluster) would write a value already in use, so answers
    /// cached under it would outlive its document change. A clock reading differs
    /// from every value before it; `+ 1` keeps the value moving even if a clock
    /// stands still or goes back.
    async fn bump_generation(&self, tenant: &str) -> Result<u64, StoreError> {
        let old = self.read_generation(tenant).await?;
        let generation = next_generation(old, unix_micros());
        let payload = Payload::try_from(serde_json::json!({
            "tenant": tenant,
            "generation": generation,
        }))
        .map_err(|e| StoreError::Failed(format!("generation payload: {e}")))?;
        let point = PointStruct::new(
            generation_point_id(tenant).to_string(),
            vec![1.0_f32],
            payload,
        );
        self.client
            .upsert_points(
                UpsertPointsBuilder::new(&self.generations_collection, vec![point]).wait(true),
            )
            .await
            .map_err(failed("write the corpus generation"))?;
        self.cache()
            .insert(tenant.to_owned(), (generation, Instant::now()));
        Ok(generation)
    }

    /// Read from the server at most once per [`GENERATION_TTL`] per tenant. Every
    /// tenant is stale to a process whose embedder the collection no longer records.
    async fn is_stale(&self, tenant: &str) -> Result<bool, StoreError> {
        if self.superseded().is_some() {
            return Ok(true);
        }
        if let Some(&(stale, at)) = self.stale_cache().get(tenant)
            && at.elapsed() < GENERATION_TTL
        {
            return Ok(stale);
        }
        let stale = self
            .tenant_point(stale_point_id(tenant), "read the stale mark")
            .await?
            .is_some();
        self.stale_cache()
            .insert(tenant.to_owned(), (stale, Instant::now()));
        Ok(stale)
    }

    async fn stale_tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .tenants_marked(stale_marks())
            .await?
            .into_iter()
            .collect())
    }

    async fn mark_current(&self, tenant: &str) -> Result<(), StoreError> {
        let id = PointId::from(stale_point_id(tenant).to_string());
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.generations_collection)
                    .points(PointsIdsList { ids: vec![id] })
                    .wait(true),
            )
            .await
            .map_err(failed("clear the stale mark"))?;
        self.stale_cache()
            .insert(tenant.to_owned(), (false, Instant::now()));
        Ok(())
    }

    /// Checks the collection still records this process's embedder: another process
    /// (`ragway reindex` with another model) may have switched it since.
    async fn maintain(&self) -> Result<(), StoreError> {
        let Some(own) = &self.embedder else {
            return Ok(());
        };
        let info = self.collection_info(&self.collection).await?;
        let recorded = recorded_model(&info);
        let mut superseded = guard(&self.superseded_by);
        match recorded {
            Some(recorded) if recorded != *own => {
                if superseded.as_deref() != Some(recorded.as_str()) {
                    tracing::error!(
                        collection = %self.collection,
                        recorded = %recorded,
                        configured = %own,
                        "the Qdrant collection was switched to another embedder: this process \
                         searches by keywords alone and refuses writes until restarted with it"
                    );
                }
                *superseded = Some(recorded);
            }
            _ => *superseded = None,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use qdrant_client::qdrant::condition::ConditionOneOf;
    use qdrant_client::qdrant::{
        CollectionConfig, CollectionParams, SparseVectorConfig, SparseVectorParams, VectorParams,
        VectorParamsMap, VectorsConfig,
    };

    use super::*;

    #[test]
    fn releases_outside_the_tested_range_are_named() {
        for tested in ["1.16.3", "v1.16.0", "1.18.2", "1.20.0"] {
            assert!(tested_release(tested), "{tested}");
        }
        for untested in ["1.15.5", "1.21.0", "2.0.0", "dev", ""] {
            assert!(!tested_release(untested), "{untested}");
        }
    }

    fn payload() -> ChunkPayload {
        ChunkPayload {
            tenant: "acme corp".into(),
            collection: "handbook".into(),
            doc_id: "guide.md".into(),
            chunk_index: 3,
            chunks: 7,
            text: "退货政策：30 天内。".into(),
            title: "Guide".into(),
            headings: vec!["Returns".into(), "Refunds".into()],
            source: "https://example.com/guide.md".into(),
            ingested_at: 1_750_000_000,
            hash: "ab".repeat(32),
            doc_hash: "cd".repeat(32),
        }
    }

    /// The field and keyword of each `must` condition that matches a keyword.
    fn keywords(conditions: &[Condition]) -> Vec<(String, String)> {
        conditions
            .iter()
            .filter_map(|c| match c.condition_one_of.as_ref()? {
                ConditionOneOf::Field(field) => {
                    match field.r#match.as_ref()?.match_value.as_ref()? {
                        MatchValue::Keyword(value) => Some((field.key.clone(), value.clone())),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn filters_always_match_the_tenant_as_a_keyword() {
        // A tenant with a space stays an exact match, not a full-text one.
        let filter = search_filter("acme corp", None);
        assert_eq!(
            keywords(&filter.must),
            [("tenant".to_owned(), "acme corp".to_owned())]
        );
        assert!(filter.should.is_empty() && filter.must_not.is_empty());

        let filter = search_filter("acme", Some("hand book"));
        assert_eq!(
            keywords(&filter.must),
            [
                ("tenant".to_owned(), "acme".to_owned()),
                ("collection".to_owned(), "hand book".to_owned())
            ]
        );

        let filter = document_filter("acme", "guide.md");
        assert_eq!(
            keywords(&filter.must),
            [
                ("tenant".to_owned(), "acme".to_owned()),
                ("doc_id".to_owned(), "guide.md".to_owned())
            ]
        );
    }

    #[test]
    fn the_first_chunk_condition_matches_an_integer() {
        let Some(ConditionOneOf::Field(field)) = first_chunk().condition_one_of else {
            panic!("not a field condition");
        };
        assert_eq!(field.key, "chunk_index");
        assert_eq!(
            field.r#match.and_then(|m| m.match_value),
            Some(MatchValue::Integer(0))
        );
    }

    #[test]
    fn stale_filter_keeps_the_new_chunks() {
        let keep = vec![Uuid::new_v4().to_string(), Uuid::new_v4().to_string()];
        let filter = stale_filter("acme", "guide.md", keep.clone());
        assert_eq!(keywords(&filter.must).len(), 2);
        let [not] = filter.must_not.as_slice() else {
            panic!("expected one must_not condition: {:?}", filter.must_not);
        };
        let Some(ConditionOneOf::HasId(has_id)) = &not.condition_one_of else {
            panic!("not a has_id condition");
        };
        let ids: Vec<Uuid> = has_id
            .has_id
            .iter()
            .filter_map(|id| point_uuid(Some(id)))
            .collect();
        assert_eq!(
            ids,
            keep.iter()
                .map(|k| Uuid::parse_str(k).unwrap())
                .collect::<Vec<_>>()
        );

        // No new chunks: the whole document goes.
        let filter = stale_filter("acme", "guide.md", Vec::new());
        assert!(filter.must_not.is_empty());
        assert_eq!(keywords(&filter.must).len(), 2);
    }

    #[test]
    fn payload_survives_qdrant_values() {
        let original = payload();
        let stored: HashMap<String, Value> = to_payload(&original).unwrap().into();
        assert_eq!(stored.len(), 12);
        assert_eq!(chunk_payload(stored.clone()).unwrap(), original);

        let info = document_info(stored).unwrap();
        assert_eq!(info, DocumentInfo::from(original));
    }

    #[test]
    fn a_payload_without_the_text_still_describes_the_document() {
        let mut stored: HashMap<String, Value> = to_payload(&payload()).unwrap().into();
        stored.retain(|k, _| DOCUMENT_FIELDS.contains(&k.as_str()));
        let info = document_info(stored.clone()).unwrap();
        assert_eq!(info.id, "guide.md");
        assert_eq!(info.hash, "cd".repeat(32));
        assert!(chunk_payload(stored).is_err());
    }

    #[test]
    fn points_carry_both_vectors_only_when_there_are_terms() {
        let mut chunk = StoredChunk {
            id: Uuid::new_v4(),
            dense: vec![0.5; 4],
            keywords: super::super::SparseVector {
                indices: vec![1, 7],
                values: vec![0.5, 1.5],
            },
            payload: payload(),
        };
        let named = |p: PointStruct| {
            let Some(qdrant_client::qdrant::vectors::VectorsOptions::Vectors(named)) =
                p.vectors.and_then(|v| v.vectors_options)
            else {
                panic!("not named vectors");
            };
            let mut names: Vec<String> = named.vectors.into_keys().collect();
            names.sort();
            names
        };
        let with_terms = point(chunk.clone()).unwrap();
        assert_eq!(
            point_uuid(with_terms.id.as_ref()),
            Some(chunk.id),
            "the id is the chunk's UUID"
        );
        assert_eq!(named(with_terms), [DENSE, KEYWORDS]);

        chunk.keywords = Default::default();
        assert_eq!(named(point(chunk).unwrap()), [DENSE]);
    }

    #[test]
    fn generation_point_ids_are_stable_valid_uuids() {
        let id = generation_point_id("acme");
        assert_eq!(id, generation_point_id("acme"));
        assert_ne!(id, generation_point_id("acme2"));
        assert_ne!(generation_point_id(""), generation_point_id("\0"));
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        // Qdrant takes it as a string; it must read back as the same UUID.
        assert_eq!(Uuid::parse_str(&id.to_string()).unwrap(), id);
        // Pinned: a changed derivation would orphan every stored generation.
        assert_eq!(id.to_string(), "1915f560-ec63-82c2-94ae-9b8082b28d90");
    }

    #[test]
    fn generations_round_trip_and_always_move() {
        let payload: HashMap<String, Value> = Payload::try_from(
            serde_json::json!({"tenant": "acme", "generation": 1_750_000_000_123_456_u64}),
        )
        .unwrap()
        .into();
        assert_eq!(parse_generation(payload), Some(1_750_000_000_123_456));
        assert_eq!(parse_generation(HashMap::new()), None);

        assert_eq!(next_generation(0, 1_000), 1_000);
        // A clock behind the stored value still moves it forward.
        assert_eq!(next_generation(5_000, 1_000), 5_001);
        assert_eq!(next_generation(u64::MAX, 1), u64::MAX);
        assert!(unix_micros() > 1_600_000_000_000_000);
    }

    fn info(dense: Option<u64>, keywords: bool) -> CollectionInfo {
        let map = dense
            .map(|size| {
                HashMap::from([(
                    DENSE.to_owned(),
                    VectorParams {
                        size,
                        distance: Distance::Cosine.into(),
                        ..Default::default()
                    },
                )])
            })
            .unwrap_or_default();
        let sparse = if keywords {
            HashMap::from([(KEYWORDS.to_owned(), SparseVectorParams::default())])
        } else {
            HashMap::new()
        };
        CollectionInfo {
            config: Some(CollectionConfig {
                params: Some(CollectionParams {
                    vectors_config: Some(VectorsConfig {
                        config: Some(vectors_config::Config::ParamsMap(VectorParamsMap { map })),
                    }),
                    sparse_vectors_config: Some(SparseVectorConfig { map: sparse }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_existing_collection_must_match_the_model() {
        assert!(check_schema(&info(Some(384), true), "docs", 384).is_ok());

        let Err(StoreError::Unavailable(message)) =
            check_schema(&info(Some(768), true), "docs", 384)
        else {
            panic!("a different size must fail");
        };
        assert!(message.contains("`docs`"), "{message}");
        assert!(message.contains("768-dimensional"), "{message}");
        assert!(message.contains("384-dimensional"), "{message}");

        assert!(check_schema(&info(None, true), "docs", 384).is_err());
        assert!(check_schema(&info(Some(384), false), "docs", 384).is_err());
        assert!(check_schema(&CollectionInfo::default(), "docs", 384).is_err());
    }

    #[test]
    fn the_tenant_index_is_a_tenant_index() {
        let indexes = payload_indexes();
        let names: Vec<&str> = indexes.iter().map(|(name, ..)| *name).collect();
        assert_eq!(names, ["tenant", "collection", "doc_id", "chunk_index"]);
        let tenant_flags: Vec<Option<bool>> = indexes
            .iter()
            .filter_map(|(_, _, params)| match params {
                payload_index_params::IndexParams::KeywordIndexParams(k) => Some(k.is_tenant),
                _ => None,
            })
            .collect();
        assert_eq!(tenant_flags, [Some(true), Some(false), Some(false)]);
    }

    #[test]
    fn unreachable_servers_are_unavailable() {
        assert!(unavailable_status(
            grpc_code::UNAVAILABLE,
            "connection refused"
        ));
        assert!(unavailable_status(grpc_code::CANCELLED, "Timeout expired"));
        assert!(unavailable_status(grpc_code::DEADLINE_EXCEEDED, ""));
        assert!(unavailable_status(
            grpc_code::RESOURCE_EXHAUSTED,
            "rate limited"
        ));
        assert!(unavailable_status(
            grpc_code::INTERNAL,
            "Failed to connect to http://x:6334/: ..."
        ));
        assert!(!unavailable_status(
            grpc_code::INTERNAL,
            "Service internal error"
        ));
        // INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED: refused, not unreachable.
        assert!(!unavailable_status(3, "Wrong input: bad vector"));
        assert!(!unavailable_status(
            5,
            "Not found: Collection `x` doesn't exist!"
        ));
        assert!(!unavailable_status(16, "Invalid api-key"));
        assert!(matches!(
            store_error("write", &QdrantError::ConversionError("x".into())),
            StoreError::Failed(m) if m.contains("write")
        ));
    }

    #[tokio::test]
    async fn connecting_to_nothing_is_unavailable() {
        // Nothing listens on port 1: the connection is refused at once.
        let result = QdrantServer::connect(
            "http://127.0.0.1:1",
            None,
            "ragway",
            4,
            Duration::from_secs(2),
        )
        .await;
        match result {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("http://127.0.0.1:1"), "{message}");
            }
            Err(other) => panic!("expected Unavailable, got {other}"),
            Ok(_) => panic!("connected to nothing"),
        }
        let result =
            QdrantServer::connect("not a url", None, "ragway", 4, Duration::from_secs(2)).await;
        assert!(matches!(result, Err(StoreError::Unavailable(_))));
    }
}
