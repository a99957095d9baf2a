//! The exporter: a request's trace is encoded, as it ends, into the open batch
//! of the thread it ended on (no lock another thread waits on, and its spans are
//! read where they were written). A batch that fills is handed to the exporter,
//! which sends it to the collector over OTLP/gRPC from a thread and runtime of
//! its own, so a slow or absent collector costs the requests nothing. Batches
//! past the queue, and those the collector does not take, are dropped, counted
//! and told once per outage.
//!
//! The exporter takes what is queued on a timer: a request filling a batch
//! never wakes it (a wake-up is a system call). On the same timer it closes the
//! batches that have waited their time, on threads with few requests.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue, TE};
use hyper::http;
use thread_local::ThreadLocal;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tower::{Service as _, ServiceExt as _};

use super::otlp::{Batch, Head};
use super::span::Finished;
use super::{DROPPED, EXPORT_FAILURES, TraceSettings};

/// Full batches waiting for export past this many are dropped (8,192 traces).
const QUEUE: usize = 8;
/// How often the queue is read: at 50,000 requests a second, one batch.
const TICK: Duration = Duration::from_millis(20);
/// Traces per export request (about five spans each), unless their spans
/// reach `BATCH_BYTES` first: collectors take up to 4 MiB by default. An
/// export's cost to both ends is mostly per export, not per byte (a collector
/// took the same time for a batch 13 % smaller), and one exporter sends them
/// in turn, so few large exports cost less than many small ones and keep up
/// with a distant collector: at 100 ms an export, 10,000 traces a second.
const BATCH: usize = 1024;
const BATCH_BYTES: usize = 2 << 20;
/// How long a trace may wait for its batch to fill, unless
/// `OTEL_BSP_SCHEDULE_DELAY` (milliseconds) says otherwise.
const DELAY: Duration = Duration::from_secs(5);
const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

static BATCHES: OnceLock<Batches> = OnceLock::new();

/// Buffers of sent exports kept for the next batches past this many are freed.
const SPARE: usize = 4;

/// The open batch of each thread that has ended a trace, and the full ones.
struct Batches {
    head: Head,
    open: ThreadLocal<Mutex<Gathering>>,
    full: mpsc::Sender<Full>,
    /// The buffers of exports sent, emptied, for the batches that follow.
    spare: Mutex<Vec<Vec<u8>>>,
}

/// A thread's open batch, and how long it has gathered.
struct Gathering {
    batch: Batch,
    /// When its first trace was added.
    since: Instant,
}

/// A closed batch: its export request, and the traces it holds.
struct Full {
    request: Bytes,
    traces: usize,
}

impl Batches {
    fn open(&self) -> &Mutex<Gathering> {
        self.open.get_or(|| {
            Mutex::new(Gathering {
                batch: Batch::new(&self.head, BATCH),
                since: Instant::now(),
            })
        })
    }

    /// `open`, locked. A panic while it was held may have left a span half
    /// written: the batch is dropped (and counted) rather than sent broken.
    fn lock<'a>(&self, open: &'a Mutex<Gathering>) -> MutexGuard<'a, Gathering> {
        match open.lock() {
            Ok(locked) => locked,
            Err(poisoned) => {
                open.clear_poison();
                let mut locked = poisoned.into_inner();
                DROPPED.inc_by(locked.batch.traces() as u64);
                locked.batch = Batch::new(&self.head, BATCH);
                locked
            }
        }
    }

    /// Closes the batch `open` gathers; it goes on in a spare buffer.
    fn close(&self, open: &mut Gathering) -> Full {
        let traces = open.batch.traces();
        let next = self.spares().pop().unwrap_or_default();
        Full {
            request: open.batch.close(&self.head, next),
            traces,
        }
    }

    fn spares(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        // The list is whole between any two of its operations.
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the buffer of `sent`, an export request sent, for a batch to come,
    /// when nothing else holds it.
    fn recycle(&self, sent: Bytes) {
        if let Ok(mut buf) = sent.try_into_mut() {
            // Emptied first: made a `Vec` whole, the bytes would be moved.
            buf.clear();
            let mut spares = self.spares();
            if spares.len() < SPARE {
                spares.push(buf.into());
            }
        }
    }

    /// Hands `full` to the exporter; it is dropped (and counted) when the
    /// queue is full.
    fn hand_over(&self, full: Full) {
        let traces = full.traces;
        if self.full.try_send(full).is_err() {
            DROPPED.inc_by(traces as u64);
        }
    }
}

/// Adds `trace` to this thread's open batch, and hands the batch to the
/// exporter once it is full.
pub fn queue(trace: &Finished) {
    let Some(batches) = BATCHES.get() else {
        return;
    };
    let mut open = batches.lock(batches.open());
    if open.batch.traces() == 0 {
        open.since = Instant::now();
    }
    open.batch.add(trace);
    if open.batch.traces() >= BATCH || open.batch.len() >= BATCH_BYTES {
        let full = batches.close(&mut open);
        drop(open);
        batches.hand_over(full);
    }
}

/// Sends what is queued when dropped (at shutdown), within the export timeout.
pub struct TracesGuard {
    stop: Option<oneshot::Sender<()>>,
    stopped: std::sync::mpsc::Receiver<()>,
    timeout: Duration,
}

impl Drop for TracesGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.stopped.recv_timeout(self.timeout * 2).is_err() {
            eprintln!("traces: not all were exported at shutdown");
        }
    }
}

/// Starts the exporter for `settings` (once per process).
pub fn start(settings: &TraceSettings) -> Result<TracesGuard, String> {
    let invalid =
        |e: tonic::transport::Error| format!("tracing.endpoint {}: {e}", settings.endpoint);
    let mut endpoint = Endpoint::from_shared(settings.endpoint.clone())
        .map_err(invalid)?
        .connect_timeout(settings.export_timeout)
        .timeout(settings.export_timeout);
    if settings.endpoint.starts_with("https://") {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_enabled_roots())
            .map_err(invalid)?;
    }
    let delay = std::env::var("OTEL_BSP_SCHEDULE_DELAY")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(DELAY, Duration::from_millis);
    let (full, queued) = mpsc::channel(QUEUE);
    BATCHES
        .set(Batches {
            head: Head::new(&settings.service_name),
            open: ThreadLocal::new(),
            full,
            spare: Mutex::new(Vec::new()),
        })
        .map_err(|_| "traces are exported already".to_owned())?;
    let (stop, stopping) = oneshot::channel();
    let (stopped, has_stopped) = std::sync::mpsc::channel();
    let exporter = Exporter {
        endpoint,
        shown: settings.endpoint.clone(),
        timeout: settings.export_timeout,
        failing: false,
    };
    std::thread::Builder::new()
        .name("ragway-traces".to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(exporter.run(queued, stopping, delay)),
                Err(error) => eprintln!("traces are not exported: {error}"),
            }
            let _ = stopped.send(());
        })
        .map_err(|e| format!("the trace exporter's thread: {e}"))?;
    Ok(TracesGuard {
        stop: Some(stop),
        stopped: has_stopped,
        timeout: settings.export_timeout,
    })
}

struct Exporter {
    endpoint: Endpoint,
    /// The collector's address, for the log.
    shown: String,
    /// How long one export may take, answer and all.
    timeout: Duration,
    failing: bool,
}

impl Exporter {
    async fn run(
        mut self,
        mut queued: mpsc::Receiver<Full>,
        mut stopping: oneshot::Receiver<()>,
        delay: Duration,
    ) {
        let Some(batches) = BATCHES.get() else {
            return;
        };
        // Connected on first use, and again after a failure.
        let channel = self.endpoint.connect_lazy();
        let mut ticks = tokio::time::interval(TICK.min(delay));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = &mut stopping => true,
                _ = ticks.tick() => false,
            };
            while let Ok(full) = queued.try_recv() {
                self.export(&channel, full).await;
            }
            // Batches that have waited their time leave partial (all of them
            // at shutdown).
            for open in batches.open.iter() {
                let due = {
                    let mut open = batches.lock(open);
                    let due = open.batch.traces() > 0 && (stop || open.since.elapsed() >= delay);
                    due.then(|| batches.close(&mut open))
                };
                if let Some(full) = due {
                    self.export(&channel, full).await;
                }
            }
            if stop {
                break;
            }
        }
    }

    async fn export(&mut self, channel: &Channel, full: Full) {
        // While the collector fails, an empty export asks first whether it is
        // back: a batch is not sent to be dropped.
        let back = match self.failing {
            true => self.send(channel, Bytes::from_static(&EMPTY)).await,
            false => Ok(()),
        };
        // A count of the request's buffer, for the next batch once the
        // channel has let go of it.
        let request = full.request.clone();
        let sent = match back {
            Ok(()) => self.send(channel, full.request).await,
            Err(error) => Err(error),
        };
        if let Some(batches) = BATCHES.get() {
            batches.recycle(request);
        }
        match sent {
            Ok(()) if std::mem::replace(&mut self.failing, false) => {
                tracing::info!(endpoint = %self.shown, "the trace collector takes spans again");
            }
            Ok(()) => {}
            Err(error) => {
                EXPORT_FAILURES.inc();
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(
                        endpoint = %self.shown,
                        %error,
                        "the trace collector does not take spans: they are dropped until it does \
                         (ragway_trace_export_failures_total); requests are not affected"
                    );
                }
            }
        }
    }

    /// One export request, `message` already a gRPC message, within the
    /// export timeout. It is handed to the channel as it is: a codec would
    /// copy it into a buffer of its own first.
    async fn send(&self, channel: &Channel, message: Bytes) -> Result<(), String> {
        let mut request =
            http::Request::new(tonic::body::Body::new(http_body_util::Full::new(message)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static(EXPORT);
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        let exchange = async {
            let mut channel = channel.clone();
            let ready = channel.ready().await.map_err(|e| e.to_string())?;
            let response = ready.call(request).await.map_err(|e| e.to_string())?;
            answered(response).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err("no answer within the export timeout".to_owned()))
    }
}

/// An empty export request, as a gRPC message.
const EMPTY: [u8; 5] = [0; 5];
/// The most of a collector's answer read: it says at most how many spans it
/// rejected, and why.
const ANSWER_LIMIT: usize = 64 * 1024;

/// Whether the collector's answer says it took the export: its `grpc-status`,
/// in its headers when it answered with nothing else, else in its trailers.
async fn answered(response: http::Response<tonic::body::Body>) -> Result<(), String> {
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", response.status()));
    }
    let (head, body) = response.into_parts();
    let status = match tonic::Status::from_header_map(&head.headers) {
        Some(status) => status,
        None => {
            let read = Limited::new(body, ANSWER_LIMIT).collect().await;
            let trailers = read.map_err(|e| e.to_string())?.trailers().cloned();
            trailers
                .and_then(|trailers| tonic::Status::from_header_map(&trailers))
                .ok_or("the collector's answer has no grpc-status")?
        }
    };
    match status.code() {
        tonic::Code::Ok => Ok(()),
        _ => Err(status.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::super::otlp::Fields;
    use super::*;

    fn batches() -> Batches {
        let (full, _queued) = mpsc::channel(1);
        Batches {
            head: Head::new("ragway-test"),
            open: ThreadLocal::new(),
            full,
            spare: Mutex::new(Vec::new()),
        }
    }

    fn finished() -> Finished<'static> {
        Finished {
            trace: [1; 16],
            span: [2; 8],
            parent: None,
            tracestate: None,
            start: 1,
            end: 2,
            fields: Fields::server("GET", "/v1/models", 0),
            in_slots: &[],
            later: &[],
            text: String::new(),
        }
    }

    #[test]
    fn a_sent_exports_buffer_is_reused_once_nothing_else_holds_it() {
        let batches = batches();
        let mut open = batches.lock(batches.open());
        open.batch.add(&finished());
        let sent = batches.close(&mut open).request;
        let held = sent.clone();
        batches.recycle(sent);
        assert!(batches.spares().is_empty(), "another count still reads it");
        batches.recycle(held);
        let (start, capacity) = {
            let spares = batches.spares();
            assert_eq!(spares.len(), 1);
            assert!(spares[0].is_empty());
            (spares[0].as_ptr() as usize, spares[0].capacity())
        };
        // The next batch goes on in it, and the one after it is written there.
        open.batch.add(&finished());
        let _second = batches.close(&mut open);
        assert!(batches.spares().is_empty());
        open.batch.add(&finished());
        let third = batches.close(&mut open).request;
        let at = third.as_ptr() as usize;
        assert!((start..start + capacity).contains(&at));
        // At most `SPARE` are kept.
        let sent: Vec<Bytes> = (0..SPARE + 2)
            .map(|_| {
                open.batch.add(&finished());
                batches.close(&mut open).request
            })
            .collect();
        sent.into_iter()
            .for_each(|request| batches.recycle(request));
        assert_eq!(batches.spares().len(), SPARE);
    }

    #[test]
    fn a_batch_a_panic_left_behind_is_dropped_not_sent() {
        let batches = batches();
        let open = batches.open();
        batches.lock(open).batch.add(&finished());
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let _held = open.lock();
            panic!("a span half written");
        }));
        assert!(open.is_poisoned());
        let dropped = DROPPED.get();
        let locked = batches.lock(open);
        assert_eq!((locked.batch.traces(), locked.batch.len()), (0, 0));
        drop(locked);
        assert!(DROPPED.get() > dropped);
        assert!(!open.is_poisoned());
    }
}
