//! Which embedder made the collection's vectors, and which tenants' vectors another
//! one made, shared by every replica:
//!
//! - the model is recorded in the collection's metadata, under [`EMBEDDER_KEY`];
//!   a collection made before collections recorded theirs counts as
//!   [`FIRST_EMBEDDER`]'s;
//! - a tenant whose vectors are stale (the collection was switched to another
//!   model, and the tenant not yet embedded again) has a point of its own in the
//!   generations collection ([`stale_point_id`]), removed once it is.
//!
//! A switch marks every tenant stale before it records the new model, so a switch
//! cut short leaves tenants searched by keywords alone, never compared across
//! models.

use super::*;
use crate::retrieve::store::{FIRST_EMBEDDER, Switch};

/// The collection metadata key naming the model that makes its dense vectors.
pub const EMBEDDER_KEY: &str = "ragway_embedder";

/// The id of the point marking a tenant's vectors stale (see
/// [`generation_point_id`] for the derivation).
pub fn stale_point_id(tenant: &str) -> Uuid {
    tenant_point_id("ragway-stale", tenant)
}

/// The model the collection's metadata names, if it names one.
pub(super) fn recorded_model(info: &CollectionInfo) -> Option<String> {
    let value = info.config.as_ref()?.metadata.get(EMBEDDER_KEY)?;
    match value.kind.as_ref()? {
        qdrant_client::qdrant::value::Kind::StringValue(model) => Some(model.clone()),
        _ => None,
    }
}

/// What a replica embedding with `embedder` may do with a collection recording
/// `recorded` (`None`: no record, and `empty` says whether it holds any chunk).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Same model: nothing to do.
    Same,
    /// Record `embedder` (a new collection, or one being switched: `stale` says
    /// whether its tenants must be marked first, naming the model they leave).
    Record { stale: Option<String> },
}

pub(super) fn verdict(
    collection: &str,
    recorded: Option<String>,
    empty: bool,
    embedder: &str,
    switch: Switch,
) -> Result<Verdict, StoreError> {
    let recorded = match recorded {
        Some(model) => model,
        // No record and no chunk: a new collection (or one another replica has
        // just created), whatever model it is for.
        None if empty => return Ok(Verdict::Record { stale: None }),
        None => FIRST_EMBEDDER.to_owned(),
    };
    if recorded == embedder {
        return Ok(Verdict::Same);
    }
    match switch {
        Switch::Refuse => Err(StoreError::Unavailable(refusal(
            collection, &recorded, embedder,
        ))),
        Switch::Adopt => Ok(Verdict::Record {
            stale: Some(recorded),
        }),
    }
}

/// The start-up refusal, naming both models and the way out.
pub(super) fn refusal(collection: &str, recorded: &str, embedder: &str) -> String {
    format!(
        "Qdrant collection `{collection}` holds vectors made by {recorded}, but the \
         configured embedder is {embedder}: their vectors cannot be compared. Run `ragway \
         reindex` to embed the stored documents again with {embedder}, or configure \
         {recorded} again"
    )
}

/// The metadata recording `model`.
pub(super) fn record(model: &str) -> HashMap<String, serde_json::Value> {
    HashMap::from([(EMBEDDER_KEY.to_owned(), serde_json::Value::from(model))])
}

/// A stale mark's payload.
pub(super) fn stale_payload(tenant: &str) -> Result<Payload, StoreError> {
    Payload::try_from(serde_json::json!({ "tenant": tenant, "stale": true }))
        .map_err(|e| StoreError::Failed(format!("stale mark payload: {e}")))
}

/// Every stale mark in the generations collection.
pub(super) fn stale_marks() -> Filter {
    Filter::must([Condition::matches("stale", true)])
}

/// The tenant named in a generations-collection point's payload.
pub(super) fn payload_tenant(mut payload: HashMap<String, Value>) -> Option<String> {
    match payload.remove("tenant")?.kind? {
        qdrant_client::qdrant::value::Kind::StringValue(tenant) => Some(tenant),
        _ => None,
    }
}
