//! The per-shard buffer: finished spans and log records are written as
//! protobuf bytes into one buffer per signal as they are pushed (no allocation
//! per span, nothing for the exporter to free) and go to the exporter thread a
//! batch at a time, through a bounded channel, with `try_send`: a shard never
//! waits for the exporter.
//!
//! A batch is handed over when it reaches `batch_size` items or
//! [`MAX_BATCH_BYTES`], when the shard's
//! periodic tick calls [`TelemetrySink::flush_if_due`] and the flush interval
//! has passed, and when the sink is dropped (the shard stopping). When the
//! exporter's queue is full the batch is dropped and its items are counted in
//! [`OtlpStats`]. The sink is `Send` (made on the control thread, moved into
//! its shard) but not `Sync`: one shard owns it.
//!
//! Depends on: [`crate::span`], [`crate::log`], [`crate::sampler`],
//! [`crate::stats`] and the crate's encoder.

use crate::encode;
use crate::log::LogData;
use crate::sampler::Sampler;
use crate::span::SpanData;
use crate::stats::{add, OtlpStats};
use crossbeam_channel::Sender;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A batch's encoded size at which it is handed over whatever its count, so
/// that one export request stays well under collectors' usual 4 MiB limit.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Encoded items: `ScopeSpans.spans` or `ScopeLogs.log_records` entries.
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) count: usize,
}

/// What travels from a sink to the exporter thread.
pub(crate) enum Batch {
    /// Finished spans.
    Spans(Encoded),
    /// Call records.
    Logs(Encoded),
}

/// One signal's batch being filled.
struct Pending {
    bytes: Vec<u8>,
    count: usize,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            bytes: Vec::new(),
            count: 0,
        }
    }

    /// Takes the batch, leaving an empty buffer as large as the last one
    /// (one allocation per batch, not one per regrowth).
    fn take(&mut self) -> Option<Encoded> {
        if self.count == 0 {
            return None;
        }
        let next = Vec::with_capacity(self.bytes.len());
        let bytes = std::mem::replace(&mut self.bytes, next);
        Some(Encoded {
            bytes,
            count: std::mem::take(&mut self.count),
        })
    }
}

/// How a sink batches; the same for every shard.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SinkSettings {
    pub(crate) batch_size: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) sampler: Sampler,
    pub(crate) export_logs: bool,
}

/// One shard's buffer of finished spans and log records.
pub struct TelemetrySink {
    queue: Sender<Batch>,
    spans: RefCell<Pending>,
    logs: RefCell<Pending>,
    settings: SinkSettings,
    next_flush: Cell<Instant>,
    stats: Arc<OtlpStats>,
}

impl TelemetrySink {
    pub(crate) fn new(
        queue: Sender<Batch>,
        settings: SinkSettings,
        stats: Arc<OtlpStats>,
        now: Instant,
    ) -> TelemetrySink {
        TelemetrySink {
            queue,
            spans: RefCell::new(Pending::new()),
            logs: RefCell::new(Pending::new()),
            settings,
            next_flush: Cell::new(now + settings.flush_interval),
            stats,
        }
    }

    /// The sampler, for the head decision and the decision at the end.
    pub fn sampler(&self) -> &Sampler {
        &self.settings.sampler
    }

    /// Whether call records are exported: when not, skip building a [`LogData`].
    pub fn exports_logs(&self) -> bool {
        self.settings.export_logs
    }

    /// The counters this sink and the exporter share.
    pub fn stats(&self) -> &Arc<OtlpStats> {
        &self.stats
    }

    /// Writes a finished span into the batch; hands the batch over when it
    /// is full.
    pub fn push_span(&self, span: &SpanData<'_>) {
        let full = {
            let mut spans = self.spans.borrow_mut();
            encode::put_span(&mut spans.bytes, span);
            spans.count += 1;
            spans.count >= self.settings.batch_size || spans.bytes.len() >= MAX_BATCH_BYTES
        };
        if full {
            self.hand_over_spans();
        }
    }

    /// Writes a call record into the batch (ignored unless logs are
    /// exported); hands the batch over when it is full.
    pub fn push_log(&self, log: &LogData<'_>) {
        if !self.settings.export_logs {
            return;
        }
        let full = {
            let mut logs = self.logs.borrow_mut();
            encode::put_log(&mut logs.bytes, log);
            logs.count += 1;
            logs.count >= self.settings.batch_size || logs.bytes.len() >= MAX_BATCH_BYTES
        };
        if full {
            self.hand_over_logs();
        }
    }

    /// From the shard's periodic tick: hands over partial batches when the
    /// flush interval has passed since the last such flush.
    pub fn flush_if_due(&self, now: Instant) {
        if now >= self.next_flush.get() {
            self.next_flush.set(now + self.settings.flush_interval);
            self.flush();
        }
    }

    /// Hands over whatever is buffered, now.
    pub fn flush(&self) {
        self.hand_over_spans();
        self.hand_over_logs();
    }

    fn hand_over_spans(&self) {
        let spans = self.spans.borrow_mut().take();
        if let Some(spans) = spans {
            self.hand_over(Batch::Spans(spans));
        }
    }

    fn hand_over_logs(&self) {
        let logs = self.logs.borrow_mut().take();
        if let Some(logs) = logs {
            self.hand_over(Batch::Logs(logs));
        }
    }

    /// `try_send`: a full (or closed) queue drops the batch and counts it.
    fn hand_over(&self, batch: Batch) {
        if let Err(e) = self.queue.try_send(batch) {
            match e.into_inner() {
                Batch::Spans(spans) => add(&self.stats.spans_dropped, spans.count),
                Batch::Logs(logs) => add(&self.stats.logs_dropped, logs.count),
            }
        }
    }
}

impl Drop for TelemetrySink {
    /// The shard is stopping: hand over what is left.
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::SpanContext;
    use crate::log::Severity;
    use crate::sampler::SamplerPolicy;
    use crate::span::SpanKind;
    use crossbeam_channel::{bounded, Receiver};
    use std::sync::atomic::Ordering;

    fn push_span(sink: &TelemetrySink, n: u8) {
        let context = SpanContext {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            sampled: true,
            trace_state: None,
        };
        sink.push_span(&SpanData::new(&context, "span", SpanKind::Server, 1, 2));
    }

    fn push_log(sink: &TelemetrySink) {
        sink.push_log(&LogData {
            time_unix_nanos: 1,
            severity: Severity::Info,
            body: "GET / 200".into(),
            attributes: Default::default(),
            trace_id: None,
            span_id: None,
        });
    }

    fn sink(queue: usize, export_logs: bool, now: Instant) -> (TelemetrySink, Receiver<Batch>) {
        let (tx, rx) = bounded(queue);
        let settings = SinkSettings {
            batch_size: 3,
            flush_interval: Duration::from_secs(1),
            sampler: Sampler::new(SamplerPolicy::AlwaysOn, true, true),
            export_logs,
        };
        (TelemetrySink::new(tx, settings, Arc::default(), now), rx)
    }

    fn sizes(rx: &Receiver<Batch>) -> Vec<(char, usize)> {
        rx.try_iter()
            .map(|b| match b {
                Batch::Spans(s) => ('s', s.count),
                Batch::Logs(l) => ('l', l.count),
            })
            .collect()
    }

    #[test]
    fn full_batches_and_due_flushes_are_handed_over() {
        let start = Instant::now();
        let (sink, rx) = sink(8, true, start);
        for n in 0..4 {
            push_span(&sink, n);
        }
        push_log(&sink);
        assert_eq!(sizes(&rx), [('s', 3)]);
        sink.flush_if_due(start + Duration::from_millis(999));
        assert_eq!(sizes(&rx), []);
        sink.flush_if_due(start + Duration::from_secs(1));
        assert_eq!(sizes(&rx), [('s', 1), ('l', 1)]);
        push_span(&sink, 9);
        sink.flush_if_due(start + Duration::from_millis(1500));
        assert_eq!(
            sizes(&rx),
            [],
            "the next flush is due a full interval later"
        );
        drop(sink);
        assert_eq!(sizes(&rx), [('s', 1)], "dropping the sink flushes it");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (sink, rx) = sink(1, true, Instant::now());
        for n in 0..9 {
            push_span(&sink, n);
        }
        for _ in 0..4 {
            push_log(&sink);
        }
        sink.flush();
        let stats = Arc::clone(sink.stats());
        assert_eq!(stats.spans_dropped.load(Ordering::Relaxed), 6);
        assert_eq!(stats.logs_dropped.load(Ordering::Relaxed), 4);
        assert_eq!(sizes(&rx), [('s', 3)]);
    }

    #[test]
    fn a_batch_is_handed_over_at_its_byte_cap_whatever_its_count() {
        let (tx, rx) = bounded(8);
        let settings = SinkSettings {
            batch_size: 1_000_000,
            flush_interval: Duration::from_secs(60),
            sampler: Sampler::new(SamplerPolicy::AlwaysOn, true, true),
            export_logs: false,
        };
        let sink = TelemetrySink::new(tx, settings, Arc::default(), Instant::now());
        let context = SpanContext {
            trace_id: [7; 16],
            span_id: [7; 8],
            parent_span_id: None,
            sampled: true,
            trace_state: None,
        };
        let path = "/p".repeat(4096);
        let mut pushed = 0;
        while rx.is_empty() {
            let mut span = SpanData::new(&context, "GET", SpanKind::Server, 1, 2);
            span.push_attr(crate::attributes::URL_PATH, path.as_str());
            sink.push_span(&span);
            pushed += 1;
            assert!(pushed < 1_000, "handed over by size");
        }
        let Ok(Batch::Spans(batch)) = rx.try_recv() else {
            panic!("a span batch")
        };
        assert_eq!(batch.count, pushed);
        assert!(batch.bytes.len() >= MAX_BATCH_BYTES);
        assert!(batch.bytes.len() < MAX_BATCH_BYTES + 9000);
    }

    #[test]
    fn logs_are_ignored_unless_exported() {
        let (sink, rx) = sink(8, false, Instant::now());
        assert!(!sink.exports_logs());
        push_log(&sink);
        sink.flush();
        assert_eq!(sizes(&rx), []);
    }
}
