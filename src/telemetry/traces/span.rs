//! A request's trace as it is recorded: the request's span, opened by the
//! observer, and its children (the stages and each upstream attempt), kept in
//! memory as ids, times and the few values each needs; the request span's
//! attributes are kept encoded as they are set (a copy, not a count of the
//! shared text they come from). Nothing is sent while the request is served:
//! when the last holder of the request's trace lets go (the response sent, or
//! a stream ended), the whole trace is encoded into its thread's batch for the
//! exporter.
//!
//! The span that is current (a stage, an attempt) is set on the thread while
//! the work it covers is polled, as a task-local is, so the provider call deep
//! in `generate` can send its `traceparent` without the request's context being
//! passed down to it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use hyper::Method;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use super::children::Children;
use super::context::{self, SpanId, TraceId};
use super::export;
use super::otlp::{Fields, Value};

/// Bytes of a trace's text, where [`Kept::copy`] copied them: an attempt's
/// target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Copied(u32, u32);

impl Copied {
    #[cfg(test)]
    pub fn new(start: u32, end: u32) -> Copied {
        Copied(start, end)
    }

    /// The copy in `text`, the text of its trace (empty for a range it does
    /// not hold).
    pub fn read(self, text: &str) -> &str {
        text.get(self.0 as usize..self.1 as usize)
            .unwrap_or_default()
    }
}

/// A span under the request's: a stage, or one upstream attempt.
#[derive(Debug, Clone, Copy)]
pub struct Child {
    pub id: SpanId,
    pub parent: SpanId,
    pub start: u64,
    pub end: u64,
    pub what: What,
}

#[derive(Debug, Clone, Copy)]
pub enum What {
    Stage(&'static str),
    /// A GenAI client span; `target` is `provider:model`.
    Attempt {
        operation: &'static str,
        target: Copied,
        error: Option<&'static str>,
    },
}

/// A request's whole trace, ended: what its batch encodes.
#[derive(Debug)]
pub struct Finished<'a> {
    pub trace: TraceId,
    pub span: SpanId,
    /// The client's span, when its `traceparent` named one.
    pub parent: Option<SpanId>,
    pub tracestate: Option<HeaderValue>,
    pub start: u64,
    pub end: u64,
    /// The request span's name, kind and attributes, encoded.
    pub fields: Fields,
    /// The child spans, as the trace keeps them: most in its slots, any past
    /// them in `later` ([`Finished::children`] reads both).
    pub in_slots: &'a [Child],
    pub later: &'a [Child],
    /// The text the attempts' [`Copied`] targets are parts of.
    pub text: String,
}

impl Finished<'_> {
    /// Every child span.
    pub fn children(&self) -> impl Iterator<Item = &Child> {
        self.in_slots.iter().chain(self.later)
    }
}

/// A request's trace: every stage and attempt of the request records into it.
/// Cheap to clone; does nothing with traces off (`Trace::default()`).
#[derive(Clone, Default)]
pub struct Trace(Option<Arc<Recording>>);

struct Recording {
    trace: TraceId,
    span: SpanId,
    parent: Option<SpanId>,
    /// An unsampled request records nothing, but still tells the providers
    /// its trace (with the sampled flag off), as W3C Trace Context asks.
    sampled: bool,
    tracestate: Option<HeaderValue>,
    clock: Clock,
    kept: Mutex<Kept>,
    children: Children,
}

#[derive(Default)]
struct Kept {
    fields: Fields,
    /// The attempts' targets, copied here.
    text: String,
}

impl Kept {
    /// A copy of `text` in the trace's own text. Targets come from `Arc`s
    /// every request shares: counting them would pass their cache lines
    /// between the cores with every request, where a short copy stays on
    /// this one.
    fn copy(&mut self, text: &str) -> Copied {
        let start = self.text.len();
        self.text.push_str(text);
        match (u32::try_from(start), u32::try_from(self.text.len())) {
            (Ok(start), Ok(end)) => Copied(start, end),
            // Past 4 GiB of targets: not a trace a request makes.
            _ => Copied(0, 0),
        }
    }
}

/// The request span's attributes, as [`Trace::set_all`] sets them.
pub struct Attributes<'a>(&'a mut Fields);

impl Attributes<'_> {
    /// Sets `key` to `value`.
    pub fn set<'v>(&mut self, key: &'static str, value: impl Into<Value<'v>>) {
        self.0.set(key, value.into());
    }

    /// Sets `key` to `text`.
    pub fn text(&mut self, key: &'static str, text: &str) {
        self.0.set(key, Value::Text(text));
    }
}

/// Wall-clock nanoseconds from one reading of the system clock and the
/// monotonic clock after it: a span's times are never out of order.
struct Clock {
    unix: u64,
    at: u64,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            unix: unix(),
            at: monotonic(),
        }
    }

    fn now(&self) -> u64 {
        self.unix
            .saturating_add(monotonic().saturating_sub(self.at))
    }
}

/// Nanoseconds on the monotonic clock, read directly: `Instant`'s arithmetic
/// (a checked subtraction, a 128-bit product) costs more than the reading, and
/// a traced request reads the clock about fourteen times.
#[cfg(unix)]
fn monotonic() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds since the Unix epoch (0 on a clock set before it), read
/// directly for the same reason.
#[cfg(unix)]
fn unix() -> u64 {
    read_clock(libc::CLOCK_REALTIME)
}

#[cfg(unix)]
fn read_clock(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a timespec the call may write; it fails only for a
    // clock the system lacks, and every Unix has these two.
    unsafe { libc::clock_gettime(clock, &mut now) };
    u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(now.tv_nsec as u64)
}

#[cfg(not(unix))]
fn monotonic() -> u64 {
    static ORIGIN: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    u64::try_from(ORIGIN.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(not(unix))]
fn unix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Trace {
    /// The trace of request `id`, a child of the span the client's
    /// `traceparent` names (a new trace without one); nothing with traces off.
    pub fn request(method: &Method, route: &str, headers: &HeaderMap, id: &str) -> Trace {
        let Some(ratio) = super::sample_ratio() else {
            return Trace::default();
        };
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|value| context::parse(value.as_bytes()));
        let (trace, sampled) = match parent {
            Some(parent) => (parent.trace, parent.sampled),
            None => {
                let trace = context::new_trace();
                (trace, context::kept(ratio, &trace))
            }
        };
        let tracestate = parent.and_then(|_| headers.get(TRACESTATE).and_then(context::state));
        Trace(Some(Arc::new(Recording {
            trace,
            span: context::new_span(),
            parent: parent.map(|p| p.span),
            sampled,
            tracestate,
            clock: Clock::start(),
            kept: Mutex::new(match sampled {
                // About what a traced chat call keeps.
                true => Kept {
                    fields: {
                        let mut fields = Fields::server(method.as_str(), route, 640);
                        fields.set("ragway.request_id", Value::Text(id));
                        fields
                    },
                    text: String::with_capacity(64),
                },
                false => Kept::default(),
            }),
            children: Children::default(),
        })))
    }

    fn recorded(&self) -> Option<&Arc<Recording>> {
        self.0.as_ref().filter(|r| r.sampled)
    }

    /// Sets attribute `key` of the request's span.
    pub fn set<'v>(&self, key: &'static str, value: impl Into<Value<'v>>) {
        if let Some(recording) = self.recorded() {
            recording.keep(|kept| kept.fields.set(key, value.into()));
        }
    }

    /// Sets the attributes `add` gives the request's span (not called for a
    /// request that records nothing).
    pub fn set_all(&self, add: impl FnOnce(&mut Attributes)) {
        if let Some(recording) = self.recorded() {
            recording.keep(|kept| add(&mut Attributes(&mut kept.fields)));
        }
    }

    /// Runs `work` as stage `name`: a child span of the request's, current while
    /// it runs (the attempts it makes are its children).
    pub fn stage<F: Future>(&self, name: &'static str, work: F) -> Scoped<'_, F> {
        let open = self
            .0
            .as_ref()
            .map(|r| Open::new(Held::Borrowed(r), r.span, What::Stage(name)));
        Scoped::new(open, work)
    }

    /// Stage `name`, kept only when `did` says its outcome did some work: a
    /// stage that found nothing to do (a cache the request does not use)
    /// records no span, as it took no time worth showing.
    pub fn stage_if<F: Future>(
        &self,
        name: &'static str,
        work: F,
        did: fn(&F::Output) -> bool,
    ) -> Scoped<'_, F> {
        Scoped {
            did: Some(did),
            ..self.stage(name, work)
        }
    }

    /// Stage `name` for work that does not wait: it ends when this is dropped.
    pub fn enter(&self, name: &'static str) -> Entered {
        Entered {
            _open: self
                .recorded()
                .map(|r| Open::new(Held::Counted(Arc::clone(r)), r.span, What::Stage(name))),
        }
    }

    /// Runs `work` with the request's span current: attempts made outside a
    /// stage (a stream resumed on another target) are the request's children.
    pub fn scope<F: Future>(&self, work: F) -> Scoped<'static, F> {
        let span = self
            .0
            .as_ref()
            .map(|r| Open::follow(Held::Counted(Arc::clone(r)), r.span));
        Scoped::new(span, work)
    }
}

impl Recording {
    fn keep<T>(&self, add: impl FnOnce(&mut Kept) -> T) -> T {
        // A panic while the lock was held lost one attribute at most.
        add(&mut self.kept.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !self.sampled {
            return;
        }
        let end = self.clock.now();
        let kept = std::mem::take(self.kept.get_mut().unwrap_or_else(|p| p.into_inner()));
        let (in_slots, later) = self.children.ended();
        export::queue(&Finished {
            trace: self.trace,
            span: self.span,
            parent: self.parent,
            tracestate: self.tracestate.take(),
            start: self.clock.unix,
            end,
            fields: kept.fields,
            in_slots,
            later,
            text: kept.text,
        });
    }
}

thread_local! {
    /// The span that is current while a task's [`Scoped`] work is polled on
    /// this thread: a stage or an attempt. A cell rather than tokio's
    /// task-local, which costs several times as much per poll.
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
}

/// A current span: its recording, by a pointer into its `Arc` rather than a
/// count of it (two atomic operations fewer per stage). Every recording lives
/// in the `Arc` `Trace::request` made, and a [`Scoped`] holds either a count
/// of it or a borrow of a holder of one; the pointer is set only while such a
/// `Scoped` is polled on this thread, and put back before the poll returns or
/// unwinds: the recording outlives it.
#[derive(Clone, Copy)]
struct Current {
    recording: *const Recording,
    span: SpanId,
}

/// What `read` makes of the span current on this thread (its recording, and
/// its id); `None` outside one.
fn current<T>(read: impl FnOnce(&Recording, SpanId) -> T) -> Option<T> {
    let current = CURRENT.try_with(Cell::get).ok().flatten()?;
    // SAFETY: the pointer is a live `Arc`'s while it is current (see `Current`).
    Some(read(unsafe { &*current.recording }, current.span))
}

/// The span current on this thread, with a count of its recording: for a
/// span opened under it.
fn current_shared() -> Option<(Arc<Recording>, SpanId)> {
    let current = CURRENT.try_with(Cell::get).ok().flatten()?;
    // SAFETY: the pointer points into an `Arc` that is live while it is
    // current (see `Current`); the count taken is the new `Arc`'s.
    let recording = unsafe {
        Arc::increment_strong_count(current.recording);
        Arc::from_raw(current.recording)
    };
    Some((recording, current.span))
}

/// The recording a span writes into: a count of it, or a borrow where the
/// span cannot outlive the `Trace` it came from (a stage awaited where the
/// trace is held, an attempt's work), which costs no atomic operation.
enum Held<'a> {
    Counted(Arc<Recording>),
    Borrowed(&'a Recording),
}

impl std::ops::Deref for Held<'_> {
    type Target = Recording;

    fn deref(&self) -> &Recording {
        match self {
            Held::Counted(recording) => recording,
            Held::Borrowed(recording) => recording,
        }
    }
}

/// A child span being recorded; it ends, and is kept, when dropped. Children of
/// an unsampled request are not kept, but still carry its trace upstream.
struct Open<'a> {
    recording: Held<'a>,
    id: SpanId,
    parent: SpanId,
    start: u64,
    what: Option<What>,
}

impl<'a> Open<'a> {
    fn new(recording: Held<'a>, parent: SpanId, what: What) -> Open<'a> {
        Open {
            id: context::new_span(),
            parent,
            start: recording.clock.now(),
            what: Some(what),
            recording,
        }
    }

    /// Span `id` of `recording`, made current again by work that is not a
    /// span of its own: it records nothing.
    fn follow(recording: Held<'a>, id: SpanId) -> Open<'a> {
        Open {
            recording,
            id,
            parent: id,
            start: 0,
            what: None,
        }
    }

    fn current(&self) -> Current {
        Current {
            recording: &*self.recording,
            span: self.id,
        }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let (Some(what), true) = (self.what.take(), self.recording.sampled) else {
            return;
        };
        let child = Child {
            id: self.id,
            parent: self.parent,
            start: self.start,
            end: self.recording.clock.now(),
            what,
        };
        self.recording.children.push(child);
    }
}

/// A stage that does not wait, recorded until dropped.
pub struct Entered {
    _open: Option<Open<'static>>,
}

/// One upstream attempt's span, a child of the span current in this task (the
/// generate stage's); nothing outside a traced request.
pub struct Attempt(Option<Open<'static>>);

impl Attempt {
    /// Opens the span of an attempt at `target` (`provider:model`).
    pub fn start(operation: &'static str, target: &str) -> Attempt {
        Attempt(current_shared().map(|(recording, parent)| {
            let target = match recording.sampled {
                true => recording.keep(|kept| kept.copy(target)),
                false => Copied(0, 0),
            };
            let what = What::Attempt {
                operation,
                target,
                error: None,
            };
            Open::new(Held::Counted(recording), parent, what)
        }))
    }

    /// Runs the attempt's `work` with its span current: the provider is sent
    /// its `traceparent`.
    pub fn run<F: Future>(&self, work: F) -> Scoped<'_, F> {
        let span = self
            .0
            .as_ref()
            .map(|open| Open::follow(Held::Borrowed(&open.recording), open.id));
        Scoped::new(span, work)
    }

    /// Ends the span; `error` is the failure's class (`error.type`).
    pub fn end(mut self, error: Option<&'static str>) {
        if let Some(What::Attempt { error: failed, .. }) =
            self.0.as_mut().and_then(|open| open.what.as_mut())
        {
            *failed = error;
        }
    }
}

pin_project_lite::pin_project! {
    /// `work` with a span current while it is polled; a stage's span ends when
    /// the work is done (or dropped). Built around the work, not by an `async`
    /// block, which would copy the work's whole state once more as it starts.
    pub struct Scoped<'a, F: Future> {
        span: Option<Open<'a>>,
        // Whether the work's outcome is worth its span (kept when `None`).
        did: Option<fn(&F::Output) -> bool>,
        #[pin]
        work: F,
    }
}

impl<'a, F: Future> Scoped<'a, F> {
    /// `work` under `span`, which is kept whatever the outcome.
    fn new(span: Option<Open<'a>>, work: F) -> Scoped<'a, F> {
        Scoped {
            span,
            did: None,
            work,
        }
    }
}

impl<F: Future> Future for Scoped<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let polled = match this.span {
            Some(open) => {
                // The span is current until the work returns (or unwinds),
                // while `open` holds its recording; the one it covered, if
                // any, is current again after.
                let outer = CURRENT.try_with(|cell| cell.replace(Some(open.current())));
                let _restore = Restore(outer.ok().flatten());
                this.work.poll(cx)
            }
            None => this.work.poll(cx),
        };
        let done = ready!(polled);
        if let (Some(did), Some(open)) = (this.did, this.span.as_mut())
            && !did(&done)
        {
            open.what = None; // nothing to show: not kept
        }
        this.span.take(); // a stage ends
        Poll::Ready(done)
    }
}

/// Puts back the span that was current before a [`Scoped`] poll.
struct Restore(Option<Current>);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|cell| cell.set(self.0));
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Adds to an upstream request's `headers` the `traceparent` of the span
/// current in this task (and the client's `tracestate`); nothing outside a
/// traced request.
pub fn propagate(headers: &mut HeaderMap) {
    current(|recording, span| {
        let parent = context::header(&recording.trace, &span, recording.sampled);
        headers.insert(TRACEPARENT, parent);
        if let Some(state) = &recording.tracestate {
            headers.insert(TRACESTATE, state.clone());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_text_is_read_back_from_the_traces_own_text() {
        let mut kept = Kept::default();
        let system = kept.copy("deepseek");
        let model = kept.copy("deepseek-chat");
        let empty = kept.copy("");
        assert_eq!(system.read(&kept.text), "deepseek");
        assert_eq!(model.read(&kept.text), "deepseek-chat");
        assert_eq!(empty.read(&kept.text), "");
        // A range the text does not hold, or inside a character: no text,
        // never a panic.
        assert_eq!(Copied(9, 99).read(&kept.text), "");
        assert_eq!(Copied(1, 2).read("é"), "");
    }
}
