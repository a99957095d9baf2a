//! The exporter: traces queued by requests (a bounded queue, never waited on)
//! are encoded and sent in batches to the collector over OTLP/gRPC, from a
//! thread and runtime of its own, so a slow or absent collector costs the
//! requests nothing. A batch the collector does not take is dropped, counted
//! and told once per outage; traces past the queue are dropped and counted.
//!
//! The exporter takes what is queued on a timer: a request queuing its trace
//! never wakes it (a wake-up is a system call, and would cost more than the
//! trace).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use tokio::sync::{mpsc, oneshot};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::span::Finished;
use super::{DROPPED, EXPORT_FAILURES, TraceSettings, otlp};

/// Traces waiting for export past this many are dropped.
const QUEUE: usize = 4096;
/// How often the queue is read: at 50,000 requests a second, 1,000 traces.
const TICK: Duration = Duration::from_millis(20);
/// Traces per export request (about seven spans each).
const BATCH: usize = 256;
/// How long a trace may wait for its batch to fill, unless
/// `OTEL_BSP_SCHEDULE_DELAY` (milliseconds) says otherwise.
const DELAY: Duration = Duration::from_secs(5);
const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

static QUEUED: OnceLock<mpsc::Sender<Finished>> = OnceLock::new();

/// Queues `trace` for export; dropped (and counted) when the queue is full.
pub fn queue(trace: Finished) {
    if let Some(queue) = QUEUED.get()
        && queue.try_send(trace).is_err()
    {
        DROPPED.inc();
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
    let (sender, queued) = mpsc::channel(QUEUE);
    QUEUED
        .set(sender)
        .map_err(|_| "traces are exported already".to_owned())?;
    let (stop, stopping) = oneshot::channel();
    let (stopped, has_stopped) = std::sync::mpsc::channel();
    let exporter = Exporter {
        endpoint,
        resource: otlp::resource(&settings.service_name),
        shown: settings.endpoint.clone(),
        failing: AtomicBool::new(false),
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
    resource: Vec<u8>,
    /// The collector's address, for the log.
    shown: String,
    failing: AtomicBool,
}

impl Exporter {
    async fn run(
        self,
        mut queued: mpsc::Receiver<Finished>,
        mut stopping: oneshot::Receiver<()>,
        delay: Duration,
    ) {
        // Connected on first use, and again after a failure.
        let channel = self.endpoint.connect_lazy();
        let mut batch = Vec::with_capacity(BATCH);
        let mut sent = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval(TICK.min(delay));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = &mut stopping => true,
                _ = ticks.tick() => false,
            };
            // Full batches leave at once; a partial one when its time is up
            // (or at shutdown).
            while let Ok(trace) = queued.try_recv() {
                batch.push(trace);
                if batch.len() == BATCH {
                    self.export(&channel, &mut batch).await;
                    sent = tokio::time::Instant::now();
                }
            }
            if stop || sent.elapsed() >= delay {
                self.export(&channel, &mut batch).await;
                sent = tokio::time::Instant::now();
            }
            if stop {
                break;
            }
        }
    }

    async fn export(&self, channel: &Channel, batch: &mut Vec<Finished>) {
        if batch.is_empty() {
            return;
        }
        // While the collector fails, an empty export asks first whether it is
        // back: a batch is not encoded to be dropped.
        let back = match self.failing.load(Ordering::Relaxed) {
            true => send(channel, Bytes::new()).await,
            false => Ok(()),
        };
        let sent = match back {
            Ok(()) => send(channel, Bytes::from(otlp::request(&self.resource, batch))).await,
            Err(error) => Err(error),
        };
        batch.clear();
        match sent {
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.shown, "the trace collector takes spans again");
            }
            Ok(()) => {}
            Err(error) => {
                EXPORT_FAILURES.inc();
                if !self.failing.swap(true, Ordering::Relaxed) {
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
}

/// One export request, `body` encoded.
async fn send(channel: &Channel, body: Bytes) -> Result<(), String> {
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.map_err(|e| e.to_string())?;
    let path = hyper::http::uri::PathAndQuery::from_static(EXPORT);
    client
        .unary::<_, (), _>(tonic::Request::new(body), path, Raw)
        .await
        .map(drop)
        .map_err(|status| status.to_string())
}

/// A gRPC codec for a message already encoded, whose answer is not read: the
/// collector's answer says at most how many spans it rejected.
#[derive(Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
