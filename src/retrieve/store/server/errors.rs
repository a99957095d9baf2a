//! Qdrant's errors as the store's: an unreachable or busy server (`Unavailable`,
//! worth waiting out) told apart from a refused request (`Failed`).

use super::*;

/// gRPC status codes (the numbers are fixed by the gRPC spec), for telling an
/// unreachable server from a refused request.
pub(super) mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
}

/// Whether an error means the server could not be reached or could not serve now
/// (as opposed to refusing the request).
pub(super) fn is_unavailable(error: &QdrantError) -> bool {
    match error {
        QdrantError::ResponseError { status } => {
            unavailable_status(status.code() as i32, status.message())
        }
        QdrantError::ResourceExhaustedError { .. } | QdrantError::Io(_) => true,
        _ => false,
    }
}

/// A gRPC status that says the server is out of reach or busy. The client reports
/// a failed connection as `INTERNAL` "Failed to connect to ..."; tonic reports a
/// refused one as `UNAVAILABLE` and a timeout as `CANCELLED`.
pub(super) fn unavailable_status(code: i32, message: &str) -> bool {
    matches!(
        code,
        grpc_code::UNAVAILABLE
            | grpc_code::DEADLINE_EXCEEDED
            | grpc_code::CANCELLED
            | grpc_code::RESOURCE_EXHAUSTED
    ) || (code == grpc_code::INTERNAL && message.starts_with("Failed to connect"))
}

/// A client error in a line: the server's message rather than the gRPC metadata.
pub(super) fn describe(error: &QdrantError) -> String {
    match error {
        QdrantError::ResponseError { status }
        | QdrantError::ResourceExhaustedError { status, .. } => {
            format!("{} ({:?})", status.message(), status.code())
        }
        other => other.to_string(),
    }
}

pub(super) fn store_error(context: &str, error: &QdrantError) -> StoreError {
    let message = format!("Qdrant {context}: {}", describe(error));
    if is_unavailable(error) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Failed(message)
    }
}

/// For an operation: unreachable → `Unavailable`, refused → `Failed`.
pub(super) fn failed(what: &'static str) -> impl Fn(QdrantError) -> StoreError {
    move |e| store_error(what, &e)
}

/// For opening the store, where any failure leaves it unusable.
pub(super) fn unavailable(context: &str) -> impl Fn(QdrantError) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("Qdrant: {context}: {}", describe(&e)))
}
