//! The per-shard buffer: finished spans and log records collect in plain
//! `Vec`s and go to the exporter thread a batch at a time, through a bounded
//! channel, with `try_send`: a shard never waits for the exporter.
//!
//! A batch is handed over when it reaches `batch_size`, when the shard's
//! periodic tick calls [`TelemetrySink::flush_if_due`] and the flush interval
//! has passed, and when the sink is dropped (the shard stopping). When the
//! exporter's queue is full the batch is dropped and its items are counted in
//! [`OtlpStats`]. The sink is `Send` (made on the control thread, moved into
//! its shard) but not `Sync`: one shard owns it.
//!
//! Depends on: [`crate::span`], [`crate::log`], [`crate::sampler`], [`crate::stats`].

use crate::log::LogData;
use crate::sampler::Sampler;
use crate::span::SpanData;
use crate::stats::{add, OtlpStats};
use crossbeam_channel::Sender;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What travels from a sink to the exporter thread.
pub(crate) enum Batch {
    /// Finished spans.
    Spans(Vec<SpanData>),
    /// Call records.
    Logs(Vec<LogData>),
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
    spans: RefCell<Vec<SpanData>>,
    logs: RefCell<Vec<LogData>>,
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
            spans: RefCell::new(Vec::new()),
            logs: RefCell::new(Vec::new()),
            settings,
            next_flush: Cell::new(now + settings.flush_interval),
            stats,
        }
    }

    /// The sampler, for the head decision and the decision at the end.
    pub fn sampler(&self) -> &Sampler {
        &self.settings.sampler
    }

    /// Whether call records are exported: when not, skip building [`LogData`].
    pub fn exports_logs(&self) -> bool {
        self.settings.export_logs
    }

    /// The counters this sink and the exporter share.
    pub fn stats(&self) -> &Arc<OtlpStats> {
        &self.stats
    }

    /// Buffers a finished span; hands the batch over when it is full.
    pub fn push_span(&self, span: SpanData) {
        let full = {
            let mut spans = self.spans.borrow_mut();
            spans.push(span);
            spans.len() >= self.settings.batch_size
        };
        if full {
            self.hand_over_spans();
        }
    }

    /// Buffers a call record (ignored unless logs are exported); hands the
    /// batch over when it is full.
    pub fn push_log(&self, log: LogData) {
        if !self.settings.export_logs {
            return;
        }
        let full = {
            let mut logs = self.logs.borrow_mut();
            logs.push(log);
            logs.len() >= self.settings.batch_size
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
        let spans = std::mem::take(&mut *self.spans.borrow_mut());
        if !spans.is_empty() {
            self.hand_over(Batch::Spans(spans));
        }
    }

    fn hand_over_logs(&self) {
        let logs = std::mem::take(&mut *self.logs.borrow_mut());
        if !logs.is_empty() {
            self.hand_over(Batch::Logs(logs));
        }
    }

    /// `try_send`: a full (or closed) queue drops the batch and counts it.
    fn hand_over(&self, batch: Batch) {
        if let Err(e) = self.queue.try_send(batch) {
            match e.into_inner() {
                Batch::Spans(spans) => add(&self.stats.spans_dropped, spans.len()),
                Batch::Logs(logs) => add(&self.stats.logs_dropped, logs.len()),
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

    fn span(n: u8) -> SpanData {
        let context = SpanContext {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            sampled: true,
            trace_state: None,
        };
        SpanData::new(&context, "span", SpanKind::Server, 1, 2)
    }

    fn log() -> LogData {
        LogData {
            time_unix_nanos: 1,
            severity: Severity::Info,
            body: "GET / 200".into(),
            attributes: Vec::new(),
            trace_id: None,
            span_id: None,
        }
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
                Batch::Spans(s) => ('s', s.len()),
                Batch::Logs(l) => ('l', l.len()),
            })
            .collect()
    }

    #[test]
    fn full_batches_and_due_flushes_are_handed_over() {
        let start = Instant::now();
        let (sink, rx) = sink(8, true, start);
        for n in 0..4 {
            sink.push_span(span(n));
        }
        sink.push_log(log());
        assert_eq!(sizes(&rx), [('s', 3)]);
        sink.flush_if_due(start + Duration::from_millis(999));
        assert_eq!(sizes(&rx), []);
        sink.flush_if_due(start + Duration::from_secs(1));
        assert_eq!(sizes(&rx), [('s', 1), ('l', 1)]);
        sink.push_span(span(9));
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
            sink.push_span(span(n));
        }
        for _ in 0..4 {
            sink.push_log(log());
        }
        sink.flush();
        let stats = Arc::clone(sink.stats());
        assert_eq!(stats.spans_dropped.load(Ordering::Relaxed), 6);
        assert_eq!(stats.logs_dropped.load(Ordering::Relaxed), 4);
        assert_eq!(sizes(&rx), [('s', 3)]);
    }

    #[test]
    fn logs_are_ignored_unless_exported() {
        let (sink, rx) = sink(8, false, Instant::now());
        assert!(!sink.exports_logs());
        sink.push_log(log());
        sink.flush();
        assert_eq!(sizes(&rx), []);
    }
}
