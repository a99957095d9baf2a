//! The filters of every read and write: each starts from the tenant's.

use super::*;

/// An exact keyword match. (`Condition::matches` with a `String` would turn a value
/// containing whitespace into a full-text match.)
pub(super) fn keyword(field: &str, value: &str) -> Condition {
    Condition::matches(field, MatchValue::Keyword(value.to_owned()))
}

pub(super) fn first_chunk() -> Condition {
    Condition::matches("chunk_index", 0_i64)
}

/// Every read and write starts from this: the store enforces tenant isolation.
pub(super) fn tenant_filter(tenant: &str) -> Filter {
    Filter::must([keyword("tenant", tenant)])
}

pub(super) fn document_filter(tenant: &str, doc_id: &str) -> Filter {
    Filter::must([keyword("tenant", tenant), keyword("doc_id", doc_id)])
}

pub(super) fn search_filter(tenant: &str, collection: Option<&str>) -> Filter {
    let mut filter = tenant_filter(tenant);
    if let Some(collection) = collection {
        filter.must.push(keyword("collection", collection));
    }
    filter
}

/// Points among `ids` that belong to another tenant.
pub(super) fn foreign_filter(tenant: &str, ids: Vec<String>) -> Filter {
    Filter {
        must: vec![Condition::has_id(ids)],
        must_not: vec![keyword("tenant", tenant)],
        ..Filter::default()
    }
}

/// The document's points that are not among `keep` (all of them if it is empty).
pub(super) fn stale_filter(tenant: &str, doc_id: &str, keep: Vec<String>) -> Filter {
    let mut filter = document_filter(tenant, doc_id);
    if !keep.is_empty() {
        filter.must_not.push(Condition::has_id(keep));
    }
    filter
}
