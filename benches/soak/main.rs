//! Soak (`make soak`): the whole pipeline at a fixed rate on loopback, ten minutes by
//! default, bounded in time and count.
//!
//! The release `ragway` binary serves with every stage on: PII placeholders, the
//! answer cache (memory, and Redis behind it), retrieval over the embedded Qdrant
//! store (the labelled corpus under tests/data/rag, ingested first) and the audit
//! trail into Postgres. Its one provider is an upstream in this process that answers
//! after 50 ms, echoing the user's (sanitised) question back, so the gateway has to
//! restore the user's data in the answer.
//!
//! The load is open-loop: request i leaves at start + i / rate whatever happened to
//! the ones before, and its latency counts from that moment, so a stall shows as
//! latency rather than as a slower rate. Traffic: a quarter are the labelled
//! questions at temperature 0 (the cache serves repeats); the rest carry a mobile
//! number, an ID card and a bank card, each request its own, so they go through
//! retrieval, sanitising, the upstream and restoring. Most of those are not
//! cacheable (no temperature); one in five is, so that one caller's cached answer
//! is served to the next, who must get their own data back in it. One in five is streamed. Every answer is checked: status 200, the
//! user's data back in it, a stream ending in `[DONE]`; the upstream counts any
//! request in which a raw identifier arrived.
//!
//! Reported: each minute's requests, errors, p50/p99/max and the gateway's RSS;
//! throughput; cache results; RSS at the end of the warm-up and at the end; audit
//! rows against requests sent; the hash chain verified after a graceful stop. Exits
//! 1 when a goal is missed.
//!
//!   SOAK_RATE=40 SOAK_SECS=600 SOAK_WARMUP_SECS=60 cargo bench --bench soak
//!
//! The work directory (config, gateway log, vector store) is removed when every goal
//! is met and kept, its path printed, otherwise.

mod audit;
#[path = "../common/postgres.rs"]
mod common;
mod gateway;
mod load;
mod report;
mod resources;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use gateway::Gateway;

const UPSTREAM_DELAY: Duration = Duration::from_millis(50);
const CLIENT_KEY: &str = "soak-client-key";

pub struct Settings {
    pub rate: u64,
    pub secs: u64,
    pub warmup: u64,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let var = |name: &str, default: u64| match std::env::var(name) {
            Err(_) => Ok(default),
            Ok(v) => v
                .parse()
                .ok()
                .filter(|&v: &u64| v > 0)
                .ok_or(format!("{name}={v}: give a positive whole number")),
        };
        let settings = Settings {
            rate: var("SOAK_RATE", 40)?,
            secs: var("SOAK_SECS", 600)?,
            warmup: var("SOAK_WARMUP_SECS", 60)?,
        };
        if settings.rate > 10_000 || settings.total() > 10_000_000 {
            return Err("SOAK_RATE is at most 10,000, and 10,000,000 requests in all".into());
        }
        Ok(settings)
    }

    pub fn total(&self) -> u64 {
        self.rate * (self.warmup + self.secs)
    }
}

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(problem) => {
            eprintln!("soak: {problem}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the runtime");
    if runtime.block_on(run(settings)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(settings: Settings) -> bool {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("ragway-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("create the work directory");
    let database = common::fresh_database("ragway_soak").await;
    let redis_prefix = format!("ragway:soak:{}:", std::process::id());

    let upstream = upstream::Upstream::start().await;
    let gateway = Gateway::start(&repo, &work, upstream.port, &database, &redis_prefix).await;
    gateway.ingest(&repo.join("tests/data/rag/docs")).await;

    println!(
        "soak: {} requests/s for {} s after a {} s warm-up ({} requests), upstream {} ms",
        settings.rate,
        settings.secs,
        settings.warmup,
        settings.total(),
        UPSTREAM_DELAY.as_millis()
    );
    let start = std::time::Instant::now();
    let sampler = resources::Sampler::start(gateway.pid(), start);
    let outcomes = load::drive(&gateway, &settings, &load::questions(&repo), start).await;
    let samples = sampler.stop().await;

    let drained = audit::count_rows(&database, settings.total()).await;
    let metrics = gateway.scrape().await;
    let stopped = gateway.stop().await;
    let after_stop = audit::count_rows(&database, settings.total()).await;
    let verified = gateway::verify_chain(&repo, &work, &database).await;
    gateway::clear_redis(&redis_prefix).await;

    let report = report::Report {
        settings: &settings,
        outcomes: &outcomes,
        samples: &samples,
        drained,
        after_stop,
        upstream: upstream.counts(),
        metrics: &metrics,
        stopped,
        verified,
    };
    let passed = report.print();
    if passed {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!(
            "kept for a look: {} (gateway.log, ragway.toml)",
            work.display()
        );
    }
    passed
}
