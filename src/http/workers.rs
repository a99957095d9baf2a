//! Connection workers: one thread per core, each running its own single-threaded
//! runtime, and each connection served start to finish by one of them.
//!
//! On a work-stealing runtime, a request's wake-ups (the client's bytes, the
//! upstream's answer, the stream task) land on whichever worker is free, and the
//! others are woken to steal: about one cross-thread wake-up per request, a
//! measurable share of the gateway's CPU. Here the listener hands each accepted
//! connection to the next worker in turn, and everything that connection starts —
//! its requests, their upstream connections (see `generate::upstream`), the tasks
//! that shape streams — runs on that worker's thread.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Where connections are served.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Tells the threads when to stop; dropping it stops them at once.
    release: Option<watch::Sender<Release>>,
}

#[derive(Clone)]
enum Release {
    /// Serving.
    Hold,
    /// Connections are done: run until this tracker is closed and empty (streams'
    /// ends and cache stores were spawned on the workers).
    After(TaskTracker),
}

impl Workers {
    /// `count` threads named `ragway-worker-N`.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let (release, watching) = watch::channel(Release::Hold);
        let mut handles = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let watching = watching.clone();
            std::thread::Builder::new()
                .name(format!("ragway-worker-{index}"))
                .spawn(move || runtime.block_on(hold(watching)))?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            release: Some(release),
        })
    }

    /// Connections served on the runtime already running (a side listener that
    /// sees little traffic, such as `/metrics`).
    pub fn current() -> Workers {
        Workers {
            handles: vec![Handle::current()],
            next: AtomicUsize::new(0),
            release: None,
        }
    }

    /// The worker for the next connection: round robin, so that connections (not
    /// the kernel's hash of their addresses) share the cores evenly.
    pub fn next(&self) -> &Handle {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[index]
    }

    /// The threads go on until `tasks` is closed and empty, then stop.
    pub fn release_after(mut self, tasks: TaskTracker) {
        if let Some(release) = self.release.take() {
            // A value sent before the sender closes is still read as a change.
            let _ = release.send(Release::After(tasks));
        }
    }
}

/// A worker thread's life: serve until released, and when released after a
/// tracker, until its work is done. A closed channel (the `Workers` dropped without
/// a release, e.g. a server future cancelled) stops the thread at once; the
/// runtime then drops what is still on it.
async fn hold(mut watching: watch::Receiver<Release>) {
    loop {
        let current = watching.borrow_and_update().clone();
        if let Release::After(tasks) = current {
            tasks.wait().await;
            return;
        }
        if watching.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn connections_go_round_the_workers_each_on_its_own_thread() {
        let workers = Workers::start(2).unwrap();
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(workers.next().spawn(async { thread_name() }).await.unwrap());
        }
        assert_eq!(
            names,
            [
                "ragway-worker-0",
                "ragway-worker-1",
                "ragway-worker-0",
                "ragway-worker-1"
            ]
        );
    }

    #[tokio::test]
    async fn released_workers_finish_tracked_work_and_dropped_ones_stop() {
        let workers = Workers::start(1).unwrap();
        let tasks = TaskTracker::new();
        let (done, finished) = tokio::sync::oneshot::channel();
        // Tracked when spawned, as the pipeline's background work is.
        workers.next().spawn(tasks.track_future(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done.send(());
        }));
        workers.release_after(tasks.clone());
        tasks.close();
        finished
            .await
            .expect("tracked work ran to its end after the release");

        let workers = Workers::start(1).unwrap();
        let (_never, pending) = tokio::sync::oneshot::channel::<()>();
        let (dropped, gone) = tokio::sync::oneshot::channel::<()>();
        workers.next().spawn(async move {
            let _closed_when_dropped = dropped;
            let _ = pending.await;
        });
        drop(workers);
        tokio::time::timeout(Duration::from_secs(5), gone)
            .await
            .expect("the worker stopped and dropped its task")
            .unwrap_err();
    }
}
