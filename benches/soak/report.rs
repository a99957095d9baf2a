//! What the soak prints: a row per minute, the totals, and the goals met or missed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Settings;
use crate::audit::AuditCount;
use crate::load::Outcome;
use crate::resources::Sample;

/// Clock ticks per second of /proc's CPU times (USER_HZ: 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;
/// How far from a moment a memory sample may be to stand for it.
const SAMPLE_SLACK: Duration = Duration::from_secs(6);

pub struct Report<'a> {
    pub settings: &'a Settings,
    pub outcomes: &'a [Outcome],
    pub samples: &'a [Sample],
    /// The audit rows once the load ended, and after the graceful stop.
    pub drained: AuditCount,
    pub after_stop: AuditCount,
    /// (requests the upstream saw, of which with a raw identifier).
    pub upstream: (u64, u64),
    pub metrics: &'a str,
    pub stopped: bool,
    pub verified: (bool, String),
}

impl Report<'_> {
    fn warmup(&self) -> Duration {
        Duration::from_secs(self.settings.warmup)
    }

    fn end(&self) -> Duration {
        self.warmup() + Duration::from_secs(self.settings.secs)
    }

    /// Prints everything; whether every goal was met.
    pub fn print(&self) -> bool {
        let minutes = self.table();
        self.totals();
        self.goals(&minutes)
    }

    /// A row for the warm-up and for each minute measured; each full minute's p99.
    fn table(&self) -> Vec<Duration> {
        println!();
        println!(
            "| minute | sent | errors | p50 ms | p99 ms | max ms | RSS MiB at end | heap MiB | threads |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        self.row("warm-up", Duration::ZERO, self.warmup());
        let minute = Duration::from_secs(60);
        let (mut from, mut n, mut full) = (self.warmup(), 1, Vec::new());
        while from < self.end() {
            let to = (from + minute).min(self.end());
            let p99 = self.row(&n.to_string(), from, to);
            if to - from == minute {
                full.push(p99);
            }
            (from, n) = (to, n + 1);
        }
        full
    }

    /// Prints one row for the requests due in [from, to); their p99.
    fn row(&self, label: &str, from: Duration, to: Duration) -> Duration {
        let window: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|o| o.due >= from && o.due < to)
            .collect();
        let errors = window.iter().filter(|o| o.error.is_some()).count();
        let (p50, p99, max) = percentiles(window.iter().map(|o| o.latency));
        let sample = self.sample_near(to).unwrap_or_default();
        println!(
            "| {label} | {} | {errors} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            window.len(),
            ms(p50),
            ms(p99),
            ms(max),
            mib(sample.rss_kib),
            mib(sample.anon_kib),
            sample.threads
        );
        p99
    }

    fn totals(&self) {
        let measured: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|o| o.due >= self.warmup())
            .collect();
        let ok = measured.iter().filter(|o| o.error.is_none()).count();
        let (p50, p99, _) = percentiles(measured.iter().map(|o| o.latency));
        let errors: Vec<&str> = self
            .outcomes
            .iter()
            .filter_map(|o| o.error.as_deref())
            .collect();
        let mut cache: BTreeMap<&str, usize> = BTreeMap::new();
        for o in self.outcomes.iter().filter(|o| o.error.is_none()) {
            *cache.entry(o.cache.as_str()).or_default() += 1;
        }
        let cited = self.outcomes.iter().filter(|o| o.cited).count();
        let sent = self.outcomes.len();
        println!();
        println!(
            "throughput: {:.1} answers/s over the {} s measured ({ok} answered; {sent} sent in all); \
             p50 {:.1} ms, p99 {:.1} ms",
            ok as f64 / self.settings.secs as f64,
            self.settings.secs,
            ms(p50),
            ms(p99)
        );
        println!("errors: {} of {sent}", errors.len());
        for error in errors.iter().take(5) {
            println!("  {error}");
        }
        println!("cache results: {cache:?}; answers citing passages: {cited} of {sent}");
        println!(
            "upstream: {} requests, {} with a raw identifier in them",
            self.upstream.0, self.upstream.1
        );
        self.memory();
        self.audit(sent as i64);
    }

    fn memory(&self) {
        let (warmup, end) = (self.warmup(), self.end());
        let (start, last) = (self.sample_near(warmup), self.sample_near(end));
        let peak = self
            .samples
            .iter()
            .max_by_key(|s| s.rss_kib)
            .copied()
            .unwrap_or_default();
        if let (Some(start), Some(last)) = (start, last) {
            println!(
                "gateway RSS: {:.1} MiB at the end of the warm-up, {:.1} MiB at the end ({:+.1} %), \
                 peak {:.1} MiB at {} s; threads {} → {}; CPU {:.2} cores on average while measured",
                mib(start.rss_kib),
                mib(last.rss_kib),
                growth(start.rss_kib, last.rss_kib),
                mib(peak.rss_kib),
                peak.at.as_secs(),
                start.threads,
                last.threads,
                cpu_cores(&start, &last)
            );
        }
        println!(
            "gateway memory trend while measured (least squares over the 5 s samples): \
             RSS {:+.2} MiB/min, heap {:+.2} MiB/min",
            self.trend(|s| s.rss_kib),
            self.trend(|s| s.anon_kib)
        );
    }

    fn audit(&self, sent: i64) {
        let (drained, after) = (&self.drained, &self.after_stop);
        println!(
            "audit: {sent} requests sent; {} rows ({} distinct request ids, {} with status 200) \
             {:.1} s after the last answer{}; after the stop {} rows, {} distinct, {} missing",
            drained.rows,
            drained.distinct,
            drained.ok_rows,
            drained.waited.as_secs_f64(),
            if drained.complete {
                ""
            } else {
                " (gave up waiting)"
            },
            after.rows,
            after.distinct,
            sent - after.distinct
        );
        for name in [
            "ragway_audit_spooled_total",
            "ragway_audit_rows_written_total",
        ] {
            println!("  {name} {}", metric(self.metrics, name));
        }
        println!(
            "graceful stop (SIGTERM): {}; audit verify: {}",
            if self.stopped { "exit 0" } else { "FAILED" },
            self.verified.1
        );
    }

    /// Prints each goal; whether all were met. `minutes`: each full minute's p99.
    fn goals(&self, minutes: &[Duration]) -> bool {
        let sent = self.outcomes.len() as i64;
        let errors = self.outcomes.iter().filter(|o| o.error.is_some()).count();
        let memory = match (
            self.sample_near(self.warmup()),
            self.sample_near(self.end()),
        ) {
            (Some(a), Some(b)) => Some(growth(a.rss_kib, b.rss_kib)),
            _ => None,
        };
        let drift = match minutes {
            [first, .., last] => {
                let drift = (ms(*last) / ms(*first) - 1.0) * 100.0;
                println!();
                println!(
                    "p99 first minute {:.1} ms, last {:.1} ms ({drift:+.1} %)",
                    ms(*first),
                    ms(*last)
                );
                Some(drift)
            }
            _ => None,
        };
        let goals = [
            ("zero errors", Some(errors == 0)),
            (
                "zero audit rows missing (nor repeated), before and after the stop",
                Some(
                    self.drained.complete
                        && self.after_stop.distinct == sent
                        && self.after_stop.rows == sent,
                ),
            ),
            (
                "audit chain verifies after a graceful stop",
                Some(self.stopped && self.verified.0),
            ),
            ("RSS growth < 10 % after warm-up", memory.map(|g| g < 10.0)),
            (
                "p99 of the last minute within 20 % of the first",
                drift.map(|d| d.abs() <= 20.0),
            ),
            (
                "requests reached the upstream, none with a raw identifier",
                Some(self.upstream.0 > 0 && self.upstream.1 == 0),
            ),
        ];
        println!();
        for (goal, met) in &goals {
            let verdict = match met {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "FAIL (not measured: too short a run or no /proc samples)",
            };
            println!("{verdict} {goal}");
        }
        goals.iter().all(|(_, met)| *met == Some(true))
    }

    /// The sample closest to `at`, if one was taken within a few seconds of it.
    fn sample_near(&self, at: Duration) -> Option<Sample> {
        let distance = |s: &Sample| s.at.abs_diff(at);
        let closest = self.samples.iter().min_by_key(|s| distance(s))?;
        (distance(closest) <= SAMPLE_SLACK).then_some(*closest)
    }

    /// The slope of a memory figure over the samples of the measured window, in MiB
    /// per minute.
    fn trend(&self, figure: impl Fn(&Sample) -> u64) -> f64 {
        let points: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.at >= self.warmup() && s.at <= self.end())
            .map(|s| (s.at.as_secs_f64() / 60.0, mib(figure(s))))
            .collect();
        let n = points.len() as f64;
        let mean = |f: fn(&(f64, f64)) -> f64| points.iter().map(f).sum::<f64>() / n;
        let (mean_x, mean_y) = (mean(|p| p.0), mean(|p| p.1));
        let covariance: f64 = points
            .iter()
            .map(|(x, y)| (x - mean_x) * (y - mean_y))
            .sum();
        let variance: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
        if variance > 0.0 {
            covariance / variance
        } else {
            0.0
        }
    }
}

fn growth(from_kib: u64, to_kib: u64) -> f64 {
    (to_kib as f64 / from_kib.max(1) as f64 - 1.0) * 100.0
}

fn cpu_cores(from: &Sample, to: &Sample) -> f64 {
    let seconds = to.at.saturating_sub(from.at).as_secs_f64();
    if seconds == 0.0 {
        return 0.0;
    }
    to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / TICKS_PER_SEC / seconds
}

/// p50, p99 and max (nearest rank).
fn percentiles(latencies: impl Iterator<Item = Duration>) -> (Duration, Duration, Duration) {
    let mut sorted: Vec<Duration> = latencies.collect();
    if sorted.is_empty() {
        return Default::default();
    }
    sorted.sort_unstable();
    let rank = |q: f64| ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    (
        sorted[rank(0.50)],
        sorted[rank(0.99)],
        sorted[sorted.len() - 1],
    )
}

fn metric(metrics: &str, name: &str) -> String {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("absent")
        .to_owned()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
