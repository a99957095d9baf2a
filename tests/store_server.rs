//! The Qdrant server backend against the store contract, when a server is given:
//! `QDRANT_URL=http://localhost:6334` (gRPC), and `QDRANT_API_KEY` if it needs
//! one. Each run uses collections of its own and deletes them at the end.

use std::time::Duration;

use qdrant_client::Qdrant;
use ragway::retrieve::store::server::{QdrantServer, generations_collection};
use ragway::retrieve::store::{StoreError, VectorStore};
use uuid::Uuid;

use super::store::{DIMENSION, contract};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The server to test against, or `None` (the test is skipped) when not given.
fn server() -> Option<(String, Option<String>)> {
    match std::env::var("QDRANT_URL") {
        Ok(url) if !url.trim().is_empty() => Some((url, std::env::var("QDRANT_API_KEY").ok())),
        _ => {
            eprintln!("skipped: set QDRANT_URL=http://host:6334 to run the Qdrant server tests");
            None
        }
    }
}

/// Deletes this run's collections, whatever happened to the test.
async fn drop_collections(url: &str, api_key: Option<String>, collection: &str) {
    let client = Qdrant::from_url(url)
        .api_key(api_key)
        .timeout(TIMEOUT)
        .skip_compatibility_check()
        .build()
        .expect("a Qdrant client");
    for name in [collection.to_owned(), generations_collection(collection)] {
        if let Err(error) = client.delete_collection(name.as_str()).await {
            eprintln!("could not delete the test collection {name}: {error}");
        }
    }
}

#[tokio::test]
async fn qdrant_server_keeps_the_contract() {
    let Some((url, api_key)) = server() else {
        return;
    };
    let collection = format!("ragway_test_{}", Uuid::new_v4().simple());
    let outcome = tokio::spawn({
        let (url, api_key, collection) = (url.clone(), api_key.clone(), collection.clone());
        async move {
            let store =
                QdrantServer::connect(&url, api_key.clone(), &collection, DIMENSION, TIMEOUT)
                    .await
                    .unwrap();
            contract(&store).await;
            // Twice on the same collection: the contract's tenants are fresh.
            contract(&store).await;

            // Connecting again finds the collection ready: same model, same data.
            let again =
                QdrantServer::connect(&url, api_key.clone(), &collection, DIMENSION, TIMEOUT)
                    .await
                    .unwrap();
            assert_eq!(again.count("nobody", None).await.unwrap(), 0);

            // Another embedding model is refused, naming both sizes.
            match QdrantServer::connect(&url, api_key, &collection, DIMENSION * 2, TIMEOUT).await {
                Err(StoreError::Unavailable(message)) => {
                    assert!(
                        message.contains(&format!("{DIMENSION}-dimensional")),
                        "{message}"
                    );
                    assert!(
                        message.contains(&format!("{}-dimensional", DIMENSION * 2)),
                        "{message}"
                    );
                }
                Err(other) => panic!("unexpected error: {other}"),
                Ok(_) => panic!("connected with another dimension"),
            }
        }
    })
    .await;
    drop_collections(&url, api_key, &collection).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}
