//! The exporter thread: receives batches from the shards' sinks, encodes each
//! as one OTLP request and POSTs it to the collector with a small blocking
//! HTTP/1.1 client (`client`, the one module here allowed blocking socket calls).
//!
//! 1. [`Exporter::start`] validates nothing (the settings already are), spawns
//!    the thread and returns one [`TelemetrySink`] per shard. The sinks hold the
//!    only senders of a bounded channel of `queue_batches` batches.
//! 2. The thread takes one batch at a time (items the sinks already wrote as
//!    protobuf), wraps it in an export request (spans to `/v1/traces`,
//!    records to `/v1/logs`) and sends it; the outcome is
//!    counted per item in [`OtlpStats`]. A failure is logged once, and again
//!    only after an export has succeeded in between.
//! 3. It ends when every sink is gone (after exporting what was queued), or
//!    when [`Exporter::shutdown`] asks (after exporting what is queued then);
//!    `shutdown` waits for it at most the given bound.
//!
//! Depends on: [`crate::config`], [`crate::resource`], [`crate::sink`],
//! [`crate::stats`] and the crate's encoder.

mod client;

use crate::config::OtlpSettings;
use crate::encode;
use crate::resource::Resource;
use crate::sink::{Batch, SinkSettings, TelemetrySink};
use crate::stats::{add, OtlpStats};
use client::HttpClient;
use crossbeam_channel::{bounded, never, select, Receiver, RecvTimeoutError, Sender};
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running exporter thread.
pub struct Exporter {
    stats: Arc<OtlpStats>,
    stop: Sender<()>,
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

impl Exporter {
    /// Starts the exporter thread for `settings` and `resource`, and returns
    /// it with one sink for each of `shards` shards. Fails only when the
    /// thread cannot be spawned.
    pub fn start(
        settings: &OtlpSettings,
        resource: &Resource,
        shards: usize,
    ) -> io::Result<(Exporter, Vec<TelemetrySink>)> {
        let stats = Arc::new(OtlpStats::default());
        let (queue, batches) = bounded(settings.queue_batches);
        let (stop, stop_requested) = bounded(1);
        let (finished, done) = bounded(0);
        let worker = Worker {
            traces: HttpClient::new(
                settings.traces_endpoint.clone(),
                settings.export_timeout,
                &settings.headers,
            ),
            logs: HttpClient::new(
                settings.logs_endpoint.clone(),
                settings.export_timeout,
                &settings.headers,
            ),
            fixed: encode::fixed(&encode::resource(resource)),
            body: Vec::new(),
            stats: Arc::clone(&stats),
            traces_failing: false,
            logs_failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("hypergate-otlp".into())
            .spawn(move || worker.run(batches, stop_requested, finished))?;
        let sink_settings = SinkSettings {
            batch_size: settings.batch_size,
            flush_interval: settings.flush_interval,
            sampler: settings.sampler,
            export_logs: settings.export_logs,
        };
        let now = Instant::now();
        let sinks = (0..shards)
            .map(|_| TelemetrySink::new(queue.clone(), sink_settings, Arc::clone(&stats), now))
            .collect();
        Ok((
            Exporter {
                stats,
                stop,
                done,
                thread,
            },
            sinks,
        ))
    }

    /// The counters (for the metrics endpoint).
    pub fn stats(&self) -> &Arc<OtlpStats> {
        &self.stats
    }

    /// Asks the thread to export what is queued and stop, and waits for it at
    /// most `bound`: true when it finished in time. Drop the sinks first (stop
    /// the shards) so that their last spans are in the queue; a sink still
    /// alive afterwards counts what it hands over as dropped.
    pub fn shutdown(self, bound: Duration) -> bool {
        let _ = self.stop.try_send(());
        match self.done.recv_timeout(bound) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

/// The thread's state: one client per signal, the encoded resource.
struct Worker {
    traces: HttpClient,
    logs: HttpClient,
    /// The resource and scope as bytes.
    fixed: encode::Fixed,
    /// The request body, reused.
    body: Vec<u8>,
    stats: Arc<OtlpStats>,
    traces_failing: bool,
    logs_failing: bool,
}

impl Worker {
    /// `finished` is dropped when the thread ends, which `shutdown` waits for.
    fn run(mut self, batches: Receiver<Batch>, stop: Receiver<()>, finished: Sender<()>) {
        let mut stop = stop;
        loop {
            select! {
                recv(batches) -> batch => match batch {
                    Ok(batch) => self.export(batch),
                    // Every sink is gone and the queue is empty.
                    Err(_) => break,
                },
                recv(stop) -> request => match request {
                    Ok(()) => {
                        for batch in batches.try_iter() {
                            self.export(batch);
                        }
                        break;
                    }
                    // The handle was dropped without a shutdown: run on until the sinks go.
                    Err(_) => stop = never(),
                },
            }
        }
        drop(finished);
    }

    fn export(&mut self, batch: Batch) {
        let stats = &self.stats;
        match batch {
            Batch::Spans(spans) => {
                encode::request(&self.fixed, &spans.bytes, &mut self.body);
                let result = self.traces.post(&self.body, &stats.export_requests);
                record(
                    result,
                    spans.count,
                    [
                        &stats.spans_exported,
                        &stats.spans_failed,
                        &stats.export_failures,
                    ],
                    &mut self.traces_failing,
                    self.traces.url(),
                );
            }
            Batch::Logs(logs) => {
                encode::request(&self.fixed, &logs.bytes, &mut self.body);
                let result = self.logs.post(&self.body, &stats.export_requests);
                record(
                    result,
                    logs.count,
                    [
                        &stats.logs_exported,
                        &stats.logs_failed,
                        &stats.export_failures,
                    ],
                    &mut self.logs_failing,
                    self.logs.url(),
                );
            }
        }
    }
}

/// Counts an export's outcome (`[exported, failed, failed batches]`) and logs
/// the change between working and failing.
fn record(
    result: Result<(), client::ExportError>,
    count: usize,
    [exported, failed, failed_batches]: [&AtomicU64; 3],
    failing: &mut bool,
    url: &str,
) {
    match result {
        Ok(()) => {
            add(exported, count);
            if std::mem::replace(failing, false) {
                tracing::info!(url, "OTLP export works again");
            }
        }
        Err(error) => {
            add(failed, count);
            add(failed_batches, 1);
            if !std::mem::replace(failing, true) {
                tracing::warn!(
                    url,
                    %error,
                    "OTLP export failed; further failures are counted in \
                     hypergate_otlp_*_total{{outcome=\"failed\"}} until one succeeds"
                );
            }
        }
    }
}
