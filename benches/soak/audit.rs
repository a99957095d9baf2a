//! The soak's rows in the audit table the gateway writes.

use std::time::{Duration, Instant};

use sqlx::Connection;

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
