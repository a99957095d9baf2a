//! The shared cache tier over TLS: a redis-server of the test's own that speaks
//! only TLS, with a certificate for 127.0.0.1 from a CA the test makes.

use std::path::Path;
use std::time::Duration;

use ragway::cache::redis::{RedisTier, TierError};

use crate::support::tls::{TestCa, TlsRedis};
use crate::support::{FakeProvider, Gateway, ask, config_over};

/// The tier as the gateway builds it, trusting `ca` (the system's roots when
/// `None`).
fn tier(url: &str, ca: Option<&Path>) -> RedisTier {
    let prefix = format!("ragway:tls:{}:", uuid::Uuid::new_v4());
    let ca_pem = ca.map(|path| std::fs::read(path).unwrap());
    let ttl = Duration::from_secs(60);
    RedisTier::new(url, ca_pem, &prefix, ttl, Duration::from_secs(2)).unwrap()
}

/// One round trip through the tier: a read of a tenant's purge generation.
async fn round_trip(tier: &RedisTier) -> Result<u64, String> {
    tier.purge_generation("acme").await.map_err(|e| match e {
        TierError::Failed(message) => message,
        TierError::Skipped => "skipped: breaker open".to_owned(),
    })
}

#[tokio::test]
async fn rediss_with_the_ca_file_serves_the_shared_tier() {
    let ca = TestCa::new("redis test CA");
    let redis = TlsRedis::start(&ca);
    let fake = FakeProvider::start().await;
    // No memory tier: a hit can only have come back from Redis, over TLS.
    let config = format!(
        "{}\n[cache]\nmemory_bytes = 0\nredis_url = \"rediss://127.0.0.1:{}\"\n\
         redis_ca_file = \"{}\"\nredis_timeout = \"2s\"\n",
        config_over(&fake, &[("chat", &["ok"])]),
        redis.port,
        ca.cert().display()
    );
    let gw = Gateway::start(&config).await;
    let mut body = ask("chat", "What is TLS?");
    body["temperature"] = serde_json::json!(0);
    let mut tiers = Vec::new();
    // Stores run in the background: ask until the first one has reached Redis.
    for _ in 0..100 {
        let response = gw.chat(body.clone()).await;
        assert_eq!(response.status(), 200);
        let tier = response.headers()["x-ragway-cache"].to_str().unwrap();
        tiers.push(tier.to_owned());
        if tier == "hit-l2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tiers.first().map(String::as_str), Some("miss"), "{tiers:?}");
    assert_eq!(
        tiers.last().map(String::as_str),
        Some("hit-l2"),
        "{tiers:?}"
    );
    assert_eq!(fake.requests().len(), tiers.len() - 1);
}

#[tokio::test]
async fn rediss_refuses_a_server_from_an_unknown_ca_and_plain_text_gets_nowhere() {
    let ca = TestCa::new("redis test CA");
    let redis = TlsRedis::start(&ca);
    let tls_url = format!("rediss://127.0.0.1:{}", redis.port);
    assert_eq!(round_trip(&tier(&tls_url, Some(&ca.cert()))).await, Ok(0));
    // The same server under an address its certificate does not name.
    let renamed = format!("rediss://127.0.0.2:{}", redis.port);
    let mismatch = round_trip(&tier(&renamed, Some(&ca.cert())))
        .await
        .unwrap_err();
    assert!(mismatch.contains("not valid for name"), "{mismatch}");

    // Without the CA file only the system's roots are trusted: not the test CA.
    let unknown = round_trip(&tier(&tls_url, None)).await.unwrap_err();
    assert!(
        unknown.contains("invalid peer certificate: UnknownIssuer"),
        "{unknown}"
    );
    let other = TestCa::new("another CA");
    let wrong = round_trip(&tier(&tls_url, Some(&other.cert())))
        .await
        .unwrap_err();
    assert!(wrong.contains("UnknownIssuer"), "{wrong}");

    // Plain text to the TLS port gets no answer.
    let plain = format!("redis://127.0.0.1:{}", redis.port);
    assert!(round_trip(&tier(&plain, None)).await.is_err());
}
