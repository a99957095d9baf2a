//! Qdrant Edge: the vector store in process, on local disk, so one machine needs
//! no Qdrant server.
//!
//! The data directory holds the shard (`shard/`), the tenants' corpus generations
//! (`generations.json`) and `ragway.lock`. What shaped this backend:
//!
//! - every [`EdgeShard`] call blocks (locks, its rayon pool, disk), so each one runs
//!   in `spawn_blocking`;
//! - nothing runs in the background: writes reach the WAL, but segments are
//!   persisted only by `flush()`, and the HNSW index is built only by `optimize()`,
//!   which takes about a minute for 50k vectors. [`VectorStore::maintain`] flushes
//!   when anything was written and optimizes only after a burst of writes has been
//!   quiet for [`OPTIMIZE_QUIET`], never under steady writes;
//! - one process per directory: the shard's WAL is `flock`ed, and so, before the
//!   shard is touched, is `ragway.lock`, so a second process gets a clear error
//!   instead of loading segments another process is writing.

use std::collections::BTreeMap;
use std::fs::{self, File, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qdrant_edge::{
    Condition, CountRequestBuilder, CreateIndex, Distance, EdgeConfigBuilder, EdgeShard,
    EdgeSparseVectorParamsBuilder, EdgeVectorParamsBuilder, FieldCondition, FieldIndexOperations,
    Filter, HasIdCondition, IntegerIndexParamsBuilder, JsonPath, KeywordIndexParamsBuilder, Match,
    Modifier, NamedQuery, OperationError, Payload, PayloadFieldSchema, PayloadSchemaParams,
    PointId, PointInsertOperations, PointOperations, PointStruct, PointStructPersisted, QueryEnum,
    QueryRequestBuilder, ScoringQuery, ScrollRequestBuilder, UpdateOperation, Vector,
    VectorInternal, Vectors, WithPayloadInterface, WithVector,
};

use super::{
    ChunkPayload, DENSE, DOCUMENT_FIELDS, DocumentInfo, FIRST_EMBEDDER, Hit, KEYWORDS, Query,
    QueryVector, SparseVector, StoreError, StoredChunk, Switch, VectorStore, check_chunks,
};

/// How long writes must have stopped before [`VectorStore::maintain`] rebuilds the
/// index: an ingest sends documents one by one, and optimizing between two of them
/// would redo the work for each.
pub const OPTIMIZE_QUIET: Duration = Duration::from_secs(10);

/// The shard's directory inside the data directory.
const SHARD_DIR: &str = "shard";
const GENERATIONS_FILE: &str = "generations.json";
/// Which embedder made the store's vectors: `{"model": …, "dimension": …}`.
const EMBEDDER_FILE: &str = "embedder.json";
const LOCK_FILE: &str = "ragway.lock";
/// The file the shard keeps its config in (not exported by the crate).
const SHARD_CONFIG_FILE: &str = "edge_config.json";
/// Points read per scroll call when listing documents.
const SCROLL_PAGE: usize = 256;

/// The embedded store. Cheap to share: everything is behind one `Arc`.
pub struct EdgeStore {
    inner: Arc<Inner>,
}

struct Inner {
    shard: EdgeShard,
    dimension: usize,
    dir: PathBuf,
    /// Tenant → generation, as in `generations.json`.
    generations: Mutex<BTreeMap<String, u64>>,
    /// Written since the last flush.
    unflushed: AtomicBool,
    /// Written since the last optimize.
    unoptimized: AtomicBool,
    last_write: Mutex<Instant>,
    /// One maintenance run at a time (the periodic task and a shutdown's `finish`).
    maintenance: Mutex<()>,
    quiet: Duration,
    /// Which embedder made the vectors, and which tenants' are stale (`None` for a
    /// store opened without an embedder's name).
    record: Mutex<Option<Record>>,
    /// Holds the directory's lock; declared last so it outlives the shard.
    _lock: File,
}

impl EdgeStore {
    /// Opens the store in `dir`, creating it if absent, for dense vectors of
    /// `dimension`. Fails if another process has it open, or if it holds vectors of
    /// another dimension (a different embedding model).
    pub fn open(dir: &Path, dimension: usize) -> Result<EdgeStore, StoreError> {
        EdgeStore::open_with(dir, dimension, OPTIMIZE_QUIET)
    }

    /// [`EdgeStore::open`] for vectors made by `embedder` (a model id): a new store
    /// records it, and a store another model filled is refused, naming both (two
    /// models' vectors of one width are not comparable, and nothing else would say
    /// so).
    pub fn open_for(dir: &Path, dimension: usize, embedder: &str) -> Result<EdgeStore, StoreError> {
        EdgeStore::open_inner(
            dir,
            dimension,
            OPTIMIZE_QUIET,
            Some((embedder, Switch::Refuse)),
        )
    }

    /// [`EdgeStore::open_for`], taking a store another model filled over for
    /// `embedder` (what `ragway reindex` does): every tenant in it is recorded as
    /// stale, searched by keywords alone until its chunks are embedded again.
    pub fn switch_to(
        dir: &Path,
        dimension: usize,
        embedder: &str,
    ) -> Result<EdgeStore, StoreError> {
        EdgeStore::open_inner(
            dir,
            dimension,
            OPTIMIZE_QUIET,
            Some((embedder, Switch::Adopt)),
        )
    }

    /// [`EdgeStore::open`] with the quiet time before optimizing (tests use a short one).
    pub fn open_with(
        dir: &Path,
        dimension: usize,
        quiet: Duration,
    ) -> Result<EdgeStore, StoreError> {
        EdgeStore::open_inner(dir, dimension, quiet, None)
    }

    fn open_inner(
        dir: &Path,
        dimension: usize,
        quiet: Duration,
        embedder: Option<(&str, Switch)>,
    ) -> Result<EdgeStore, StoreError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("{what} {}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(|e| unavailable("cannot create", &e))?;
        let lock = lock(dir)?;
        let generations = read_generations(&dir.join(GENERATIONS_FILE))?;
        let shard_dir = dir.join(SHARD_DIR);
        // The shard writes its config first when it is created.
        let existing = shard_dir.join(SHARD_CONFIG_FILE).exists();
        let shard = if existing {
            let shard = EdgeShard::load(&shard_dir, None)
                .map_err(|e| unavailable("cannot load the vector store in", &e))?;
            check_config(&shard, dir, dimension)?;
            shard
        } else {
            let config = EdgeConfigBuilder::new()
                .vector(
                    DENSE,
                    EdgeVectorParamsBuilder::new(dimension, Distance::Cosine).build(),
                )
                .sparse_vector(
                    KEYWORDS,
                    EdgeSparseVectorParamsBuilder::new()
                        .modifier(Modifier::Idf)
                        .build(),
                )
                .build();
            // The record first: a shard without one would count as MiniLM's.
            if let Some((embedder, _)) = embedder {
                let record = Record::new(embedder, dimension);
                write_record(dir, &record)
                    .map_err(|e| unavailable("cannot record the embedder in", &e))?;
            }
            EdgeShard::new(&shard_dir, config)
                .map_err(|e| unavailable("cannot create the vector store in", &e))?
        };
        let record = match embedder {
            Some((embedder, switch)) if existing => Some(check_record(
                dir,
                embedder,
                dimension,
                switch,
                generations.keys(),
            )?),
            Some((embedder, _)) => Some(Record::new(embedder, dimension)),
            None => None,
        };
        create_indexes(&shard).map_err(|e| unavailable("cannot index the vector store in", &e))?;
        Ok(EdgeStore {
            inner: Arc::new(Inner {
                shard,
                dimension,
                dir: dir.to_path_buf(),
                generations: Mutex::new(generations),
                unflushed: AtomicBool::new(false),
                // A process that ended before optimizing may have left work.
                unoptimized: AtomicBool::new(existing),
                last_write: Mutex::new(Instant::now()),
                maintenance: Mutex::new(()),
                quiet,
                record: Mutex::new(record),
                _lock: lock,
            }),
        })
    }

    /// Makes every write durable now (blocking; for shutdown paths outside the
    /// runtime). [`VectorStore::finish`] also builds the indexes.
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    /// Runs `work` on the blocking pool.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| StoreError::Failed(format!("store task failed: {e}")))?
    }
}

/// Takes `ragway.lock` in `dir`, or says who holds it.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "the document store {} is in use by another ragway process (only one may \
             open it: stop the server before running `ragway ingest` into it, or give \
             each its own path)",
            dir.display()
        ))),
        Err(TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// `embedder.json`: the model that makes the store's vectors, and the tenants whose
/// vectors another model made (the store was switched, and they are not yet
/// embedded again).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Record {
    model: String,
    dimension: usize,
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    stale: std::collections::BTreeSet<String>,
}

impl Record {
    fn new(model: &str, dimension: usize) -> Record {
        Record {
            model: model.to_owned(),
            dimension,
            stale: Default::default(),
        }
    }
}

/// The store's record, checked against `embedder`: the model its `embedder.json`
/// names (the first embedder for a store without one) must be it, or, when
/// adopting, becomes it, with every tenant (`tenants`) stale.
fn check_record<'a>(
    dir: &Path,
    embedder: &str,
    dimension: usize,
    switch: Switch,
    tenants: impl Iterator<Item = &'a String>,
) -> Result<Record, StoreError> {
    let path = dir.join(EMBEDDER_FILE);
    let recorded = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Record>(&bytes)
            .map_err(|e| StoreError::Unavailable(format!("{} is damaged: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Record::new(FIRST_EMBEDDER, dimension)
        }
        Err(e) => {
            return Err(StoreError::Unavailable(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    if recorded.model == embedder {
        return Ok(recorded);
    }
    if switch == Switch::Refuse {
        return Err(StoreError::Unavailable(format!(
            "the document store {} holds vectors made by {}, but the configured \
             embedder is {embedder}: their vectors cannot be compared. Run `ragway \
             reindex` to embed the stored documents again with {embedder}, or configure \
             {} again",
            dir.display(),
            recorded.model,
            recorded.model,
        )));
    }
    let mut record = Record::new(embedder, dimension);
    record.stale = recorded.stale.into_iter().chain(tenants.cloned()).collect();
    write_record(dir, &record).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot record the embedder in {}: {e}",
            dir.display()
        ))
    })?;
    tracing::warn!(
        from = %recorded.model,
        to = embedder,
        stale = record.stale.len(),
        "the document store now takes the new embedder's vectors; its tenants are searched \
         by keywords alone until embedded again"
    );
    Ok(record)
}

/// Writes `embedder.json` whole or not at all: a temporary file, renamed.
fn write_record(dir: &Path, record: &Record) -> std::io::Result<()> {
    let temp = dir.join(format!("{EMBEDDER_FILE}.tmp"));
    let mut file = File::create(&temp)?;
    file.write_all(&serde_json::to_vec_pretty(record)?)?;
    file.sync_all()?;
    fs::rename(&temp, dir.join(EMBEDDER_FILE))
}

/// Checks that a loaded shard has this backend's vectors, at `dimension`.
fn check_config(shard: &EdgeShard, dir: &Path, dimension: usize) -> Result<(), StoreError> {
    let config = shard.config();
    let Some(dense) = config.vectors.get(DENSE) else {
        return Err(StoreError::Unavailable(format!(
            "{} holds no `{DENSE}` vectors: not a ragway document store",
            dir.display()
        )));
    };
    if dense.size != dimension {
        return Err(StoreError::Unavailable(format!(
            "the document store {} holds {}-dimensional vectors, but the embedding model \
             makes {dimension}-dimensional ones: use the model it was built with, or a new \
             store path (and ingest again)",
            dir.display(),
            dense.size
        )));
    }
    if !config.sparse_vectors.contains_key(KEYWORDS) {
        return Err(StoreError::Unavailable(format!(
            "{} holds no `{KEYWORDS}` vectors: not a ragway document store",
            dir.display()
        )));
    }
    Ok(())
}

/// Creates the payload indexes the filters use, those still missing.
fn create_indexes(shard: &EdgeShard) -> Result<(), OperationError> {
    let keyword = |tenant: bool| {
        PayloadSchemaParams::Keyword(KeywordIndexParamsBuilder::new().is_tenant(tenant).build())
    };
    let wanted = [
        ("tenant", keyword(true)),
        ("collection", keyword(false)),
        ("doc_id", keyword(false)),
        (
            "chunk_index",
            PayloadSchemaParams::Integer(IntegerIndexParamsBuilder::new().build()),
        ),
    ];
    let existing = shard.info()?.payload_schema;
    let mut created = false;
    for (field, params) in wanted {
        let field_name = key(field);
        if existing.contains_key(&field_name) {
            continue;
        }
        shard.update(UpdateOperation::FieldIndexOperation(
            FieldIndexOperations::CreateIndex(CreateIndex {
                field_name,
                field_schema: Some(PayloadFieldSchema::FieldParams(params)),
            }),
        ))?;
        created = true;
    }
    if created {
        shard.flush()?;
    }
    Ok(())
}

fn read_generations(path: &Path) -> Result<BTreeMap<String, u64>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            // Starting again from 0 could bring back cached answers of old documents.
            StoreError::Unavailable(format!("{} is damaged: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes `generations.json` whole or not at all: a temporary file, renamed.
fn write_generations(dir: &Path, generations: &BTreeMap<String, u64>) -> std::io::Result<()> {
    let path = dir.join(GENERATIONS_FILE);
    let temp = dir.join(format!("{GENERATIONS_FILE}.tmp"));
    let mut file = File::create(&temp)?;
    file.write_all(&serde_json::to_vec_pretty(generations)?)?;
    file.sync_all()?;
    fs::rename(&temp, &path)
}

impl Inner {
    fn mark_written(&self) {
        *guard(&self.last_write) = Instant::now();
        self.unflushed.store(true, Ordering::SeqCst);
        self.unoptimized.store(true, Ordering::SeqCst);
    }

    fn update(&self, operation: PointOperations) -> Result<(), StoreError> {
        let result = self
            .shard
            .update(UpdateOperation::PointOperation(operation));
        // Even a failed operation may have written part of its points.
        self.mark_written();
        result.map_err(failed("write"))
    }

    fn count(&self, filter: Filter) -> Result<u64, StoreError> {
        let request = CountRequestBuilder::new()
            .filter(filter)
            .exact(true)
            .build();
        let count = self.shard.count(request).map_err(failed("count"))?;
        Ok(count as u64)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.unflushed.store(false, Ordering::SeqCst);
        self.shard.flush().map_err(|e| {
            self.unflushed.store(true, Ordering::SeqCst);
            failed("flush")(e)
        })
    }

    /// Flushes if anything was written; optimizes after a burst of writes once it
    /// has been quiet (or at once when `eager`).
    fn maintain(&self, eager: bool) -> Result<(), StoreError> {
        let _one_at_a_time = guard(&self.maintenance);
        if self.unflushed.load(Ordering::SeqCst) {
            self.flush()?;
        }
        let quiet = guard(&self.last_write).elapsed() >= self.quiet;
        if (eager || quiet) && self.unoptimized.swap(false, Ordering::SeqCst) {
            let started = Instant::now();
            match self.shard.optimize() {
                Ok(changed) => tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    changed,
                    "document store optimized"
                ),
                Err(e) => {
                    self.unoptimized.store(true, Ordering::SeqCst);
                    return Err(failed("optimize")(e));
                }
            }
            self.flush()?;
        }
        Ok(())
    }

    /// Pages through the points `filter` matches (payload `fields` only, or all
    /// of it for none).
    fn scroll_all(
        &self,
        filter: Filter,
        fields: &[&str],
    ) -> Result<Vec<qdrant_edge::Record>, StoreError> {
        let with_payload = match fields {
            [] => WithPayloadInterface::Bool(true),
            named => WithPayloadInterface::Fields(named.iter().map(|f| key(f)).collect()),
        };
        let mut records = Vec::new();
        let mut offset = None;
        loop {
            let mut request = ScrollRequestBuilder::new()
                .limit(SCROLL_PAGE)
                .filter(filter.clone())
                .with_payload(with_payload.clone())
                .with_vector(WithVector::Bool(false));
            if let Some(offset) = offset {
                request = request.offset(offset);
            }
            let (page, next) = self.shard.scroll(request.build()).map_err(failed("read"))?;
            records.extend(page);
            match next {
                Some(next) => offset = Some(next),
                None => return Ok(records),
            }
        }
    }
}

#[async_trait]
impl VectorStore for EdgeStore {
    async fn replace(
        &self,
        tenant: &str,
        doc_id: &str,
        chunks: Vec<StoredChunk>,
    ) -> Result<(), StoreError> {
        check_chunks(tenant, doc_id, self.inner.dimension, &chunks)?;
        let ids: Vec<PointId> = chunks.iter().map(|c| PointId::Uuid(c.id)).collect();
        let points = chunks
            .into_iter()
            .map(point)
            .collect::<Result<Vec<_>, _>>()?;
        let document = document_filter(tenant, doc_id);
        let foreign = Filter {
            must_not: Some(vec![matches("tenant", tenant.to_owned())]),
            ..Filter::default()
        }
        .with_point_ids(ids.iter().copied());
        self.blocking(move |inner| {
            // Ids derive from the tenant too, so this never happens by chance; but an
            // upsert would take another tenant's point over, so it is checked here.
            if !ids.is_empty() && inner.count(foreign)? > 0 {
                return Err(StoreError::Failed(
                    "a chunk id is taken by another tenant's chunk".to_owned(),
                ));
            }
            if !points.is_empty() {
                inner.update(PointOperations::UpsertPoints(
                    PointInsertOperations::PointsList(points),
                ))?;
            }
            // Then whatever of the document is not among the new chunks.
            let mut stale = document;
            if !ids.is_empty() {
                stale.must_not = Some(vec![Condition::HasId(
                    ids.into_iter().collect::<HasIdCondition>(),
                )]);
            }
            if inner.count(stale.clone())? > 0 {
                inner.update(PointOperations::DeletePointsByFilter(stale))?;
            }
            Ok(())
        })
        .await
    }

    async fn delete(&self, tenant: &str, doc_id: &str) -> Result<u64, StoreError> {
        let filter = document_filter(tenant, doc_id);
        self.blocking(move |inner| {
            let count = inner.count(filter.clone())?;
            if count > 0 {
                inner.update(PointOperations::DeletePointsByFilter(filter))?;
            }
            Ok(count)
        })
        .await
    }

    async fn document(
        &self,
        tenant: &str,
        doc_id: &str,
    ) -> Result<Option<DocumentInfo>, StoreError> {
        let mut filter = document_filter(tenant, doc_id);
        push_must(&mut filter, matches("chunk_index", 0i64));
        self.blocking(move |inner| {
            let records = inner.scroll_all(filter, DOCUMENT_FIELDS)?;
            Ok(records.into_iter().find_map(|r| document_info(r.payload?)))
        })
        .await
    }

    async fn document_ids(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let filter = tenant_filter(tenant);
        self.blocking(move |inner| {
            let records = inner.scroll_all(filter, &["doc_id"])?;
            let ids: std::collections::BTreeSet<String> = records
                .into_iter()
                .filter_map(|r| r.payload?.0.get("doc_id")?.as_str().map(str::to_owned))
                .collect();
            Ok(ids.into_iter().collect())
        })
        .await
    }

    async fn passages(&self, tenant: &str, doc_id: &str) -> Result<Vec<ChunkPayload>, StoreError> {
        let filter = document_filter(tenant, doc_id);
        self.blocking(move |inner| {
            let records = inner.scroll_all(filter, &[])?;
            // A chunk that does not parse fails the read: re-embedding what could be
            // read would drop it.
            let mut passages = records
                .into_iter()
                .map(|r| {
                    let payload = serde_json::Value::Object(r.payload.unwrap_or_default().0);
                    serde_json::from_value::<ChunkPayload>(payload)
                        .map_err(|e| StoreError::Failed(format!("chunk {:?}: {e}", r.id)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            passages.sort_by_key(|p| p.chunk_index);
            Ok(passages)
        })
        .await
    }

    async fn is_stale(&self, tenant: &str) -> Result<bool, StoreError> {
        let record = guard(&self.inner.record);
        Ok(record.as_ref().is_some_and(|r| r.stale.contains(tenant)))
    }

    async fn stale_tenants(&self) -> Result<Vec<String>, StoreError> {
        let record = guard(&self.inner.record);
        Ok(record
            .as_ref()
            .map_or_else(Vec::new, |r| r.stale.iter().cloned().collect()))
    }

    async fn mark_current(&self, tenant: &str) -> Result<(), StoreError> {
        let tenant = tenant.to_owned();
        self.blocking(move |inner| {
            let mut record = guard(&inner.record);
            let Some(current) = record.as_mut() else {
                return Ok(());
            };
            if !current.stale.contains(&tenant) {
                return Ok(());
            }
            let mut next = current.clone();
            next.stale.remove(&tenant);
            write_record(&inner.dir, &next)
                .map_err(|e| StoreError::Failed(format!("cannot record the embedder: {e}")))?;
            *current = next;
            Ok(())
        })
        .await
    }

    async fn documents(&self, tenant: &str, limit: usize) -> Result<Vec<DocumentInfo>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = tenant_filter(tenant);
        push_must(&mut filter, matches("chunk_index", 0i64));
        self.blocking(move |inner| {
            // Points come in id order, not the documents' order: read all, then sort.
            let records = inner.scroll_all(filter, DOCUMENT_FIELDS)?;
            let mut documents: Vec<DocumentInfo> = records
                .into_iter()
                .filter_map(|r| document_info(r.payload?))
                .collect();
            documents.sort_by(|a, b| a.id.cmp(&b.id));
            documents.dedup_by(|a, b| a.id == b.id);
            documents.truncate(limit);
            Ok(documents)
        })
        .await
    }

    async fn search(&self, query: Query<'_>) -> Result<Vec<Hit>, StoreError> {
        let vector = match query.vector {
            QueryVector::Dense(dense) => {
                NamedQuery::new(VectorInternal::Dense(dense.to_vec()), DENSE)
            }
            QueryVector::Keywords(sparse) if sparse.is_empty() => return Ok(Vec::new()),
            QueryVector::Keywords(sparse) => NamedQuery::new(sparse_vector(sparse)?.0, KEYWORDS),
        };
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = tenant_filter(query.tenant);
        if let Some(collection) = query.collection {
            push_must(&mut filter, matches("collection", collection.to_owned()));
        }
        let request = QueryRequestBuilder::new(query.limit)
            .query(ScoringQuery::Vector(QueryEnum::Nearest(vector)))
            .filter(filter)
            .with_payload(WithPayloadInterface::Bool(true))
            .with_vector(WithVector::Bool(false))
            .build();
        self.blocking(move |inner| {
            let points = inner.shard.query(request).map_err(failed("search"))?;
            Ok(points
                .into_iter()
                .filter_map(|p| {
                    let PointId::Uuid(id) = p.id else {
                        return None;
                    };
                    let payload = serde_json::from_value(serde_json::Value::Object(p.payload?.0));
                    Hit::parsed(id, p.score, payload)
                })
                .collect())
        })
        .await
    }

    async fn count(&self, tenant: &str, doc_id: Option<&str>) -> Result<u64, StoreError> {
        let filter = match doc_id {
            Some(doc_id) => document_filter(tenant, doc_id),
            None => tenant_filter(tenant),
        };
        self.blocking(move |inner| inner.count(filter)).await
    }

    async fn generation(&self, tenant: &str) -> Result<u64, StoreError> {
        Ok(guard(&self.inner.generations)
            .get(tenant)
            .copied()
            .unwrap_or(0))
    }

    async fn bump_generation(&self, tenant: &str) -> Result<u64, StoreError> {
        let tenant = tenant.to_owned();
        self.blocking(move |inner| {
            // Held through the write, so bumps are written in the order they happen.
            let mut generations = guard(&inner.generations);
            let mut next = generations.clone();
            let generation = next.get(&tenant).copied().unwrap_or(0) + 1;
            next.insert(tenant, generation);
            write_generations(&inner.dir, &next).map_err(|e| {
                StoreError::Failed(format!(
                    "cannot write {}: {e}",
                    inner.dir.join(GENERATIONS_FILE).display()
                ))
            })?;
            *generations = next;
            Ok(generation)
        })
        .await
    }

    async fn maintain(&self) -> Result<(), StoreError> {
        self.blocking(|inner| inner.maintain(false)).await
    }

    async fn finish(&self) -> Result<(), StoreError> {
        self.blocking(|inner| inner.maintain(true)).await
    }
}

/// A chunk as a point: both vectors (no keyword vector for a chunk without terms)
/// and the payload.
fn point(chunk: StoredChunk) -> Result<PointStructPersisted, StoreError> {
    let mut vectors = vec![(DENSE, Vector::new_dense(chunk.dense))];
    if !chunk.keywords.is_empty() {
        vectors.push((KEYWORDS, sparse_vector(&chunk.keywords)?));
    }
    let payload = serde_json::to_value(&chunk.payload)
        .map_err(|e| StoreError::Failed(format!("chunk {}: {e}", chunk.id)))?;
    Ok(PointStruct::new(
        PointId::Uuid(chunk.id),
        Vectors::new_named(vectors),
        payload,
    )
    .into())
}

fn sparse_vector(sparse: &SparseVector) -> Result<Vector, StoreError> {
    Vector::new_sparse(sparse.indices.clone(), sparse.values.clone())
        .map_err(|e| StoreError::Failed(format!("bad keyword vector: {e}")))
}

fn document_info(payload: Payload) -> Option<DocumentInfo> {
    DocumentInfo::from_fields(serde_json::Value::Object(payload.0))
}

/// A payload key; the fields are plain names, always valid paths.
fn key(field: &str) -> JsonPath {
    JsonPath::try_from(field).unwrap_or_else(|()| panic!("invalid payload key {field:?}"))
}

fn matches(field: &str, value: impl Into<Match>) -> Condition {
    Condition::Field(FieldCondition::new_match(key(field), value.into()))
}

/// Every read and write starts from this: the store enforces tenant isolation.
fn tenant_filter(tenant: &str) -> Filter {
    Filter::new_must(matches("tenant", tenant.to_owned()))
}

fn document_filter(tenant: &str, doc_id: &str) -> Filter {
    let mut filter = tenant_filter(tenant);
    push_must(&mut filter, matches("doc_id", doc_id.to_owned()));
    filter
}

fn push_must(filter: &mut Filter, condition: Condition) {
    filter.must.get_or_insert_with(Vec::new).push(condition);
}

fn failed(what: &'static str) -> impl Fn(OperationError) -> StoreError {
    move |e| StoreError::Failed(format!("{what}: {e}"))
}

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
