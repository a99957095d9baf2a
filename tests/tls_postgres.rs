//! Postgres over TLS, against the real test server (`make services` gives it a
//! certificate for 127.0.0.1 from a CA of its own): each `sslmode` as the audit
//! store reads it, a server without TLS, the wrong CA and the wrong name, and the
//! audit trail writing its rows over a verified connection.

use std::path::Path;

use sqlx::{ConnectOptions, Connection, PgPool};

use crate::audit::{audit_section, temp_dir, wait_for_rows};
use crate::support::postgres::{
    Proxy, address, fresh_database, server_ca, server_url, via, without_tls,
};
use crate::support::tls::TestCa;
use crate::support::{FakeProvider, Gateway, ask, config_over};
use ragway::audit::store::postgres::PgStore;
use ragway::db::connect_options;

/// `url` with `params` added to its query.
fn with(url: &str, params: &str) -> String {
    let join = if url.contains('?') { '&' } else { '?' };
    format!("{url}{join}{params}")
}

fn root(ca: &Path) -> String {
    format!("sslrootcert={}", ca.display())
}

/// Connects with the options the audit store takes from `url`: whether the
/// session is encrypted (as the server sees it), or the error's text.
async fn session(url: &str) -> Result<bool, String> {
    let options = connect_options(url).map_err(|e| e.to_string())?;
    let mut conn = options.connect().await.map_err(|e| e.to_string())?;
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    Ok(ssl)
}

fn assert_refused(result: Result<bool, String>, why: &str) {
    match result {
        Err(error) => assert!(error.contains(why), "{error}"),
        Ok(ssl) => panic!("connected (ssl: {ssl}), expected a refusal: {why}"),
    }
}

#[tokio::test]
async fn prefer_and_require_encrypt_and_disable_does_not() {
    server_ca();
    let server = server_url();
    // No sslmode is `prefer`: TLS whenever the server offers it.
    assert_eq!(session(&server).await, Ok(true));
    assert_eq!(session(&with(&server, "sslmode=prefer")).await, Ok(true));
    assert_eq!(session(&with(&server, "sslmode=require")).await, Ok(true));
    assert_eq!(session(&with(&server, "sslmode=disable")).await, Ok(false));
}

#[tokio::test]
async fn require_refuses_a_server_without_tls_where_prefer_goes_on_in_plain_text() {
    let plain = via(&server_url(), without_tls(address(&server_url())).await);
    assert_refused(
        session(&with(&plain, "sslmode=require")).await,
        "does not support TLS",
    );
    assert_refused(
        session(&with(
            &plain,
            &format!("sslmode=verify-full&{}", root(&server_ca())),
        ))
        .await,
        "does not support TLS",
    );
    assert_eq!(session(&with(&plain, "sslmode=prefer")).await, Ok(false));
}

#[tokio::test]
async fn verify_modes_trust_only_the_named_ca_and_the_name() {
    let ca = server_ca();
    let server = server_url();
    let verify_full = format!("sslmode=verify-full&{}", root(&ca));
    assert_eq!(session(&with(&server, &verify_full)).await, Ok(true));
    assert_eq!(
        session(&with(&server, &format!("sslmode=verify-ca&{}", root(&ca)))).await,
        Ok(true)
    );
    // Without sslrootcert only the public roots are trusted: not the test CA.
    assert_refused(
        session(&with(&server, "sslmode=verify-full")).await,
        "UnknownIssuer",
    );
    let other = TestCa::new("another CA");
    assert_refused(
        session(&with(
            &server,
            &format!("sslmode=verify-ca&{}", root(&other.cert())),
        ))
        .await,
        "UnknownIssuer",
    );
    // `require` with a root certificate checks against it, as libpq does.
    assert_refused(
        session(&with(
            &server,
            &format!("sslmode=require&{}", root(&other.cert())),
        ))
        .await,
        "UnknownIssuer",
    );
    assert_eq!(
        session(&with(&server, &format!("sslmode=require&{}", root(&ca)))).await,
        Ok(true)
    );

    // The same server under a name its certificate does not hold (127.0.0.2).
    let renamed = Proxy::start_at("127.0.0.2", address(&server)).await;
    let renamed = via(&server, renamed.addr);
    assert_refused(
        session(&with(&renamed, &verify_full)).await,
        "not valid for name",
    );
    // libpq checks no name under verify-ca; the driver (sqlx 0.8 on rustls ≥
    // 0.23.24, launchbadge/sqlx#3793) checks it anyway, and docs/deploy.md says so.
    // Should this start connecting, the driver was fixed: update the docs.
    assert_refused(
        session(&with(&renamed, &format!("sslmode=verify-ca&{}", root(&ca)))).await,
        "not valid for name",
    );
}

#[tokio::test]
async fn the_audit_trail_writes_its_rows_over_verified_tls() {
    let ca = server_ca();
    let fake = FakeProvider::start().await;
    let db = fresh_database().await;
    let database = db.rsplit_once('/').unwrap().1.to_owned();
    let config = format!(
        "{}{}",
        config_over(&fake, &[("chat", &["ok"])]),
        audit_section("gw-tls", &temp_dir())
    );
    let url = with(&db, &format!("sslmode=verify-full&{}", root(&ca)));
    let gw = Gateway::start_with_env(&config, &[("AUDIT_DB", url.as_str())]).await;
    for _ in 0..3 {
        assert_eq!(gw.chat(ask("chat", "hi")).await.status(), 200);
    }
    let pool = PgPool::connect(&db).await.unwrap();
    wait_for_rows(&pool, "gw-tls", 3).await;
    // The gateway's own sessions with the database, as the server sees them.
    let sessions: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = $1 AND a.application_name = 'ragway'",
    )
    .bind(&database)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        !sessions.is_empty() && sessions.iter().all(|ssl| *ssl),
        "{sessions:?}"
    );
}

#[tokio::test]
async fn an_untrusted_server_is_refused_with_a_clear_error_and_no_url() {
    server_ca();
    let db = fresh_database().await;
    let url = with(&db, "sslmode=verify-full");
    let store = PgStore::connect_lazy(&url).unwrap();
    let error = ragway::audit::store::AuditStore::migrate(&store)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");

    // The command line says the same, and never prints the URL (its password).
    let dir = temp_dir();
    let config = dir.join("ragway.toml");
    std::fs::write(&config, "[audit]\ndatabase_env = \"AUDIT_DB\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ragway"))
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .env("AUDIT_DB", &url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
    let (credentials, _) = db.rsplit_once('@').unwrap();
    assert!(!stderr.contains(credentials), "{stderr}");
}
