//! The call-record store: every request recorded in an embedded SQLite
//! database, plus per-minute rollups, written off the hot path.
//!
//! The record writer thread (`observability::access_log`) owns the only write
//! connection. It hands records over in batches; each call is encoded into the
//! open block (`hypercare::blocks`), and [`CallStore::tick`] writes the block as
//! one row of `call_blocks` in one transaction at most every `flush_interval`
//! (WAL mode, `synchronous = NORMAL`). Readers see the calls as the SQL table
//! `calls` (a virtual table over the blocks, installed by [`open_for_reading`]).
//! Rollups per (minute, route, cluster, version, model) are counted by the
//! shards themselves (`hypergate_core::rollup`: every call, whether its record
//! reached the store or not; counts by status class and outcome, an HDR latency
//! histogram, tokens, cost in nano-dollars, and how many of the calls have a
//! stored row), merged here and into the `rollups` table every
//! `rollup_interval`: totals are exact, rows are the detail, and every surface
//! that shows rows can say how many of the period's calls they are.
//! Retention deletes blocks by age and count, and rollups by age, once a
//! minute. Readers (admin API, CLI) open their own read-only connections; WAL
//! lets them read while the writer writes.

use crate::blocks::{self, BlockWriter};
use hdrhistogram::Histogram;
use hypergate_core::config::hypercare::CallStoreConfig;
use hypergate_core::error::Outcome;
use hypergate_core::metrics::new_histogram;
use hypergate_core::record::AccessRecord;
use hypergate_core::rollup::{RollupDelta, RollupFigures, RollupLabels};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Schema version written to `PRAGMA user_version`. 1: a row per call in a
/// `calls` table; 2: calls in blocks (`call_blocks`); 3: block format 3
/// (outcomes, nano-dollars) and rollups counted by the shards (outcomes,
/// recorded and sampled-out calls, nano-dollars).
const SCHEMA_VERSION: i64 = 3;

/// Calls per block at most (a block is written sooner when `flush_interval` is due).
const BLOCK_CALLS: u32 = 4096;

/// Tables of the store.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS call_blocks (
    first_id INTEGER PRIMARY KEY,
    last_id INTEGER NOT NULL,
    min_ts_ms INTEGER NOT NULL,
    max_ts_ms INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    data BLOB NOT NULL,
    format INTEGER NOT NULL DEFAULT 2
);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    score REAL NOT NULL,
    comment TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollups (
    minute INTEGER NOT NULL,
    route TEXT NOT NULL,
    cluster TEXT NOT NULL,
    version TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    status_1xx INTEGER NOT NULL,
    status_2xx INTEGER NOT NULL,
    status_3xx INTEGER NOT NULL,
    status_4xx INTEGER NOT NULL,
    status_5xx INTEGER NOT NULL,
    latency_sum_us INTEGER NOT NULL,
    latency_hist TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_nanos INTEGER NOT NULL,
    status_none INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    client_aborted INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    upstream_error INTEGER NOT NULL,
    gateway_error INTEGER NOT NULL,
    timeout INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    ttft_sum_us INTEGER NOT NULL,
    ttft_calls INTEGER NOT NULL,
    recorded INTEGER NOT NULL,
    sampled_out INTEGER NOT NULL,
    PRIMARY KEY (minute, route, cluster, version, model)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ms);
CREATE TABLE IF NOT EXISTS hypercare_state (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
";

/// Resolves the store's path: relative paths are relative to the config file's directory.
pub fn resolve_path(config: &CallStoreConfig, config_file: Option<&Path>) -> PathBuf {
    let p = Path::new(&config.path);
    match config_file.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// Opens (creating if needed) the database for writing.
pub fn open_for_writing(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 {
        // Larger pages: fewer B-tree pages and WAL frames per block (new databases only).
        conn.pragma_update(None, "page_size", 16384)?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let has_column = |table: &str, column: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get(0),
        )
    };
    let old_rollups = has_column("rollups", "cost_usd")?;
    if old_rollups {
        conn.execute_batch("ALTER TABLE rollups RENAME TO rollups_v2")?;
    }
    if has_column("call_blocks", "data")? && !has_column("call_blocks", "format")? {
        // Blocks written before format 3 read as format 2.
        conn.execute_batch("ALTER TABLE call_blocks ADD COLUMN format INTEGER NOT NULL DEFAULT 2")?;
    }
    conn.execute_batch(SCHEMA)?;
    if old_rollups {
        // Rollups from before schema 3 were counted from stored records: every
        // call they count was recorded, and a 5xx (or no answer) was an error.
        conn.execute_batch(
            "BEGIN;
             INSERT INTO rollups SELECT minute, route, cluster, version, model, requests,
                status_1xx, status_2xx, status_3xx, status_4xx, status_5xx, latency_sum_us,
                latency_hist, prompt_tokens, completion_tokens,
                CAST(ROUND(cost_usd * 1e9) AS INTEGER), 0, requests - status_5xx, 0, 0,
                status_5xx, 0, 0, 0, 0, 0, requests, 0
             FROM rollups_v2;
             DROP TABLE rollups_v2;
             COMMIT;",
        )?;
    }
    let old_calls: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'calls'",
        [],
        |r| r.get(0),
    )?;
    if old_calls {
        // A version 1 database kept a row per call in a real `calls` table,
        // which would hide the virtual one: it stays, renamed, for plain SQL.
        conn.execute_batch("ALTER TABLE calls RENAME TO calls_v1")?;
        tracing::warn!(
            path = %path.display(),
            "call store: calls recorded by an earlier version are kept in table calls_v1"
        );
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(conn)
}

/// Opens the database read-only (admin API, CLI).
pub fn open_for_reading(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    blocks::register(&conn)?;
    Ok(conn)
}

/// Serializes a histogram as JSON `[[value, count], ...]` over its non-empty buckets.
pub fn histogram_to_json(h: &Histogram<u64>) -> String {
    let pairs: Vec<[u64; 2]> = h
        .iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

/// Adds a histogram serialized by [`histogram_to_json`] into `into`.
pub fn add_histogram_json(into: &mut Histogram<u64>, text: &str) {
    if let Ok(pairs) = serde_json::from_str::<Vec<[u64; 2]>>(text) {
        for [v, c] in pairs {
            into.saturating_record_n(v, c);
        }
    }
}

/// One rollup being merged: the shards' deltas for one minute and label set.
struct Rollup {
    figures: RollupFigures,
    latency: Histogram<u64>,
}

/// What the store did, for `/metrics` (written by the writer thread, read by the admin thread).
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Records committed.
    pub written: AtomicU64,
    /// Failed commits (their records are lost).
    pub failed_batches: AtomicU64,
    /// Rows deleted by retention.
    pub expired: AtomicU64,
    /// Records lost with a failed transaction.
    pub lost: AtomicU64,
    /// Rollup merges that failed and wait for the next try (nothing is lost).
    pub rollup_retries: AtomicU64,
}

impl StoreCounters {
    /// Prometheus text.
    pub fn prometheus(&self, out: &mut String) {
        use hypergate_core::metrics::header;
        use std::fmt::Write;
        for (name, help, v) in [
            (
                "hypergate_callstore_written_total",
                "Call records committed to the call store.",
                &self.written,
            ),
            (
                "hypergate_callstore_failed_batches_total",
                "Call-store transactions that failed (their records are lost).",
                &self.failed_batches,
            ),
            (
                "hypergate_callstore_expired_total",
                "Call-store rows deleted by retention.",
                &self.expired,
            ),
            (
                "hypergate_callstore_lost_total",
                "Call records lost with a failed call-store transaction.",
                &self.lost,
            ),
            (
                "hypergate_callstore_rollup_retries_total",
                "Rollup merges that failed (a busy or locked database) and were kept for the next try.",
                &self.rollup_retries,
            ),
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
    }
}

/// WAL size past which the checkpointer also truncates the WAL (waiting for
/// the writer's transaction in progress, once): bounded disk under sustained writes.
const WAL_TRUNCATE_BYTES: u64 = 64 << 20;

/// The thread that checkpoints the WAL once a second (`PASSIVE`: it never
/// waits for the writer, and the writer never waits for it).
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn start(path: &Path) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let wal = {
            let mut p = path.as_os_str().to_owned();
            p.push("-wal");
            PathBuf::from(p)
        };
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_secs(1))
                {
                    let big = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_TRUNCATE_BYTES);
                    let mode = if big { "TRUNCATE" } else { "PASSIVE" };
                    if let Err(e) = conn.execute_batch(&format!("PRAGMA wal_checkpoint({mode})")) {
                        tracing::warn!(error = %e, "call store: checkpoint failed");
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ModuleError(format!("checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// A score for a stored call (kept in its own table, joined on `request_id`, so
/// the calls table needs no index on that random key).
struct Feedback {
    request_id: String,
    ts_ms: i64,
    score: f64,
    comment: String,
}

/// The writer side of the store.
///
/// Records are encoded into the open block straight from the pooled records
/// (no copy); rollups are keyed by a hash of their labels so counting a record
/// allocates nothing.
pub struct CallStore {
    conn: Connection,
    /// The checkpoint thread (stopped, then a last checkpoint, at shutdown).
    checkpointer: Option<Checkpointer>,
    config: CallStoreConfig,
    /// The id of the next call.
    next_id: i64,
    block: BlockWriter,
    feedback: Vec<Feedback>,
    /// Rollups by (minute, labels), merged from the shards' deltas.
    rollups: HashMap<(i64, RollupLabels), Rollup>,
    last_flush: Instant,
    last_rollup: Instant,
    last_retention: Instant,
    /// Totals since start.
    pub counters: Arc<StoreCounters>,
}

impl CallStore {
    /// Opens the store at `path`.
    pub fn open(path: &Path, config: CallStoreConfig) -> rusqlite::Result<CallStore> {
        let conn = open_for_writing(path)?;
        // Checkpoints (copying the WAL into the database and syncing it, the
        // only fsyncs with `synchronous = NORMAL`) run on their own thread, so
        // a slow disk never stalls the writer while the shards' records wait.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Checkpointer::start(path)?;
        let last_id: Option<i64> =
            conn.query_row("SELECT MAX(last_id) FROM call_blocks", [], |r| r.get(0))?;
        let now = Instant::now();
        Ok(CallStore {
            conn,
            checkpointer: Some(checkpointer),
            config,
            next_id: last_id.unwrap_or(0) + 1,
            block: BlockWriter::default(),
            feedback: Vec::new(),
            rollups: HashMap::new(),
            last_flush: now,
            last_rollup: now,
            last_retention: now,
            counters: Arc::default(),
        })
    }

    /// Stores the records the sampling rules keep, and queues their feedback.
    pub fn add_batch<R: std::ops::Deref<Target = AccessRecord>>(&mut self, records: &[R]) {
        for r in records {
            if let Some(f) = r.llm.as_ref().and_then(|l| l.feedback.as_ref()) {
                self.feedback.push(Feedback {
                    request_id: f.request_id.clone(),
                    ts_ms: r.unix_ms as i64,
                    score: f.score,
                    comment: f.comment.clone(),
                });
            }
            if !r.sampled_out {
                self.block.push(r);
            }
        }
    }

    /// Merges a shard's rollup deltas.
    pub fn add_rollups(&mut self, deltas: Vec<RollupDelta>) {
        for d in deltas {
            let roll = self
                .rollups
                .entry((d.minute, d.labels))
                .or_insert_with(|| Rollup {
                    figures: RollupFigures::default(),
                    latency: new_histogram(),
                });
            roll.figures.add(&d.figures);
            for (v, c) in d.latency {
                roll.latency.saturating_record_n(v, c);
            }
        }
    }

    /// Whether a block is due (by time or size).
    pub fn due(&self) -> bool {
        self.block.len() >= BLOCK_CALLS || self.last_flush.elapsed() >= self.config.flush_interval
    }

    /// Commits what is due: the block, rollups, retention.
    pub fn tick(&mut self) {
        if self.due() {
            self.flush();
        }
        if self.last_rollup.elapsed() >= self.config.rollup_interval {
            self.flush_rollups();
        }
        if self.last_retention.elapsed() >= Duration::from_secs(60) {
            self.retention();
        }
    }

    /// Commits everything now (at shutdown, and in `tick`).
    pub fn flush_all(&mut self) {
        self.flush();
        self.flush_rollups();
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        // Leave the database whole and the WAL empty.
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "call store: final checkpoint failed");
        }
    }

    /// Writes the open block and queued feedback in one transaction.
    fn flush(&mut self) {
        self.last_flush = Instant::now();
        if self.block.is_empty() && self.feedback.is_empty() {
            return;
        }
        let n = u64::from(self.block.len());
        let first_id = self.next_id;
        let result = (|| {
            self.conn.execute_batch("BEGIN")?;
            if !self.block.is_empty() {
                self.block.write(&self.conn, first_id)?;
            }
            apply_feedback(&self.conn, &self.feedback)?;
            self.conn.execute_batch("COMMIT")
        })();
        // Ids are used once, even by a block that failed.
        self.next_id += n as i64;
        self.block.clear();
        self.feedback.clear();
        match result {
            Ok(()) => {
                self.counters.written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                self.counters.lost.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %e, records = n, "call store: batch lost");
            }
        }
    }

    fn flush_rollups(&mut self) {
        self.last_rollup = Instant::now();
        if self.rollups.is_empty() {
            return;
        }
        // Rollups are merged in their own transaction, after the calls they
        // count. A failed transaction changes nothing: the rollups stay and
        // are merged on the next try, so totals are never lost to a busy or
        // locked database (only delayed).
        self.flush();
        match merge_rollups(&mut self.conn, &self.rollups) {
            Ok(()) => self.rollups.clear(),
            Err(e) => {
                self.counters.rollup_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "call store: rollups not merged yet; retrying");
            }
        }
    }

    /// The first id of the newest block that no longer fits in `max_bytes`
    /// (counting from the newest), or `i64::MIN` when all fit.
    fn size_cut(&self) -> rusqlite::Result<i64> {
        if self.config.max_bytes == 0 {
            return Ok(i64::MIN);
        }
        let mut blocks = self.conn.prepare_cached(
            "SELECT first_id, length(data) FROM call_blocks ORDER BY first_id DESC",
        )?;
        let mut rows = blocks.query([])?;
        let mut total = 0u64;
        while let Some(row) = rows.next()? {
            total += row.get::<_, i64>(1)? as u64;
            if total > self.config.max_bytes {
                return row.get(0);
            }
        }
        Ok(i64::MIN)
    }

    fn retention(&mut self) {
        self.last_retention = Instant::now();
        self.flush();
        let now_ms = super::unix_ms() as i64;
        let raw_cut = now_ms - self.config.retention.as_millis() as i64;
        let roll_cut = (now_ms - self.config.rollup_retention.as_millis() as i64) / 60_000;
        let result = (|| -> rusqlite::Result<usize> {
            // Whole blocks go: those all older than the age limit, those
            // wholly behind the newest `max_calls` calls, and those behind the
            // newest blocks that fit in `max_bytes`.
            let size_cut = self.size_cut()?;
            let mut expired = self.conn.prepare_cached(
                "DELETE FROM call_blocks
                 WHERE max_ts_ms < ?1 OR last_id <= ?2 - ?3 OR first_id <= ?4
                 RETURNING calls",
            )?;
            let mut n: usize = expired
                .query_map(
                    params![
                        raw_cut,
                        self.next_id - 1,
                        self.config.max_calls as i64,
                        size_cut
                    ],
                    |r| r.get::<_, i64>(0),
                )?
                .map(|c| c.map(|c| c as usize))
                .sum::<rusqlite::Result<usize>>()?;
            n += self
                .conn
                .execute("DELETE FROM feedback WHERE ts_ms < ?1", [raw_cut])?;
            n += self
                .conn
                .execute("DELETE FROM rollups WHERE minute < ?1", [roll_cut])?;
            Ok(n)
        })();
        match result {
            Ok(n) => {
                self.counters.expired.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "call store: retention failed"),
        }
    }
}

/// Records feedback on stored calls (in the caller's transaction).
fn apply_feedback(conn: &Connection, feedback: &[Feedback]) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT OR REPLACE INTO feedback (request_id, ts_ms, score, comment) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for f in feedback {
        insert.execute(params![f.request_id, f.ts_ms, f.score, f.comment])?;
    }
    Ok(())
}

/// The `rollups` columns after the key, in order.
pub(crate) const ROLLUP_COLUMNS: &str =
    "requests, status_1xx, status_2xx, status_3xx, status_4xx, \
    status_5xx, latency_sum_us, latency_hist, prompt_tokens, completion_tokens, cost_nanos, \
    status_none, ok, client_aborted, rejected, upstream_error, gateway_error, timeout, \
    estimated, ttft_sum_us, ttft_calls, recorded, sampled_out";

/// Reads a `rollups` row's figures (from `requests` at column `at`) and latency histogram JSON.
pub(crate) fn rollup_figures(
    row: &rusqlite::Row<'_>,
    at: usize,
) -> rusqlite::Result<(RollupFigures, String)> {
    let n = |i: usize| row.get::<_, i64>(at + i).map(|v| v as u64);
    let mut f = RollupFigures {
        by_class: [n(11)?, n(1)?, n(2)?, n(3)?, n(4)?, n(5)?],
        latency_sum_us: n(6)?,
        prompt_tokens: n(8)?,
        completion_tokens: n(9)?,
        cost_nanos: n(10)?,
        estimated: n(18)?,
        ttft_sum_us: n(19)?,
        ttft_calls: n(20)?,
        recorded: n(21)?,
        sampled_out: n(22)?,
        ..RollupFigures::default()
    };
    for i in 0..Outcome::COUNT {
        f.by_outcome[i] = n(12 + i)?;
    }
    Ok((f, row.get(at + 7)?))
}

fn merge_rollups(
    conn: &mut Connection,
    rollups: &HashMap<(i64, RollupLabels), Rollup>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut select = tx.prepare_cached(&format!(
            "SELECT {ROLLUP_COLUMNS} FROM rollups
             WHERE minute = ?1 AND route = ?2 AND cluster = ?3 AND version = ?4 AND model = ?5"
        ))?;
        let mut upsert = tx.prepare_cached(&format!(
            "INSERT OR REPLACE INTO rollups (minute, route, cluster, version, model, {ROLLUP_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)"
        ))?;
        for ((minute, [route, cluster, version, model]), r) in rollups {
            let existing = select
                .query_row(params![minute, route, cluster, version, model], |row| {
                    rollup_figures(row, 0)
                })
                .optional()?;
            let mut f = r.figures.clone();
            let mut latency = r.latency.clone();
            if let Some((figures, hist)) = existing {
                f.add(&figures);
                add_histogram_json(&mut latency, &hist);
            }
            let f = &f;
            let o = |x: Outcome| f.by_outcome[x.index()] as i64;
            upsert.execute(params![
                minute,
                route,
                cluster,
                version,
                model,
                f.requests() as i64,
                f.by_class[1] as i64,
                f.by_class[2] as i64,
                f.by_class[3] as i64,
                f.by_class[4] as i64,
                f.by_class[5] as i64,
                f.latency_sum_us as i64,
                histogram_to_json(&latency),
                f.prompt_tokens as i64,
                f.completion_tokens as i64,
                f.cost_nanos as i64,
                f.by_class[0] as i64,
                o(Outcome::Ok),
                o(Outcome::ClientAborted),
                o(Outcome::Rejected),
                o(Outcome::UpstreamError),
                o(Outcome::GatewayError),
                o(Outcome::Timeout),
                f.estimated as i64,
                f.ttft_sum_us as i64,
                f.ttft_calls as i64,
                f.recorded as i64,
                f.sampled_out as i64,
            ])?;
        }
    }
    tx.commit()
}

impl hypergate_core::record::RecordStore for CallStore {
    fn add_batch(&mut self, records: &[Box<AccessRecord>]) {
        CallStore::add_batch(self, records);
    }

    fn add_rollups(&mut self, deltas: Vec<RollupDelta>) {
        CallStore::add_rollups(self, deltas);
    }

    fn due(&self) -> bool {
        CallStore::due(self)
    }

    fn tick(&mut self) {
        CallStore::tick(self);
    }

    fn flush_all(&mut self) {
        CallStore::flush_all(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_serialization() {
        let mut h = new_histogram();
        for v in [1, 10, 100, 1000, 10_000, 123_456] {
            h.record_n(v, 3).unwrap();
        }
        let mut back = new_histogram();
        add_histogram_json(&mut back, &histogram_to_json(&h));
        assert_eq!(back.len(), h.len());
        for q in [0.1, 0.5, 0.9, 0.99] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
        }
    }

    fn temp_db(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hypergate-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("calls.db")
    }

    fn call(i: u64, unix_ms: u64) -> Box<AccessRecord> {
        Box::new(AccessRecord {
            unix_ms,
            request_id: format!("r{i}"),
            route: "api".into(),
            status: 200,
            total_us: 100,
            ..AccessRecord::default()
        })
    }

    #[test]
    fn calls_survive_a_restart_and_retention_drops_whole_old_blocks() {
        let path = temp_db("retention");
        let now = crate::unix_ms();
        let config = CallStoreConfig {
            max_calls: 150,
            retention: Duration::from_secs(3600),
            ..CallStoreConfig::default()
        };
        // Two hours old, then three fresh blocks of 100.
        let mut store = CallStore::open(&path, config.clone()).unwrap();
        store.add_batch(
            &(0..100)
                .map(|i| call(i, now - 7_200_000))
                .collect::<Vec<_>>(),
        );
        store.flush_all();
        drop(store);
        let mut store = CallStore::open(&path, config).unwrap();
        for b in 1..4 {
            store.add_batch(
                &(b * 100..b * 100 + 100)
                    .map(|i| call(i, now))
                    .collect::<Vec<_>>(),
            );
            store.flush_all();
        }
        let reader = open_for_reading(&path).unwrap();
        let ids = |sql: &str| -> (i64, i64, i64) {
            reader
                .query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
        };
        // Ids go on after a restart.
        assert_eq!(
            ids("SELECT COUNT(*), MIN(id), MAX(id) FROM calls"),
            (400, 1, 400)
        );
        store.retention();
        // The old block goes by age; of the rest, blocks wholly behind the
        // newest 150 calls go (ids 101..200), the block holding the 150th stays.
        assert_eq!(
            ids("SELECT COUNT(*), MIN(id), MAX(id) FROM calls"),
            (200, 201, 400)
        );
        assert_eq!(store.counters.expired.load(Ordering::Relaxed), 200);
        let first: String = reader
            .query_row("SELECT request_id FROM calls WHERE id = 201", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(first, "r200");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn retention_keeps_the_newest_blocks_that_fit_in_max_bytes() {
        let path = temp_db("bytes");
        let now = crate::unix_ms();
        let mut store = CallStore::open(&path, CallStoreConfig::default()).unwrap();
        for b in 0..3 {
            store.add_batch(
                &(b * 100..b * 100 + 100)
                    .map(|i| call(i, now))
                    .collect::<Vec<_>>(),
            );
            store.flush_all();
        }
        let sizes: Vec<u64> = store
            .conn
            .prepare("SELECT length(data) FROM call_blocks ORDER BY first_id DESC")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Room for the two newest blocks and half of the oldest: it goes whole.
        store.config.max_bytes = sizes[0] + sizes[1] + sizes[2] / 2;
        store.retention();
        let reader = open_for_reading(&path).unwrap();
        let (n, first): (i64, i64) = reader
            .query_row("SELECT COUNT(*), MIN(id) FROM calls", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, first), (200, 101));
        assert_eq!(store.counters.expired.load(Ordering::Relaxed), 100);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_version_1_calls_table_is_kept_aside() {
        let path = temp_db("v1");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE calls (id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, path TEXT);
                 INSERT INTO calls (ts_ms, path) VALUES (1, '/old');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let mut store = CallStore::open(&path, CallStoreConfig::default()).unwrap();
        store.add_batch(&[call(1, 5)]);
        store.flush_all();
        let reader = open_for_reading(&path).unwrap();
        let count = |sql: &str| -> i64 { reader.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT COUNT(*) FROM calls_v1 WHERE path = '/old'"),
            1
        );
        assert_eq!(count("SELECT COUNT(*) FROM calls"), 1);
        assert_eq!(count("PRAGMA user_version"), SCHEMA_VERSION);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn version_2_rollups_and_blocks_move_to_version_3() {
        let path = temp_db("v2");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE call_blocks (first_id INTEGER PRIMARY KEY, last_id INTEGER NOT NULL,
                    min_ts_ms INTEGER NOT NULL, max_ts_ms INTEGER NOT NULL,
                    calls INTEGER NOT NULL, data BLOB NOT NULL);
                 CREATE TABLE rollups (minute INTEGER NOT NULL, route TEXT NOT NULL,
                    cluster TEXT NOT NULL, version TEXT NOT NULL, model TEXT NOT NULL,
                    requests INTEGER NOT NULL, status_1xx INTEGER NOT NULL,
                    status_2xx INTEGER NOT NULL, status_3xx INTEGER NOT NULL,
                    status_4xx INTEGER NOT NULL, status_5xx INTEGER NOT NULL,
                    latency_sum_us INTEGER NOT NULL, latency_hist TEXT NOT NULL,
                    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
                    cost_usd REAL NOT NULL, PRIMARY KEY (minute, route, cluster, version, model));
                 INSERT INTO rollups VALUES (7, 'llm', 'c', 'v1', 'm', 10, 0, 9, 0, 0, 1, 500,
                    '[[50,10]]', 30, 20, 0.0000045);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let mut store = CallStore::open(&path, CallStoreConfig::default()).unwrap();
        store.add_rollups(vec![RollupDelta {
            minute: 7,
            labels: ["llm".into(), "c".into(), "v1".into(), "m".into()],
            figures: RollupFigures {
                by_class: [0, 0, 2, 0, 0, 0],
                by_outcome: [2, 0, 0, 0, 0, 0],
                latency_sum_us: 100,
                cost_nanos: 60,
                recorded: 1,
                sampled_out: 1,
                ..RollupFigures::default()
            },
            latency: vec![(50, 2)],
        }]);
        store.flush_all();
        let reader = open_for_reading(&path).unwrap();
        let a = crate::query::aggregate(&reader, 0, 100).unwrap();
        let a = &a[&("llm".into(), "c".into(), "v1".into(), "m".into())];
        assert_eq!((a.requests, a.errors, a.by_class[4]), (12, 1, 1));
        assert_eq!(a.cost_nanos, 4_560);
        assert_eq!((a.recorded, a.sampled_out, a.dropped()), (11, 1, 0));
        assert_eq!(a.latency.as_ref().unwrap().len(), 12);
        let format: i64 = reader
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('call_blocks') WHERE name = 'format'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(format, 1);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = CallStoreConfig::default();
        assert_eq!(
            resolve_path(&c, Some(Path::new("/etc/hypergate/gw.toml"))),
            PathBuf::from("/etc/hypergate/hypercare.db")
        );
        assert_eq!(resolve_path(&c, None), PathBuf::from("hypercare.db"));
    }
}
