//! Call records, written off the hot path with bounded memory: the JSON access
//! log (one line per request, to stdout, stderr or a file) and a
//! [`RecordStore`] (the hypercare call store), fed by the same records.
//!
//! Each shard owns a fixed number of reusable [`AccessRecord`] boxes. A
//! request fills one (string buffers are cleared and refilled, so after
//! warm-up nothing is allocated) and hands it to the writer thread through a
//! bounded channel with `try_send`. The writer takes them in batches, formats
//! the JSON lines, inserts the rows into the store, and sends the boxes back to
//! their shards; the store commits in batches. When a shard has no free box, or the channel is full (a slow disk),
//! the record is dropped and counted: requests never wait for either.

#![allow(
    clippy::disallowed_methods,
    reason = "the record writer runs on its own thread: it opens, writes and waits off the shards"
)]

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use hypergate_core::record::RecordStore;
use serde::Serialize;
use std::io::Write;

pub use hypergate_core::record::AccessRecord;

use hypergate_core::record::{channels, AccessLogSink, Boxes, WriterEnds};
use hypergate_core::rollup::RollupDelta;

/// The writer thread and the per-shard sinks that feed it.
pub struct AccessLog {
    /// One sink per shard.
    pub sinks: Vec<AccessLogSink>,
    /// The writer thread (ends when every sink is dropped).
    pub thread: std::thread::JoinHandle<()>,
}

/// Opens the JSON log target (`json`: `stdout`, `stderr` or a file; `None`: no
/// JSON lines) and starts the writer thread, which also feeds `store` and cuts
/// captured bodies to `capture_max` bytes once redacted.
pub fn start(
    json: Option<&str>,
    capture_max: usize,
    store: Option<Box<dyn RecordStore>>,
    shards: usize,
    buffer: usize,
) -> std::io::Result<AccessLog> {
    let out: Option<Box<dyn Write + Send>> = match json {
        None => None,
        Some("stdout") => Some(Box::new(std::io::stdout())),
        Some("stderr") => Some(Box::new(std::io::stderr())),
        Some(file) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)?,
        )),
    };
    let (sinks, ends) = channels(shards, buffer, json.is_some(), store.is_some());
    let thread = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || writer(out, capture_max, store, ends))?;
    Ok(AccessLog { sinks, thread })
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    record: &'a AccessRecord,
}

/// Records handled per pass (JSON lines, one store batch, boxes returned).
const BATCH: usize = 256;

/// Pause between passes while records keep coming: the shards' queues fill
/// meanwhile, so a busy writer drains them in batches and a shard sending a
/// record finds nobody asleep to wake (no system call on the request path).
/// When a pass finds nothing, the writer blocks until the next record instead.
const POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Hands every rollup batch waiting in `rx` to the store.
fn take_rollups(rx: Option<&Receiver<Vec<RollupDelta>>>, store: &mut Option<Box<dyn RecordStore>>) {
    let (Some(rx), Some(store)) = (rx, store.as_mut()) else {
        return;
    };
    while let Ok(batch) = rx.try_recv() {
        store.add_rollups(batch);
    }
}

fn writer(
    out: Option<Box<dyn Write + Send>>,
    capture_max: usize,
    mut store: Option<Box<dyn RecordStore>>,
    ends: WriterEnds,
) {
    let WriterEnds {
        records: rx,
        returns,
        rollups,
    } = ends;
    let mut out = out.map(|o| std::io::BufWriter::with_capacity(64 * 1024, o));
    let tick = std::time::Duration::from_millis(100);
    let mut records: Boxes = Vec::with_capacity(BATCH);
    let mut shards: Vec<usize> = Vec::with_capacity(BATCH);
    let mut back: Vec<Boxes> = returns.iter().map(|_| Vec::new()).collect();
    let mut waiting = None;
    let mut open = true;
    while open {
        let mut handled = 0;
        loop {
            if let Some((shard, record)) = waiting.take() {
                shards.push(shard);
                records.push(record);
            }
            while records.len() < BATCH {
                match rx.try_recv() {
                    Ok((shard, record)) => {
                        shards.push(shard);
                        records.push(record);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if records.is_empty() {
                break;
            }
            handled += records.len();
            for record in &mut records {
                redact_capture(record, capture_max);
            }
            if let Some(out) = out.as_mut() {
                for record in &records {
                    write_line(out, record);
                }
            }
            if let Some(store) = store.as_mut() {
                store.add_batch(&records);
                // Commit while records keep coming, so a busy stream still lands in time.
                if store.due() {
                    store.tick();
                }
            }
            for (shard, record) in shards.drain(..).zip(records.drain(..)) {
                back[shard].push(record);
            }
            for (shard, boxes) in back.iter_mut().enumerate() {
                if !boxes.is_empty() {
                    let full = std::mem::replace(boxes, Vec::with_capacity(BATCH));
                    let _ = returns[shard].try_send(full);
                }
            }
        }
        if let Some(out) = out.as_mut() {
            let _ = out.flush();
        }
        take_rollups(rollups.as_ref(), &mut store);
        if let Some(store) = store.as_mut() {
            store.tick();
        }
        if !open {
            break;
        }
        if handled > 0 {
            std::thread::sleep(POLL);
        } else {
            match rx.recv_timeout(tick) {
                Ok(envelope) => waiting = Some(envelope),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
    }
    if let Some(out) = out.as_mut() {
        let _ = out.flush();
    }
    // Every sink is gone, and each sent its last rollups before it went.
    take_rollups(rollups.as_ref(), &mut store);
    if let Some(store) = store.as_mut() {
        store.flush_all();
    }
}

/// Redacts (every PII kind) a captured call's bodies in place, proxied and
/// LLM calls alike, and cuts them to `max` bytes: redaction runs here, off the
/// request path, on what the shard kept (a little more than `max`).
fn redact_capture(record: &mut AccessRecord, max: usize) {
    let redact = |body: &mut Option<String>| {
        if let Some(text) = body.as_mut() {
            *text = hypergate_llm::capture_text(text, max);
        }
    };
    redact(&mut record.request_body);
    redact(&mut record.response_body);
    if let Some(l) = record.llm.as_deref_mut() {
        redact(&mut l.request_body);
        redact(&mut l.response_body);
    }
}

/// Writes one JSON access-log line.
fn write_line(out: &mut impl Write, record: &AccessRecord) {
    let time = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.unix_ms),
    )
    .to_string();
    if serde_json::to_writer(&mut *out, &Line { time, record }).is_ok() {
        let _ = out.write_all(b"\n");
    }
}
