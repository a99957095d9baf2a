//! Where log lines go: appended to one buffer in memory, written to stderr by a
//! background thread in batches.
//!
//! Why not a channel with a thread woken per line: at one access-log line per
//! request, waking the writer for every line (and the writer spinning and yielding
//! before it sleeps again) cost more CPU than the rest of a request's proxying
//! (docs/BENCHMARKS.md, "Gateway overhead"). Here a line costs one uncontended
//! lock and a copy; the writer wakes every [`FLUSH_EVERY`], or early once a batch
//! is large, and writes (and scrubs of secrets) the whole batch at once.
//!
//! Nothing is dropped: past [`HOLD_AT_MOST`] bytes waiting (stderr blocked), the
//! logging thread waits for the writer, as a full lossless queue would.

use std::io::Write;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The longest a line waits before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A batch this large wakes the writer at once.
const WAKE_AT: usize = 256 * 1024;
/// Past this many bytes waiting, loggers wait for the writer.
const HOLD_AT_MOST: usize = 16 * 1024 * 1024;
/// How long the exit waits for the last batch: a blocked stderr must not hold it.
const LAST_WRITE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    waiting: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer early: a large batch, or closing.
    wake: Condvar,
    /// Wakes loggers held back at [`HOLD_AT_MOST`].
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while appending leaves at worst a partial line: keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` handed to the subscriber.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

/// Flushes what is waiting and stops the writer when dropped (waiting at most
/// [`LAST_WRITE`] for it): keep it until exit.
pub struct LogGuard {
    shared: Arc<Shared>,
    /// Disconnected when the writer has finished.
    finished: mpsc::Receiver<()>,
}

/// Starts the writer thread over `out`; each batch passes through `scrub` first.
pub fn start<W>(out: W, scrub: fn(&str) -> std::borrow::Cow<'_, str>) -> (LogSink, LogGuard)
where
    W: Write + Send + 'static,
{
    let shared = Arc::new(Shared::default());
    let (done, finished) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("ragway-log".to_owned())
        .spawn({
            let shared = Arc::clone(&shared);
            move || {
                write_batches(&shared, out, scrub);
                drop(done);
            }
        })
        .expect("start the log writer");
    (
        LogSink {
            shared: Arc::clone(&shared),
        },
        LogGuard { shared, finished },
    )
}

fn write_batches<W: Write>(
    shared: &Shared,
    mut out: W,
    scrub: fn(&str) -> std::borrow::Cow<'_, str>,
) {
    let mut batch = Vec::new();
    loop {
        let closed = {
            let state = shared.lock();
            let (mut state, _) = shared
                .wake
                .wait_timeout_while(state, FLUSH_EVERY, |s| {
                    s.waiting.len() < WAKE_AT && !s.closed
                })
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut batch, &mut state.waiting);
            state.closed
        };
        shared.drained.notify_all();
        if !batch.is_empty() {
            // Lines are whole `str`s, so the batch is text; a write error (stderr
            // closed) has nowhere to be reported.
            let text = String::from_utf8_lossy(&batch);
            let _ = out.write_all(scrub(&text).as_bytes());
            let _ = out.flush();
            batch.clear();
        }
        if closed {
            return;
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.shared)
    }
}

/// One event's writer: the subscriber writes a formatted line in one call.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.0.lock();
        while state.waiting.len() >= HOLD_AT_MOST && !state.closed {
            self.0.wake.notify_one();
            state = self
                .0
                .drained
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.waiting.extend_from_slice(buf);
        if state.waiting.len() >= WAKE_AT {
            self.0.wake.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        // Returns when the writer is done (the sender dropped), or after LAST_WRITE.
        let _ = self.finished.recv_timeout(LAST_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// Collects what the writer thread writes.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<Vec<u8>>>);

    impl Write for Collected {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn redact(text: &str) -> Cow<'_, str> {
        Cow::Owned(text.replace("secret", "[redacted]"))
    }

    #[test]
    fn every_line_arrives_in_order_scrubbed_by_the_time_the_guard_is_dropped() {
        let out = Collected::default();
        let (sink, guard) = start(out.clone(), redact);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let line = format!("thread {t} line {i} secret\n");
                        sink.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("secret"));
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(mine, (0..5_000).collect::<Vec<_>>(), "thread {t}");
        }
    }

    #[test]
    fn secrets_are_scrubbed_from_a_batch_of_lines() {
        let out = Collected::default();
        let (sink, guard) = start(out.clone(), crate::secret::scrub);
        for line in [
            "WARN upstream error: Authorization: Bearer zz-9f8e7d6c5b4a\n",
            "INFO request finished status=200\n",
            "WARN provider said: token=abcdef123456 then\n",
        ] {
            sink.make_writer().write_all(line.as_bytes()).unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "WARN upstream error: Authorization: [redacted]\n\
             INFO request finished status=200\n\
             WARN provider said: token=[redacted] then\n"
        );
    }

    /// Stands for a stderr nobody reads: every write blocks.
    struct Blocked(mpsc::Receiver<()>);

    impl Write for Blocked {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_stderr_does_not_hold_the_exit() {
        let (_never, blocked) = mpsc::channel();
        let (sink, guard) = start(Blocked(blocked), redact);
        sink.make_writer()
            .write_all(b"a line nobody reads\n")
            .unwrap();
        // The writer takes the line and blocks on it.
        std::thread::sleep(FLUSH_EVERY * 2);
        let dropping = std::time::Instant::now();
        drop(guard);
        assert!(
            dropping.elapsed() < LAST_WRITE * 3,
            "{:?}",
            dropping.elapsed()
        );
    }

    #[test]
    fn a_line_is_written_within_the_flush_interval_without_more_lines() {
        let out = Collected::default();
        let (sink, _guard) = start(out.clone(), redact);
        sink.make_writer().write_all(b"one line\n").unwrap();
        let waited = std::time::Instant::now();
        while out.0.lock().unwrap().is_empty() {
            assert!(waited.elapsed() < FLUSH_EVERY * 20, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*out.0.lock().unwrap(), b"one line\n");
    }
}
