//! The model's CPU work on the request path (embedding questions, cutting words,
//! `/v1/embeddings`) runs on a fixed set of threads, one per core, rather than on
//! tokio's blocking pool.
//!
//! Why: the blocking pool adds a thread whenever the calls overlap more than before
//! (a latency spike is enough), and every thread that has run the model keeps its
//! own allocator pages and scratch buffers: in a ten-minute soak the gateway's heap
//! grew in steps of ~15 MiB as the pool added threads (docs/BENCHMARKS.md, "Soak").
//! CPU work cannot run faster than the cores anyway: past them, it waits
//! its turn here. Ingesting a document (long, rare) stays on the blocking pool, so it
//! does not hold up questions.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// Runs `work` on one of the compute threads and waits for its result. A panic in
/// `work` is returned as an error (the thread carries on).
pub async fn run<T, F>(work: F) -> Result<T, Panicked>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (reply, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = reply.send(catch_unwind(AssertUnwindSafe(work)).map_err(|_| Panicked));
    });
    queue().send(job).map_err(|_| Panicked)?;
    result.await.map_err(|_| Panicked)?
}

/// A computation panicked (or its thread could not take it).
#[derive(Debug, thiserror::Error)]
#[error("a computation panicked")]
pub struct Panicked;

/// The jobs' queue; the threads start with the first job.
fn queue() -> &'static Sender<Job> {
    static QUEUE: OnceLock<Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        for i in 0..threads {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("ragway-compute-{i}"))
                .spawn(move || work(&receiver))
                .expect("start a compute thread");
        }
        sender
    })
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, not while running it.
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_come_back_and_a_panic_is_an_error() {
        assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
        assert!(run(|| -> u32 { panic!("boom") }).await.is_err());
        // The threads survive the panic.
        let answers: Vec<usize> = futures_util::future::join_all((0..16).map(|i| run(move || i)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(answers, (0..16).collect::<Vec<_>>());
    }
}
