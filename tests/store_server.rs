//! The Qdrant server backend against the store contract, when a server is given:
//! `QDRANT_URL=http://localhost:6334` (gRPC), and `QDRANT_API_KEY` if it needs
//! one. Each run uses collections of its own and deletes them at the end.

use std::time::Duration;

use qdrant_client::Qdrant;
use ragway::retrieve::store::server::{QdrantServer, generations_collection};
use ragway::retrieve::store::{StoreError, Switch, VectorStore};
use uuid::Uuid;

use super::store::{DIMENSION, chunk, contract, sparse, unit};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The server to test against, or `None` (the test is skipped) when not given.
pub fn server() -> Option<(String, Option<String>)> {
    match std::env::var("QDRANT_URL") {
        Ok(url) if !url.trim().is_empty() => Some((url, std::env::var("QDRANT_API_KEY").ok())),
        _ => {
            eprintln!("skipped: set QDRANT_URL=http://host:6334 to run the Qdrant server tests");
            None
        }
    }
}

/// Deletes this run's collections, whatever happened to the test.
pub async fn drop_collections(url: &str, api_key: Option<String>, collection: &str) {
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

/// Runs `test` on a collection of its own, deleted afterwards whatever happened.
async fn on_fresh_collection<F, T>(test: F)
where
    F: FnOnce(String, Option<String>, String) -> T,
    T: std::future::Future<Output = ()> + Send + 'static,
{
    let Some((url, api_key)) = server() else {
        return;
    };
    let collection = format!("ragway_test_{}", Uuid::new_v4().simple());
    let outcome = tokio::spawn(test(url.clone(), api_key.clone(), collection.clone())).await;
    drop_collections(&url, api_key, &collection).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

#[tokio::test]
async fn qdrant_server_knows_its_embedder() {
    on_fresh_collection(|url, api_key, collection| async move {
        let open = |model: &'static str, switch: Switch| {
            let (url, api_key, collection) = (url.clone(), api_key.clone(), collection.clone());
            async move {
                QdrantServer::connect(&url, api_key, &collection, DIMENSION, TIMEOUT)
                    .await
                    .unwrap()
                    .for_embedder(model, switch)
                    .await
            }
        };
        let document = |tenant: &str| {
            vec![chunk(
                tenant,
                "c",
                "doc",
                (0, 1),
                unit(0),
                sparse(&[(1, 1.0)]),
            )]
        };
        // A new collection takes the first model that opens it.
        let first = open("model-a", Switch::Refuse).await.unwrap();
        for tenant in ["acme", "globex"] {
            first
                .replace(tenant, "doc", document(tenant))
                .await
                .unwrap();
            first.bump_generation(tenant).await.unwrap();
        }
        assert!(first.stale_tenants().await.unwrap().is_empty());
        assert!(open("model-a", Switch::Refuse).await.is_ok());

        // Another model of the same width is refused, naming both.
        match open("model-b", Switch::Refuse).await {
            Err(StoreError::Unavailable(message)) => {
                for named in ["model-a", "model-b", "ragway reindex", &collection] {
                    assert!(message.contains(named), "{named} in: {message}");
                }
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("opened with another embedder"),
        }

        // `ragway reindex` takes it over: every tenant is stale until embedded
        // again, for every replica.
        let switched = open("model-b", Switch::Adopt).await.unwrap();
        assert_eq!(switched.stale_tenants().await.unwrap(), ["acme", "globex"]);
        assert!(switched.is_stale("acme").await.unwrap());
        assert!(!switched.is_stale("nobody").await.unwrap());
        let replica = open("model-b", Switch::Refuse).await.unwrap();
        assert!(replica.is_stale("globex").await.unwrap());
        assert!(open("model-a", Switch::Refuse).await.is_err());

        // The process still on the old model finds out at its maintenance pass:
        // every tenant is then stale to it, and its writes are refused.
        assert!(!first.is_stale("nobody").await.unwrap());
        first.maintain().await.unwrap();
        assert!(first.is_stale("nobody").await.unwrap());
        match first.replace("acme", "doc", document("acme")).await {
            Err(StoreError::Failed(message)) => {
                for named in ["model-a", "model-b", "restart"] {
                    assert!(message.contains(named), "{named} in: {message}");
                }
            }
            other => panic!("an old model's write was not refused: {other:?}"),
        }

        // A tenant embedded again is current again; a generation bump (a write)
        // leaves another tenant's mark alone.
        switched.mark_current("acme").await.unwrap();
        switched.bump_generation("globex").await.unwrap();
        assert!(!switched.is_stale("acme").await.unwrap());
        assert_eq!(switched.stale_tenants().await.unwrap(), ["globex"]);
        let fresh = open("model-b", Switch::Refuse).await.unwrap();
        assert!(!fresh.is_stale("acme").await.unwrap());
        assert!(fresh.is_stale("globex").await.unwrap());
        switched
            .replace("acme", "doc", document("acme"))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_qdrant_collection_without_a_record_was_made_by_minilm() {
    on_fresh_collection(|url, api_key, collection| async move {
        let connect =
            || QdrantServer::connect(&url, api_key.clone(), &collection, DIMENSION, TIMEOUT);
        let old = connect().await.unwrap();
        let c = chunk("t", "c", "doc", (0, 1), unit(0), sparse(&[(1, 1.0)]));
        old.replace("t", "doc", vec![c]).await.unwrap();
        match connect()
            .await
            .unwrap()
            .for_embedder("multilingual-e5-small", Switch::Refuse)
            .await
        {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("all-MiniLM-L6-v2"), "{message}");
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("MiniLM's collection opened for e5"),
        }
        let minilm = connect()
            .await
            .unwrap()
            .for_embedder("all-MiniLM-L6-v2", Switch::Refuse);
        assert!(minilm.await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn qdrant_server_lays_out_a_new_collection_and_reports_an_old_ones_layout() {
    use ragway::retrieve::store::server::ClusterSettings;
    on_fresh_collection(|url, api_key, collection| async move {
        let laid_out = ClusterSettings {
            shard_number: Some(2),
            replication_factor: Some(1),
            write_consistency_factor: Some(1),
            on_disk_payload: Some(false),
        };
        let connect = |cluster| {
            let (url, api_key, collection) = (url.clone(), api_key.clone(), collection.clone());
            async move {
                QdrantServer::connect_laid_out(
                    &url,
                    api_key,
                    &collection,
                    DIMENSION,
                    TIMEOUT,
                    cluster,
                )
                .await
                .unwrap()
            }
        };
        // Created as configured: nothing differs.
        let created = connect(laid_out).await;
        assert!(
            created.differences().is_empty(),
            "{:?}",
            created.differences()
        );
        let client = Qdrant::from_url(&url)
            .api_key(api_key.clone())
            .skip_compatibility_check()
            .build()
            .unwrap();
        let info = client
            .collection_info(&collection)
            .await
            .unwrap()
            .result
            .unwrap();
        let params = info.config.unwrap().params.unwrap();
        #[allow(deprecated)] // what the v1.16 server reports
        let on_disk = params.on_disk_payload;
        assert_eq!((params.shard_number, on_disk), (2, false));
        // The contract holds on two shards.
        contract(&created).await;
        // Configured otherwise later: the collection keeps its layout, and says so.
        let other = connect(ClusterSettings {
            shard_number: Some(3),
            on_disk_payload: Some(true),
            ..laid_out
        })
        .await;
        let differing: Vec<(&str, &str, &str)> = other
            .differences()
            .iter()
            .map(|d| (d.setting, d.configured.as_str(), d.collection.as_str()))
            .collect();
        assert_eq!(
            differing,
            [
                ("shard_number", "3", "2"),
                ("on_disk_payload", "true", "false")
            ]
        );
    })
    .await;
}
