//! The admission point's own cost: one call admitted and settled through
//! `Admission` — a managed key and its tenant, each with rpm, tpm, tpd, concurrency
//! and a budget (nine counters) — with the counters in memory, then in Redis
//! (127.0.0.1:6379, or REDIS_URL). Prints p50, p99 and the mean of admit + settle,
//! measured one call at a time after a warm-up.
//!
//!   cargo bench --bench admission            (ADMISSION_CALLS=20000 by default)

use std::sync::Arc;
use std::time::{Duration, Instant};

use ragway::admit::ClientKeys;
use ragway::admit::admission::{Admission, Admit, Ask, BudgetSettings, Used};
use ragway::admit::grant::{Budget, KeyRecord, Limits, Period, TenantRecord};
use ragway::admit::store::KeyStore;
use ragway::call::{CacheControl, Call, Caller, ModelAccess, Price};
use ragway::quota::Counters;
use ragway::quota::memory::MemoryCounters;
use ragway::quota::redis::{OnDown, RedisCounters};
use ragway::resilience::redis::GuardedRedis;
use ragway::telemetry::Metrics;

fn main() {
    let calls: usize = std::env::var("ADMISSION_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("ragway-admission-{}", std::process::id()));
        let keys =
            Arc::new(ClientKeys::default().with_store(
                KeyStore::open(&format!("sqlite://{}/keys.db", dir.display())).unwrap(),
            ));
        let limits = Limits {
            rpm: Some(1_000_000_000),
            tpm: Some(1_000_000_000_000),
            tpd: Some(1_000_000_000_000),
            concurrency: Some(1_000_000),
        };
        let budget = Some(Budget {
            amount: 1e12,
            period: Period::Month,
        });
        keys.learn(KeyRecord {
            id: "key_bench".into(),
            sha256: [7; 32],
            name: String::new(),
            tenant: "bench".into(),
            models: Vec::new(),
            limits,
            budget,
            metadata: Default::default(),
            expires_us: None,
            revoked_us: None,
            created_us: 0,
            updated_us: 0,
        });
        keys.learn_tenant(TenantRecord {
            tenant: "bench".into(),
            limits,
            budget,
            updated_us: 0,
        });
        let memory: Arc<dyn Counters> = Arc::new(MemoryCounters::default());
        report("memory", &admission(&keys, memory), calls).await;
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let redis = GuardedRedis::new(&url, None, Duration::from_millis(500), "bench").unwrap();
        let prefix = format!("ragway:bench:{}:", std::process::id());
        let metrics = Arc::new(Metrics::new());
        let shared: Arc<dyn Counters> = Arc::new(RedisCounters::new(
            redis,
            &prefix,
            OnDown::Closed,
            "bench",
            metrics,
        ));
        report("redis", &admission(&keys, shared), calls).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

fn admission(keys: &Arc<ClientKeys>, counters: Arc<dyn Counters>) -> Admission {
    let price = Price {
        input: 2.0,
        cached_input: Some(0.5),
        output: 8.0,
    };
    Admission::new(
        Arc::clone(keys),
        counters,
        Arc::new(Metrics::new()),
        512,
        [("p:m".to_owned(), price)].into(),
        [("chat".to_owned(), price)].into(),
        BudgetSettings {
            currency: "CNY".into(),
            soft: 0.8,
            offset: time::UtcOffset::UTC,
        },
    )
}

async fn report(name: &str, admission: &Admission, calls: usize) {
    let caller = Caller {
        tenant: "bench".into(),
        key_id: Some("key_bench".into()),
        models: ModelAccess::All,
    };
    let mut took = Vec::with_capacity(calls);
    for i in 0..calls + calls / 10 {
        let id = format!("req-{i}");
        let call = Call {
            request_id: &id,
            caller: &caller,
            alias: "chat",
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
            stream: false,
            cache_control: CacheControl::default(),
            corpus_version: None,
        };
        let ask = Ask {
            prompt_tokens: 40,
            max_output: Some(200),
        };
        let started = Instant::now();
        let permit = admission.admit(&call, ask).await.expect("admitted");
        let used = Used {
            prompt_tokens: 38,
            cached_tokens: 10,
            completion_tokens: 120,
            target: Some("p:m".into()),
        };
        admission.settle(permit, used).await;
        // The first tenth warms up.
        if i >= calls / 10 {
            took.push(started.elapsed());
        }
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    let mean = took.iter().sum::<Duration>() / took.len() as u32;
    println!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} |",
        took.len(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
}
