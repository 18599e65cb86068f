//! Call-store throughput: how many call records per second the SQLite store
//! accepts on this machine (the writer thread's ceiling; beyond it records are
//! dropped and counted, never waited for).
//!
//! Run with `cargo bench -p hypergate --bench callstore`. Writes 200,000 records
//! (a plain API call, and every fourth an LLM call with tokens and cost) into a
//! fresh database in a temporary directory, committing as the writer thread does
//! (records handed over 256 at a time, batches of up to 4,096 committed), and
//! prints records/s. Rollups are not the store's work any more: the shards
//! count them (`hypergate_core::rollup`).

use hypergate::ai::LlmRecord;
use hypergate::config::hypercare::CallStoreConfig;
use hypergate::hypercare::store::CallStore;
use hypergate::observability::access_log::AccessRecord;
use std::time::{Duration, Instant};

const RECORDS: u64 = 200_000;
/// Records handed over at a time, as the writer thread does.
const BATCH: usize = 256;

fn main() {
    let dir =
        std::env::temp_dir().join(format!("hypergate-callstore-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bench.db");
    let config = CallStoreConfig {
        flush_interval: Duration::from_millis(200),
        rollup_interval: Duration::from_secs(1),
        ..CallStoreConfig::default()
    };
    let mut store = CallStore::open(&path, config).expect("open store");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // The records are made first, so the timing covers the store alone.
    let mut records: Vec<Box<AccessRecord>> = Vec::with_capacity(RECORDS as usize);
    for i in 0..RECORDS {
        let mut record = Box::<AccessRecord>::default();
        record.unix_ms = now_ms + i / 50;
        record.request_id = format!("{i:032x}");
        record.trace_id = format!("{:032x}", i * 7);
        record.method = "GET".into();
        record.path = format!("/api/items/{}", i % 1000);
        record.route = if i % 4 == 0 {
            "llm".into()
        } else {
            "api".into()
        };
        record.cluster = "api".into();
        record.version = if i % 10 == 0 {
            "v2".into()
        } else {
            "v1".into()
        };
        record.endpoint = "10.0.0.1:8080".into();
        record.status = if i % 100 == 0 { 503 } else { 200 };
        record.total_us = 500 + (i * 37) % 20_000;
        record.upstream_us = Some(record.total_us - 100);
        record.bytes_out = 1200;
        record.llm = (i % 4 == 0).then(|| {
            Box::new(LlmRecord {
                alias: "smart".into(),
                target: "openai/gpt-4o".into(),
                provider: "openai".into(),
                model: "gpt-4o".into(),
                prompt_tokens: 120,
                completion_tokens: 300,
                cost_nanos: 3_300_000,
                ..LlmRecord::default()
            })
        });
        records.push(record);
    }
    let started = Instant::now();
    for batch in records.chunks(BATCH) {
        store.add_batch(batch);
        if store.due() {
            store.tick();
        }
    }
    store.flush_all();
    let elapsed = started.elapsed();
    let written = store
        .counters
        .written
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(written, RECORDS, "every record committed");
    println!(
        "callstore: {RECORDS} records in {:.2} s = {:.0} records/s ({:.1} µs per record), database {:.1} MiB",
        elapsed.as_secs_f64(),
        RECORDS as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / RECORDS as f64,
        std::fs::metadata(&path).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
