//! The collection's shape: its payload indexes, the check of an existing one, and
//! chunks as points and back.

use super::*;

/// `payload_m` of the per-tenant HNSW graphs (Qdrant's default `m`).
pub(super) const PAYLOAD_M: u64 = 16;

/// The payload indexes the filters use: the tenant index first. Only the tenant's
/// gets its own HNSW links (`payload_m`): the others never narrow a search alone.
pub(super) fn payload_indexes() -> [(&'static str, FieldType, payload_index_params::IndexParams); 4]
{
    let keyword = |is_tenant: bool| {
        payload_index_params::IndexParams::from(
            KeywordIndexParamsBuilder::default()
                .is_tenant(is_tenant)
                .enable_hnsw(is_tenant),
        )
    };
    [
        ("tenant", FieldType::Keyword, keyword(true)),
        ("collection", FieldType::Keyword, keyword(false)),
        ("doc_id", FieldType::Keyword, keyword(false)),
        (
            "chunk_index",
            FieldType::Integer,
            IntegerIndexParamsBuilder::new(true, true)
                .enable_hnsw(false)
                .into(),
        ),
    ]
}

/// Checks that an existing collection has this backend's vectors, at `dimension`.
pub(super) fn check_schema(
    info: &CollectionInfo,
    name: &str,
    dimension: usize,
) -> Result<(), StoreError> {
    let params = info.config.as_ref().and_then(|c| c.params.as_ref());
    let dense = params
        .and_then(|p| p.vectors_config.as_ref())
        .and_then(|v| v.config.as_ref())
        .and_then(|config| match config {
            vectors_config::Config::ParamsMap(map) => map.map.get(DENSE),
            vectors_config::Config::Params(_) => None,
        });
    let Some(dense) = dense else {
        return Err(StoreError::Unavailable(format!(
            "Qdrant collection `{name}` holds no `{DENSE}` vectors: not a ragway collection \
             (configure another collection name)"
        )));
    };
    if dense.size != dimension as u64 {
        return Err(StoreError::Unavailable(format!(
            "Qdrant collection `{name}` holds {}-dimensional vectors, but the embedding model \
             makes {dimension}-dimensional ones: use the model it was built with, or another \
             collection (and ingest again)",
            dense.size
        )));
    }
    let has_keywords = params
        .and_then(|p| p.sparse_vectors_config.as_ref())
        .is_some_and(|s| s.map.contains_key(KEYWORDS));
    if !has_keywords {
        return Err(StoreError::Unavailable(format!(
            "Qdrant collection `{name}` holds no `{KEYWORDS}` vectors: not a ragway collection \
             (configure another collection name)"
        )));
    }
    Ok(())
}

/// A chunk as a point: both vectors (no keyword vector for a chunk without terms)
/// and the payload.
pub(super) fn point(chunk: StoredChunk) -> Result<PointStruct, StoreError> {
    let mut vectors = HashMap::from([(DENSE.to_owned(), Vector::new_dense(chunk.dense))]);
    if !chunk.keywords.is_empty() {
        vectors.insert(
            KEYWORDS.to_owned(),
            Vector::new_sparse(chunk.keywords.indices, chunk.keywords.values),
        );
    }
    let payload = to_payload(&chunk.payload)
        .map_err(|e| StoreError::Failed(format!("chunk {}: {e}", chunk.id)))?;
    Ok(PointStruct::new(chunk.id.to_string(), vectors, payload))
}

pub(super) fn to_payload(payload: &ChunkPayload) -> Result<Payload, String> {
    let json = serde_json::to_value(payload).map_err(|e| e.to_string())?;
    Payload::try_from(json).map_err(|e| e.to_string())
}

/// A point's payload, as Qdrant returns it, as a chunk's.
pub(super) fn chunk_payload(
    payload: HashMap<String, Value>,
) -> Result<ChunkPayload, serde_json::Error> {
    serde_json::from_value(serde_json::Value::from(Payload::from(payload)))
}

pub(super) fn document_info(payload: HashMap<String, Value>) -> Option<DocumentInfo> {
    DocumentInfo::from_fields(serde_json::Value::from(Payload::from(payload)))
}

/// A point id as the UUID it was stored with (this backend writes no numeric ids).
pub(super) fn point_uuid(id: Option<&PointId>) -> Option<Uuid> {
    match id?.point_id_options.as_ref()? {
        PointIdOptions::Uuid(text) => Uuid::parse_str(text).ok(),
        PointIdOptions::Num(_) => None,
    }
}
