//! What the pipeline knows about one request besides its body.

use std::sync::Arc;
use tokio::time::Instant;

use crate::admit::admission::Permit;
use crate::audit::Origin;
use crate::cache::{CacheControl, CacheKey, CacheStatus, Flight};

pub use crate::call::Caller;
use crate::call::{Attempt, Call};
use crate::generate::Route;
use crate::retrieve::Citation;
use crate::sanitize::Kind;
use crate::telemetry::traces::Trace;
use crate::wire::ChatRequest;

pub struct RequestCtx {
    pub request_id: Arc<str>,
    pub caller: Caller,
    /// Where the request came from, for the audit record.
    pub origin: Origin,
    /// The end user the client named in the `user` field (sanitised).
    pub user: Option<String>,
    pub route: Arc<Route>,
    pub started: Instant,
    pub stream: bool,
    /// The client asked for a usage chunk at the end of its stream.
    pub wants_stream_usage: bool,
    /// Every upstream attempt, in order.
    pub attempts: Vec<Attempt>,
    /// The attempts that resume a broken answer, made as it goes (recorded after
    /// `attempts`).
    pub resumed: crate::generate::resume::ResumeLog,
    pub cache: CacheStatus,
    pub cache_key: Option<CacheKey>,
    /// The client's `Cache-Control`.
    pub cache_control: CacheControl,
    /// This request leads a miss others wait on; dropped with the context.
    pub flight: Option<Flight>,
    pub citations: Vec<Citation>,
    /// What retrieval would ground the answer in (corpus generation and template
    /// version): part of the cache key.
    pub corpus_version: Option<String>,
    /// Personal data found in the request, per kind (never the values).
    pub pii: Vec<(Kind, u32)>,
    /// The sanitised messages as JSON, for the audit record.
    pub prompt_text: String,
    /// The serving target read the user's own text (see `Target::raw_input`).
    pub raw_output: bool,
    /// The call's reservation, settled when it is recorded.
    pub permit: Option<Permit>,
    /// The request's trace: the stages' spans are its children, and the record
    /// stage gives it the call's GenAI attributes (empty without `[tracing]`).
    pub trace: Trace,
}

impl RequestCtx {
    pub fn new(
        request_id: Arc<str>,
        caller: Caller,
        route: Arc<Route>,
        request: &ChatRequest,
        started: Instant,
    ) -> Self {
        RequestCtx::answered_whole(request_id, caller, route, started).asking(request)
    }

    /// The context of a call that asks `request`: streamed or whole, with usage
    /// at a stream's end or not.
    pub fn asking(mut self, request: &ChatRequest) -> Self {
        self.stream = request.is_stream();
        self.wants_stream_usage = request.wants_stream_usage();
        self
    }

    /// For a call answered whole, with no chat request of its own (a rerank).
    pub fn answered_whole(
        request_id: Arc<str>,
        caller: Caller,
        route: Arc<Route>,
        started: Instant,
    ) -> Self {
        RequestCtx {
            request_id,
            caller,
            origin: Origin::internal("/v1/chat/completions"),
            // Set once sanitised: a raw value must not reach the record.
            user: None,
            route,
            started,
            stream: false,
            wants_stream_usage: false,
            attempts: Vec::new(),
            resumed: Default::default(),
            cache: CacheStatus::Bypass,
            cache_key: None,
            cache_control: CacheControl::default(),
            flight: None,
            citations: Vec::new(),
            corpus_version: None,
            pii: Vec::new(),
            prompt_text: String::new(),
            raw_output: false,
            permit: None,
            trace: Trace::default(),
        }
    }
}

impl RequestCtx {
    /// What the stages may read of this call.
    pub fn call(&self) -> Call<'_> {
        Call {
            request_id: &self.request_id,
            caller: &self.caller,
            alias: &self.route.alias,
            deadline: self.started + self.route.request_timeout,
            stream: self.stream,
            cache_control: self.cache_control,
            corpus_version: self.corpus_version.as_deref(),
        }
    }
}
