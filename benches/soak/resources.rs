//! The gateway's memory, threads and CPU time, from /proc.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The gateway's RSS and CPU time, read from /proc every 5 s while the load runs.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, Default)]
pub struct Sample {
    /// When it was read, from the start of the load.
    pub at: Duration,
    pub rss_kib: u64,
    /// The part of RSS that is the heap (the rest: mapped files, the model's weights).
    pub anon_kib: u64,
    pub threads: u64,
    pub cpu_ticks: u64,
}

impl Sampler {
    /// Samples `pid`, timed from `start` (the load's own start).
    pub fn start(pid: u32, start: Instant) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let list = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                let at = tick.tick().await.into_std().duration_since(start);
                if let Some(mut sample) = read_proc(pid) {
                    sample.at = at;
                    list.lock().unwrap().push(sample);
                }
            }
        });
        Sampler { samples, task }
    }

    pub async fn stop(self) -> Vec<Sample> {
        self.task.abort();
        let _ = self.task.await;
        self.samples.lock().unwrap().clone()
    }
}

/// A process's memory, threads and CPU time (its `at` left zero).
fn read_proc(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find_map(|l| l.strip_prefix(name))?;
        line.trim().trim_end_matches(" kB").parse().ok()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Sample {
        at: Duration::ZERO,
        rss_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
        threads: field("Threads:")?,
        cpu_ticks: ticks,
    })
}
