//! The audit writer: the request path hands a record to a bounded channel and
//! returns; one task turns records into rows and writes them in batches. While the
//! database cannot take them (down, slow, not yet migrated) rows go to the spool,
//! and are replayed in order once it can; rows never overtake the spool. A record
//! that finds the channel full goes to the spool at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::row::{Row, RowBuilder, TextMode};
use super::spool::Spool;
use super::store::AuditStore;
use super::{AuditSink, CallRecord, time};
use crate::telemetry::Metrics;

/// How the writer batches, waits and keeps.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// This gateway's name on its chain.
    pub instance: String,
    pub queue: usize,
    pub batch_rows: usize,
    /// How long the first record of a batch waits for others.
    pub flush_every: Duration,
    /// The longest one database write may take before its rows are spooled.
    pub write_timeout: Duration,
    /// How long shutdown may spend writing what is queued and spooled.
    pub shutdown_deadline: Duration,
    /// Rows older than this are removed (by whole months in Postgres); `None` keeps all.
    pub retention: Option<Duration>,
}

/// The [`AuditSink`] of the gateway.
pub struct AuditWriter {
    sender: mpsc::Sender<CallRecord>,
    instance: String,
    spool: Arc<Spool>,
    rows: Arc<RowBuilder>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    deadline: Duration,
    /// How long the drain at shutdown may write to the database, in ms: set by
    /// [`AuditWriter::finish`] before it stops the worker.
    drain_within: Arc<std::sync::atomic::AtomicU64>,
}

impl AuditWriter {
    /// Starts the writer task. Migrations run there, so the gateway serves (and
    /// spools) while the database is out of reach.
    pub fn start(
        store: Arc<dyn AuditStore>,
        spool: Arc<Spool>,
        rows: RowBuilder,
        settings: WriterSettings,
        metrics: Arc<Metrics>,
    ) -> AuditWriter {
        let (sender, receiver) = mpsc::channel(settings.queue.max(1));
        let rows = Arc::new(rows);
        let stop = CancellationToken::new();
        // Shutdown's own deadline, one write that may have begun just before it,
        // and a margin.
        let deadline = settings.shutdown_deadline + settings.write_timeout + Duration::from_secs(1);
        let instance = settings.instance.clone();
        let drain_within = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let worker = Worker {
            receiver,
            gathered: Vec::new(),
            store,
            spool: Arc::clone(&spool),
            rows: Arc::clone(&rows),
            metrics: Arc::clone(&metrics),
            settings,
            ready: false,
            retry_at: None,
            backoff: MIN_BACKOFF,
            maintain_at: Instant::now(),
            stop: stop.clone(),
            deadline: None,
            drain_within: Arc::clone(&drain_within),
        };
        let task = tokio::spawn(worker.run());
        AuditWriter {
            sender,
            instance,
            spool,
            rows,
            metrics,
            stop,
            task: Mutex::new(Some(task)),
            deadline,
            drain_within,
        }
    }

    /// Writes what is queued and spooled, within the shutdown deadline and
    /// `within` (less a second, kept for spooling what the database did not take);
    /// what is left stays in the spool for the next start.
    pub async fn finish(&self, within: Duration) {
        let writing = within.saturating_sub(Duration::from_secs(1));
        self.drain_within.store(
            u64::try_from(writing.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task
            && tokio::time::timeout(self.deadline.min(within), task)
                .await
                .is_err()
        {
            tracing::warn!("audit writer did not finish in time; the spool keeps the rest");
        }
    }
}

impl AuditSink for AuditWriter {
    fn record(&self, record: CallRecord) {
        let record = match self.sender.try_send(record) {
            Ok(()) => return,
            Err(TrySendError::Full(record) | TrySendError::Closed(record)) => record,
        };
        // The writer is behind (or gone): the record goes to disk now.
        let row = self.rows.row(record);
        match self
            .spool
            .append(std::slice::from_ref(&row), &self.instance)
        {
            Ok(()) => self.metrics.audit_spooled(1),
            Err(error) => {
                self.metrics.audit_write_error("spool");
                tracing::error!(%error, request_id = row.request_id, "audit row lost: the queue is full and the spool cannot be written");
            }
        }
    }

    fn keeps_text(&self) -> bool {
        self.rows.text != TextMode::None
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Spooled batches replayed per turn, so the channel is still read meanwhile.
const REPLAY_BATCHES: usize = 5;
/// How often partitions ahead are made and retention applied.
const MAINTAIN_EVERY: Duration = Duration::from_secs(3600);
/// While a batch gathers, how often the channel is emptied. At the default queue
/// (10,000) it holds a tick's records up to 2 million calls per second.
const GATHER_TICK: Duration = Duration::from_millis(5);
/// Migrations and maintenance may take longer than a batch.
const SLOW_TIMEOUT: Duration = Duration::from_secs(30);

struct Worker {
    receiver: mpsc::Receiver<CallRecord>,
    /// The batch being gathered. Kept here, not in the gathering future, so that
    /// records already taken from the channel survive that future being dropped
    /// when shutdown begins.
    gathered: Vec<CallRecord>,
    store: Arc<dyn AuditStore>,
    spool: Arc<Spool>,
    rows: Arc<RowBuilder>,
    metrics: Arc<Metrics>,
    settings: WriterSettings,
    /// Migrated, and the spool's position known.
    ready: bool,
    /// After a failure, the database is left alone until then.
    retry_at: Option<Instant>,
    backoff: Duration,
    maintain_at: Instant,
    stop: CancellationToken,
    /// Set when shutdown begins: no database call runs past it.
    deadline: Option<Instant>,
    /// See [`AuditWriter::drain_within`].
    drain_within: Arc<std::sync::atomic::AtomicU64>,
}

impl Worker {
    async fn run(mut self) {
        let stop = self.stop.clone();
        loop {
            // Waiting (to connect, for records, on maintenance) ends with shutdown;
            // a write or replay under way finishes first, within its deadline.
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = self.connect() => {}
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = self.gather() => {}
            }
            // Every sender gone (the writer dropped without `finish`): nothing
            // more will come.
            if self.gathered.is_empty() && self.receiver.is_closed() && self.receiver.is_empty() {
                break;
            }
            let batch = std::mem::take(&mut self.gathered);
            self.write(batch, true).await;
            self.replay(REPLAY_BATCHES).await;
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = self.maintain() => {}
            }
            self.metrics
                .audit_queue(self.receiver.len(), self.spool.backlog());
        }
        self.drain().await;
        self.metrics
            .audit_queue(self.receiver.len(), self.spool.backlog());
    }

    /// The database is usable: migrated, and the spool's position read back (for
    /// the instance its rows were spooled under).
    async fn connect(&mut self) {
        if self.ready || !self.may_try() {
            return;
        }
        let owner = self.spool.owner();
        let result = async {
            self.store.migrate().await?;
            self.store.prepare(time::now_micros()).await?;
            self.store.head(&owner).await
        };
        match tokio::time::timeout(self.budget(SLOW_TIMEOUT), result).await {
            Ok(Ok(head)) => {
                let (file, offset) = head.map_or((0, 0), |h| (h.spool_file, h.spool_offset));
                self.spool.resume(file, offset);
                self.ready = true;
                self.succeeded();
            }
            Ok(Err(error)) => self.failed(&error.to_string()),
            Err(_) => self.failed("timed out"),
        }
    }

    /// How long a database call may take: `limit`, or what is left of the
    /// shutdown deadline.
    fn budget(&self, limit: Duration) -> Duration {
        match self.deadline {
            Some(deadline) => limit.min(deadline.saturating_duration_since(Instant::now())),
            None => limit,
        }
    }

    /// Gathers the next batch into `gathered`: waits for a record (waking now
    /// and then to replay the spool), then for more, up to `flush_every` or
    /// `batch_rows`. After the first record the channel is emptied every
    /// [`GATHER_TICK`] rather than as each record arrives: a wake-up per record
    /// is a cross-thread hand-over per call, which cost more than the rest of
    /// the record's way into the database (docs/BENCHMARKS.md, "Gateway overhead").
    async fn gather(&mut self) {
        let idle = self.settings.flush_every.max(MIN_BACKOFF);
        let max = self.settings.batch_rows.max(1);
        let first = self.receiver.recv_many(&mut self.gathered, max);
        if let Ok(0) | Err(_) = tokio::time::timeout(idle, first).await {
            return;
        }
        let until = Instant::now() + self.settings.flush_every;
        while self.gathered.len() < max {
            let now = Instant::now();
            if now >= until {
                break;
            }
            tokio::time::sleep_until(until.min(now + GATHER_TICK)).await;
            while self.gathered.len() < max {
                match self.receiver.try_recv() {
                    Ok(record) => self.gathered.push(record),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
        }
    }

    /// Writes records to the database, or to the spool while it holds older rows
    /// or the database fails.
    async fn write(&mut self, records: Vec<CallRecord>, may_use_database: bool) {
        if records.is_empty() {
            return;
        }
        let rows: Vec<Row> = records.into_iter().map(|r| self.rows.row(r)).collect();
        if may_use_database && self.ready && !self.spool.pending() && self.may_try() {
            match self
                .append(&self.settings.instance.clone(), &rows, None)
                .await
            {
                Ok(()) => return,
                Err(error) => self.failed(&error),
            }
        }
        match self.spool.append(&rows, &self.settings.instance) {
            Ok(()) => self.metrics.audit_spooled(rows.len()),
            Err(error) => {
                self.metrics.audit_write_error("spool");
                tracing::error!(%error, rows = rows.len(), "audit rows lost: neither the database nor the spool took them");
            }
        }
    }

    /// Replays up to `batches` spooled batches, oldest first.
    async fn replay(&mut self, batches: usize) {
        for _ in 0..batches {
            if !self.ready || !self.spool.pending() || !self.may_try() {
                return;
            }
            // Shutdown replays in `drain`, within its deadline.
            if self.stop.is_cancelled() && self.deadline.is_none() {
                return;
            }
            let batch = match self.spool.read(self.settings.batch_rows.max(1)) {
                Ok(Some(batch)) => batch,
                Ok(None) => return,
                Err(error) => {
                    self.metrics.audit_write_error("spool");
                    tracing::error!(%error, "cannot read the audit spool");
                    // Tried again after a pause, not at once.
                    self.back_off();
                    return;
                }
            };
            let owner = self.spool.owner();
            if !batch.rows.is_empty()
                && let Err(error) = self
                    .append(&owner, &batch.rows, Some((batch.file, batch.end)))
                    .await
            {
                self.failed(&error);
                // The commit may have happened all the same (a reply lost, a
                // deadline passed after it): the position is read back before
                // replay goes on, so the batch is not written twice.
                self.ready = false;
                return;
            }
            self.spool.replayed(batch.file, batch.end);
        }
    }

    async fn append(
        &mut self,
        instance: &str,
        rows: &[Row],
        spool: Option<(i64, u64)>,
    ) -> Result<(), String> {
        let budget = self.budget(self.settings.write_timeout);
        if budget.is_zero() {
            return Err("the shutdown deadline has passed".to_owned());
        }
        let write = self.store.append(instance, rows, spool);
        match tokio::time::timeout(budget, write).await {
            Ok(Ok(_)) => {
                self.metrics.audit_written(rows.len());
                self.succeeded();
                Ok(())
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    }

    /// Partitions ahead and retention, once an hour.
    async fn maintain(&mut self) {
        if !self.ready || Instant::now() < self.maintain_at || !self.may_try() {
            return;
        }
        self.maintain_at = Instant::now() + MAINTAIN_EVERY;
        let now = time::now_micros();
        let prepare = tokio::time::timeout(SLOW_TIMEOUT, self.store.prepare(now)).await;
        if let Err(error) = prepare
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::warn!(%error, "audit: cannot create the coming partitions");
        }
        if let Some(keep) = self.settings.retention {
            let cutoff = time::before(now, keep);
            match tokio::time::timeout(SLOW_TIMEOUT, self.store.retain(cutoff)).await {
                Ok(Ok(done)) => tracing::info!(done, "audit retention"),
                Ok(Err(error)) => tracing::warn!(%error, "audit retention failed"),
                Err(_) => tracing::warn!("audit retention timed out"),
            }
        }
    }

    /// Shutdown: what is queued, then the spool, until the deadline.
    async fn drain(&mut self) {
        self.receiver.close();
        let within =
            Duration::from_millis(self.drain_within.load(std::sync::atomic::Ordering::Relaxed));
        let deadline = Instant::now() + self.settings.shutdown_deadline.min(within);
        self.deadline = Some(deadline);
        loop {
            let mut batch = std::mem::take(&mut self.gathered);
            while batch.len() < self.settings.batch_rows.max(1) {
                match self.receiver.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let in_time = Instant::now() < deadline;
            self.write(batch, in_time).await;
        }
        while self.spool.pending() && Instant::now() < deadline {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at.min(deadline)).await;
            }
            let before = self.spool.backlog();
            self.connect().await;
            self.replay(1).await;
            if self.spool.backlog() == before && self.retry_at.is_none() {
                // No progress and no failure to wait out: do not spin.
                tokio::time::sleep(
                    MIN_BACKOFF.min(deadline.saturating_duration_since(Instant::now())),
                )
                .await;
            }
        }
        if self.spool.pending() {
            tracing::warn!(
                bytes = self.spool.backlog(),
                "audit rows left in the spool for the next start"
            );
        }
    }

    fn may_try(&self) -> bool {
        self.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    fn succeeded(&mut self) {
        self.retry_at = None;
        self.backoff = MIN_BACKOFF;
    }

    fn failed(&mut self, error: &str) {
        self.metrics.audit_write_error("database");
        if self.retry_at.is_none() {
            tracing::warn!(error, "audit database unavailable: spooling");
        }
        self.back_off();
    }

    fn back_off(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}
