//! Audit benchmark (`make bench-audit`, needs the Postgres `make services` starts):
//!
//! 1. Sustained rows/s into Postgres by the store's batched COPY (1,000 rows per
//!    transaction, as the writer sends them), over 1,000,000 rows; baseline in the
//!    same run: the same store one row per transaction (a trail written on the
//!    request path, row by row).
//! 2. The request path's cost of handing a record over (`AuditSink::record`),
//!    with the writer taking 10,000 and 20,000 records/s; and how the writer kept up.
//! 3. The table's size per million rows (heap, indexes, names).
//! 4. The console's audit searches over those rows (40 tenants, 400 keys, one
//!    row in 50 an error): the store's query for each filter, and its plan
//!    (`EXPLAIN ANALYZE` of the same WHERE and ORDER BY).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ragway::audit::row::{Price, Row, RowBuilder, TextMode};
use ragway::audit::spool::Spool;
use ragway::audit::store::AuditStore;
use ragway::audit::store::postgres::PgStore;
use ragway::audit::writer::{AuditWriter, WriterSettings};
use ragway::audit::{AuditSink, CallRecord, Origin, PassageRef};
use ragway::call::{Attempt, CacheStatus, Outcome};
use ragway::telemetry::Metrics;
use sqlx::Connection;

#[path = "common/postgres.rs"]
mod common;

const ROWS: usize = 1_000_000;
const BATCH: usize = 1_000;
const BASELINE_ROWS: usize = 5_000;
const HANDED: usize = 100_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let url = common::fresh_database("ragway_bench_audit").await;
    let store = Arc::new(PgStore::connect_lazy(&url).unwrap());
    store.migrate().await.unwrap();
    let builder = RowBuilder {
        text: TextMode::Full,
        prices: [(
            "deepseek:deepseek-chat".to_owned(),
            Price {
                input: 2.0,
                cached_input: None,
                output: 8.0,
            },
        )]
        .into(),
        redact: Arc::new(ragway::audit::SecretsOnly),
    };
    let template = builder.row(record(0));
    println!(
        "row as the writer sees it: {} bytes of JSON",
        serde_json::to_string(&template).unwrap().len()
    );

    // 1. Baseline: one row per transaction.
    let started = Instant::now();
    for i in 0..BASELINE_ROWS {
        store
            .append("bench-single", &[numbered(&template, i)], None)
            .await
            .unwrap();
    }
    let single = BASELINE_ROWS as f64 / started.elapsed().as_secs_f64();
    println!("baseline, one row per transaction: {single:.0} rows/s ({BASELINE_ROWS} rows)");

    // Batched COPY, as the writer sends it.
    let started = Instant::now();
    let mut minute_rates = Vec::new();
    let mut mark = (Instant::now(), 0usize);
    for b in 0..ROWS / BATCH {
        let batch: Vec<Row> = (0..BATCH)
            .map(|i| numbered(&template, b * BATCH + i))
            .collect();
        store.append("bench-batch", &batch, None).await.unwrap();
        if mark.0.elapsed() >= Duration::from_secs(10) {
            let done = (b + 1) * BATCH;
            minute_rates.push((done - mark.1) as f64 / mark.0.elapsed().as_secs_f64());
            mark = (Instant::now(), done);
        }
    }
    let elapsed = started.elapsed();
    let batched = ROWS as f64 / elapsed.as_secs_f64();
    println!(
        "batched COPY ({BATCH} rows per transaction): {batched:.0} rows/s over {ROWS} rows in {:.1} s; per 10 s: {:?}; {:.1}x the baseline",
        elapsed.as_secs_f64(),
        minute_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        batched / single
    );

    // 3. Size per million rows.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("ANALYZE audit_calls")
        .execute(&mut conn)
        .await
        .unwrap();
    let (heap, total): (i64, i64) = sqlx::query_as(
        "SELECT sum(pg_table_size(inhrelid))::int8, sum(pg_total_relation_size(inhrelid))::int8 \
         FROM pg_inherits WHERE inhparent = 'audit_calls'::regclass",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let names: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('audit_names')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let rows = (ROWS + BASELINE_ROWS) as f64;
    let per_million = |bytes: i64| bytes as f64 / rows * 1e6 / (1 << 20) as f64;
    println!(
        "size per million rows: {:.0} MiB in all (heap + TOAST {:.0} MiB, indexes {:.0} MiB); names {} kB in all",
        per_million(total),
        per_million(heap),
        per_million(total - heap),
        names / 1024
    );

    searches(&store, &mut conn).await;

    // 2. Hand-over cost and the writer end to end, at two offered rates.
    for rate in [10_000, 20_000] {
        hand_over(&store, &builder, rate, &mut conn).await;
    }
}

/// `HANDED` records offered at `rate` per second to a writer over `store`: the
/// cost of each `record()` call, and how the writer kept up.
async fn hand_over(
    store: &Arc<PgStore>,
    builder: &RowBuilder,
    rate: u64,
    conn: &mut sqlx::PgConnection,
) {
    let instance = format!("bench-writer-{rate}");
    let spool_dir =
        std::env::temp_dir().join(format!("ragway-bench-spool-{}-{rate}", std::process::id()));
    let metrics = Arc::new(Metrics::new());
    let writer = AuditWriter::start(
        Arc::clone(store) as Arc<dyn AuditStore>,
        Arc::new(Spool::open(&spool_dir, &instance).unwrap()),
        builder.clone(),
        WriterSettings {
            instance: instance.clone(),
            queue: 10_000,
            batch_rows: BATCH,
            flush_every: Duration::from_millis(100),
            write_timeout: Duration::from_secs(5),
            shutdown_deadline: Duration::from_secs(60),
            retention: None,
        },
        Arc::clone(&metrics),
    );
    let records: Vec<CallRecord> = (0..HANDED).map(record).collect();
    let mut costs = Vec::with_capacity(HANDED);
    let per_thousand = Duration::from_secs(1000) / u32::try_from(rate).unwrap();
    let started = Instant::now();
    for (i, r) in records.into_iter().enumerate() {
        let t = Instant::now();
        writer.record(r);
        costs.push(t.elapsed());
        if i % 1_000 == 999 {
            let due = started + per_thousand * u32::try_from((i + 1) / 1_000).unwrap();
            tokio::time::sleep_until(due.into()).await;
        }
    }
    writer.finish(std::time::Duration::from_secs(60)).await;
    let end_to_end = started.elapsed();
    costs.sort_unstable();
    let pct = |p: f64| costs[((costs.len() as f64 * p) as usize).min(costs.len() - 1)];
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE instance = $1")
        .bind(&instance)
        .fetch_one(conn)
        .await
        .unwrap();
    let exposition = metrics.render();
    let spooled = exposition
        .lines()
        .find_map(|l| l.strip_prefix("ragway_audit_spooled_total "))
        .unwrap_or("0");
    println!(
        "hand-over at {rate}/s (record()): p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}; {HANDED} records written in {:.2} s ({written} rows, {spooled} through the spool)",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        costs[costs.len() - 1],
        end_to_end.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(spool_dir);
}

/// A fresh database named `name` on `server`; returns its URL.
/// Row `i`: 40 tenants, 10 keys each, one row in 50 an upstream error.
fn numbered(template: &Row, i: usize) -> Row {
    let mut row = template.clone();
    row.request_id = format!("req-{i:08}");
    row.at_us = ragway::audit::time::now_micros();
    row.tenant = Some(format!("tenant-{}", i % 40));
    row.client_key = Some(format!("key-{}", i % 400));
    if i % 50 == 7 {
        row.status = 502;
        row.outcome = "error".to_owned();
    }
    row
}

/// Part 4: the console's searches (`GET /console/api/audit`, as the admin
/// API's `GET /admin/audit` makes them), each run 5 times; the plan of each.
async fn searches(store: &PgStore, conn: &mut sqlx::PgConnection) {
    use ragway::audit::store::{Query, Range};
    let now = ragway::audit::time::now_micros();
    let day = Range {
        since: Some(now - 86_400_000_000),
        until: None,
    };
    let ids = |kind: &'static str, name: &'static str| {
        format!("(SELECT id FROM audit_names WHERE kind = '{kind}' AND name = '{name}')")
    };
    let cases: Vec<(&str, Query, String)> = vec![
        (
            "newest 100, no filter",
            Query {
                limit: 100,
                ..Query::default()
            },
            "true".to_owned(),
        ),
        (
            "a tenant, last 24 h",
            Query {
                tenant: Some("tenant-17".into()),
                range: day,
                limit: 100,
                ..Query::default()
            },
            format!(
                "tenant_id = {} AND at >= now() - interval '1 day'",
                ids("tenant", "tenant-17")
            ),
        ),
        (
            "a key",
            Query {
                key: Some("key-123".into()),
                limit: 100,
                ..Query::default()
            },
            format!("key_id = {}", ids("key", "key-123")),
        ),
        (
            "errors (by outcome)",
            Query {
                outcome: Some("error".into()),
                limit: 100,
                ..Query::default()
            },
            format!("outcome_id = {}", ids("outcome", "error")),
        ),
        (
            "a tenant's errors",
            Query {
                tenant: Some("tenant-7".into()),
                outcome: Some("error".into()),
                limit: 100,
                ..Query::default()
            },
            format!(
                "tenant_id = {} AND outcome_id = {}",
                ids("tenant", "tenant-7"),
                ids("outcome", "error")
            ),
        ),
        (
            "a request id",
            Query {
                request_id: Some("req-00654321".into()),
                limit: 100,
                ..Query::default()
            },
            "request_id = 'req-00654321'".to_owned(),
        ),
        (
            "1,000 rows, no filter",
            Query {
                limit: 1_000,
                ..Query::default()
            },
            "true".to_owned(),
        ),
    ];
    println!("| console search over {ROWS} rows | rows | p50 ms | max ms | plan |");
    println!("|---|---:|---:|---:|---|");
    for (name, query, sql_where) in cases {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..5 {
            let started = Instant::now();
            found = store.query(&query).await.unwrap().len();
            times.push(started.elapsed());
        }
        times.sort();
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT * FROM audit_calls \
             WHERE {sql_where} ORDER BY at DESC, seq DESC LIMIT {}",
            query.limit
        ))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        // The plan's nodes, in one line: which index (or scan) each uses.
        let nodes: Vec<String> = plan
            .iter()
            .map(|line| line.trim().trim_start_matches("->").trim().to_owned())
            .filter(|line| line.contains("Scan") || line.contains("Sort") || line.contains("Limit"))
            .collect();
        println!(
            "| {name} | {found} | {:.1} | {:.1} | {} |",
            times[2].as_secs_f64() * 1e3,
            times[4].as_secs_f64() * 1e3,
            nodes.join(" → ")
        );
    }
}

/// A typical grounded chat call: a 3-message prompt, a short answer, one attempt,
/// three passages, one phone number masked.
fn record(i: usize) -> CallRecord {
    let prompt = serde_json::json!([
        {"role": "system", "content": "You are the support assistant of Lumio. Answer from the passages; cite them."},
        {"role": "user", "content": "My Lumio Hub (order 2024-118-7731) keeps dropping Wi-Fi after the last update. Call me on <PHONE_1> if needed."},
        {"role": "assistant", "content": "Sorry to hear that. Which firmware version does the hub show in the app?"},
        {"role": "user", "content": "It says 4.2.1. What should I try?"}
    ]);
    CallRecord {
        at: SystemTime::now(),
        request_id: format!("handed-{i:08}"),
        origin: Origin {
            route: "/v1/chat/completions".into(),
            client_ip: Some("10.1.2.3".parse().unwrap()),
            user_agent: Some("OpenAI/Python 1.54.0".into()),
            request_id_is_ours: false,
        },
        tenant: Some("acme".into()),
        key_id: Some("support-bot".into()),
        user: Some(format!("user-{}", i % 5_000)),
        alias: Some("chat".into()),
        target: Some("deepseek:deepseek-chat".into()),
        local: false,
        attempts: vec![Attempt {
            kind: Default::default(),
            target: "deepseek:deepseek-chat".into(),
            latency: Duration::from_millis(812),
            failure: None,
        }],
        stream: true,
        cache: Some(CacheStatus::Miss),
        status: 200,
        outcome: Outcome::Ok,
        error: None,
        latency: Duration::from_millis(830),
        time_to_first_token: Some(Duration::from_millis(240)),
        usage: serde_json::from_value(serde_json::json!({"prompt_tokens": 412, "completion_tokens": 96, "total_tokens": 508})).ok(),
        answer_chars: 280,
        pii: vec![("mobile", 1)],
        prompt: prompt.to_string(),
        answer: "Firmware 4.2.1 has a known Wi-Fi issue [1]. Update to 4.2.3 in the app under Settings → Firmware, then restart the hub [2]. If it still drops, reset the network settings [3].".to_owned(),
        passages: (0..3)
            .map(|c| PassageRef {
                doc_id: "kb/lumio-hub-troubleshooting.md".to_owned(),
                chunk: c,
                score: 0.031_25 + c as f32 / 100.0,
            })
            .collect(),
    }
}
