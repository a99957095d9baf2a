//! The audit table the gateway writes: a fresh database, and the soak's rows in it.

use std::time::{Duration, Instant};

use sqlx::Connection;

const DATABASE: &str = "ragway_soak";

fn server_url() -> String {
    std::env::var("RAGWAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// An empty `ragway_soak` database (the last run's is dropped; this run's is kept
/// for inspection).
pub async fn fresh_database() -> String {
    let server = server_url();
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("Postgres at {server} (run `make services`): {e}"));
    for statement in [
        format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
        format!("CREATE DATABASE {DATABASE}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let (base, _) = server.rsplit_once('/').expect("a database URL has a path");
    format!("{base}/{DATABASE}")
}

pub struct AuditCount {
    pub rows: i64,
    pub distinct: i64,
    pub ok_rows: i64,
    /// How long until every request had its row (or the wait gave up).
    pub waited: Duration,
    pub complete: bool,
}

/// The soak's rows in the audit table, once every request has one or 60 s passed.
pub async fn count_rows(url: &str, sent: u64) -> AuditCount {
    let start = Instant::now();
    let deadline = Duration::from_secs(60);
    let mut last = (0, 0, 0);
    while start.elapsed() < deadline {
        if let Ok(Ok(counts)) = tokio::time::timeout(Duration::from_secs(10), counts(url)).await {
            last = counts;
            if last.1 as u64 >= sent {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (rows, distinct, ok_rows) = last;
    AuditCount {
        rows,
        distinct,
        ok_rows,
        waited: start.elapsed(),
        complete: distinct as u64 >= sent,
    }
}

/// (rows, distinct request ids, rows with status 200) of the soak's requests.
async fn counts(url: &str) -> Result<(i64, i64, i64), sqlx::Error> {
    let mut db = sqlx::PgConnection::connect(url).await?;
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT request_id), count(*) FILTER (WHERE status = 200)
         FROM audit_calls WHERE request_id LIKE 'soak-%'",
    )
    .fetch_one(&mut db)
    .await
}
