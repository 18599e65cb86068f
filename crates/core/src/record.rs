//! What one call leaves behind: the access-log and call-store record
//! ([`AccessRecord`]) with its LLM details ([`LlmRecord`]), filled by the data
//! plane and handed to the record writer off the request path through a
//! shard's [`AccessLogSink`].
//!
//! Each shard owns a fixed number of reusable boxes. A request fills one
//! (string buffers are cleared and refilled, so after warm-up nothing is
//! allocated) and hands it to the writer thread through a bounded channel with
//! `try_send`; the writer sends boxes back in batches. When a shard has no free
//! box, or the channel is full, the record is dropped and counted: requests
//! never wait.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;

/// One access-log line.
#[derive(Debug, Default, Serialize)]
pub struct AccessRecord {
    /// RFC 3339 time is derived from this Unix time in milliseconds.
    #[serde(skip)]
    pub unix_ms: u64,
    /// Request id (generated or from `x-request-id`).
    pub request_id: String,
    /// W3C trace id.
    pub trace_id: String,
    /// Client address.
    pub client: Option<SocketAddr>,
    /// Method.
    pub method: String,
    /// Host header.
    pub host: String,
    /// The canonical path (what routing matched) and the query as received.
    pub path: String,
    /// Route name (empty when none matched).
    pub route: String,
    /// Cluster name (empty for direct responses).
    pub cluster: String,
    /// Cluster version.
    pub version: String,
    /// Endpoint that answered.
    pub endpoint: String,
    /// Authenticated consumer (empty when the route does not authenticate).
    pub consumer: String,
    /// Status sent (0: none).
    pub status: u16,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Upstream time in microseconds (request sent to response head).
    pub upstream_us: Option<u64>,
    /// Total time in microseconds.
    pub total_us: u64,
    /// Retries made.
    pub retries: u32,
    /// Error type when the gateway answered with an error.
    pub error: &'static str,
    /// How the call ended.
    pub outcome: crate::error::Outcome,
    /// The call store's sampling rules leave this record out (the JSON access
    /// log still writes it).
    #[serde(skip)]
    pub sampled_out: bool,
    /// LLM details (AI routes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<Box<LlmRecord>>,
    /// Request body as captured (sampled calls of proxied routes), redacted by
    /// the writer before it is written anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    /// Response body as captured, likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

impl AccessRecord {
    /// Empties every field, keeping the strings' buffers (records are reused).
    pub fn reset(&mut self) {
        for s in [
            &mut self.request_id,
            &mut self.trace_id,
            &mut self.method,
            &mut self.host,
            &mut self.path,
            &mut self.route,
            &mut self.cluster,
            &mut self.version,
            &mut self.endpoint,
            &mut self.consumer,
        ] {
            s.clear();
        }
        self.client = None;
        self.status = 0;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.upstream_us = None;
        self.total_us = 0;
        self.retries = 0;
        self.error = "";
        self.outcome = crate::error::Outcome::Ok;
        self.sampled_out = false;
        self.llm = None;
        self.request_body = None;
        self.response_body = None;
    }
}

/// The LLM details of a call, for the access log.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LlmRecord {
    /// Alias asked for.
    pub alias: String,
    /// Target that answered (`provider/model`).
    pub target: String,
    /// Provider name.
    pub provider: String,
    /// Model at the provider.
    pub model: String,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Cost in nano-dollars (exact: prices are kept as pico-dollars per
    /// token); JSON lines show it as `cost_usd`, a float.
    #[serde(rename = "cost_usd", serialize_with = "nanos_as_dollars")]
    pub cost_nanos: u64,
    /// Usage counted by the gateway (the provider gave none).
    pub estimated: bool,
    /// Time to first token, µs (streams).
    pub ttft_us: Option<u64>,
    /// Prompt template name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prompt: String,
    /// Prompt template version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prompt_version: String,
    /// Answered from the cache.
    pub cache_hit: bool,
    /// Guardrail actions (`name:action`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guardrails: Vec<String>,
    /// Provider attempts made.
    pub attempts: u32,
    /// The client went away before the end of the answer.
    pub client_aborted: bool,
    /// What went wrong after the answer had started (a truncated stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Feedback this request carried (on `POST /v1/feedback`), for the call store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackRecord>,
    /// The prompt as sent (canonical JSON, PII redacted), on sampled calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    /// The answer (PII redacted), on sampled calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

/// Serializes nano-dollars as float dollars.
fn nanos_as_dollars<S: serde::Serializer>(nanos: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(*nanos as f64 / 1e9)
}

/// A score for an earlier call.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FeedbackRecord {
    /// The scored call.
    pub request_id: String,
    /// Score.
    pub score: f64,
    /// Free text.
    pub comment: String,
}

/// Room kept past `capture_max_bytes` when a body is captured, so that the
/// redaction (in the record writer) sees whole what straddles the cut.
pub const CAPTURE_SLACK: usize = 256;

/// The first `max` bytes of `text` (at a character boundary).
pub fn cut_text(text: &str, max: usize) -> &str {
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// A record on its way to the writer, with the shard it comes from.
pub type Envelope = (usize, Box<AccessRecord>);

/// Records going back to their shard's pool. Boxed on purpose: a record moves
/// between threads and back as a pointer, and keeps its string buffers.
#[allow(clippy::vec_box)]
pub type Boxes = Vec<Box<AccessRecord>>;

/// A shard's handle to the access log.
pub struct AccessLogSink {
    /// The shard's exact per-minute totals, when a call store keeps them.
    pub rollups: Option<RefCell<crate::rollup::ShardRollups>>,
    shard: usize,
    tx: Sender<Envelope>,
    /// Boxes come back from the writer a batch at a time (one channel operation
    /// per batch, not per record) and wait in `spare`.
    free: Receiver<Boxes>,
    spare: RefCell<Boxes>,
    allocated: Cell<usize>,
    capacity: usize,
    /// Whether JSON lines are written (the fields only they show are filled only then).
    pub json: bool,
}

impl Drop for AccessLogSink {
    /// A shard that ends sends its last rollups (waiting a little for room:
    /// it serves nothing any more).
    fn drop(&mut self) {
        if let Some(r) = &self.rollups {
            r.borrow_mut().finish(std::time::Duration::from_secs(2));
        }
    }
}

impl AccessLogSink {
    /// A cleared record to fill, or `None` when all are in flight (counted as dropped by the caller).
    pub fn take(&self) -> Option<Box<AccessRecord>> {
        let mut spare = self.spare.borrow_mut();
        if spare.is_empty() {
            if let Ok(batch) = self.free.try_recv() {
                *spare = batch;
            }
        }
        if let Some(mut r) = spare.pop() {
            r.reset();
            return Some(r);
        }
        if self.allocated.get() < self.capacity {
            self.allocated.set(self.allocated.get() + 1);
            return Some(Box::default());
        }
        None
    }

    /// Hands a record to the writer; returns false when it was dropped.
    pub fn submit(&self, record: Box<AccessRecord>) -> bool {
        match self.tx.try_send((self.shard, record)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                // The box is freed; allow a replacement so the pool does not shrink.
                self.allocated.set(self.allocated.get() - 1);
                false
            }
        }
    }
}

/// The writer's ends of [`channels`].
pub struct WriterEnds {
    /// The records.
    pub records: Receiver<Envelope>,
    /// Where each shard's boxes go back.
    pub returns: Vec<Sender<Boxes>>,
    /// The shards' rollup deltas (with a store).
    pub rollups: Option<Receiver<Vec<crate::rollup::RollupDelta>>>,
}

/// Batches of rollup deltas in flight per shard (a batch is a second's worth).
const ROLLUP_BATCHES: usize = 16;

/// The sinks of `shards` shards (at most `buffer` records in flight each) and
/// the writer's ends; with `store`, each shard also counts rollups.
pub fn channels(
    shards: usize,
    buffer: usize,
    json: bool,
    store: bool,
) -> (Vec<AccessLogSink>, WriterEnds) {
    let (tx, rx) = bounded::<Envelope>(buffer * shards);
    let (roll_tx, roll_rx) = bounded(ROLLUP_BATCHES * shards);
    // At most `buffer` boxes per shard exist, so at most that many non-empty
    // batches: sending one back never finds the channel full.
    let mut returns = Vec::new();
    let mut sinks = Vec::new();
    for shard in 0..shards {
        let (ret_tx, ret_rx) = bounded(buffer);
        returns.push(ret_tx);
        sinks.push(AccessLogSink {
            rollups: store.then(|| RefCell::new(crate::rollup::ShardRollups::new(roll_tx.clone()))),
            shard,
            tx: tx.clone(),
            free: ret_rx,
            spare: RefCell::new(Vec::new()),
            allocated: Cell::new(0),
            capacity: buffer,
            json,
        });
    }
    let ends = WriterEnds {
        records: rx,
        returns,
        rollups: store.then_some(roll_rx),
    };
    (sinks, ends)
}

/// Where the record writer keeps calls besides the JSON access log: the
/// hypercare call store implements it. The writer calls it off the request
/// path, on its own thread, with records already redacted.
pub trait RecordStore: Send {
    /// Takes a batch of records.
    fn add_batch(&mut self, records: &[Box<AccessRecord>]);
    /// Takes a shard's rollup deltas (the exact totals).
    fn add_rollups(&mut self, deltas: Vec<crate::rollup::RollupDelta>);
    /// Whether a flush is due (by time or size).
    fn due(&self) -> bool;
    /// Flushes what is due.
    fn tick(&mut self);
    /// Flushes everything (at shutdown).
    fn flush_all(&mut self);
}
