//! The call-record store: every request recorded in an embedded SQLite
//! database, plus per-minute rollups, written off the hot path.
//!
//! The record writer thread (`observability::access_log`) owns the only write
//! connection. It hands records over in batches; each call is encoded into the
//! open block (`hypercare::blocks`), and [`CallStore::tick`] writes the block as
//! one row of `call_blocks` in one transaction at most every `flush_interval`
//! (WAL mode, `synchronous = NORMAL`). Readers see the calls as the SQL table
//! `calls` (a virtual table over the blocks, installed by [`open_for_reading`]).
//! Rollups per (minute, route, cluster, version, model) are aggregated in
//! memory from the same records (counts by status class, an HDR latency
//! histogram, tokens, cost) and merged into the `rollups` table every
//! `rollup_interval`, so a rollup is exactly the sum of the calls it covers.
//! Retention deletes blocks by age and count, and rollups by age, once a
//! minute. Readers (admin API, CLI) open their own read-only connections; WAL
//! lets them read while the writer writes.

use crate::blocks::{self, BlockWriter};
use hdrhistogram::Histogram;
use hypergate_core::config::hypercare::CallStoreConfig;
use hypergate_core::metrics::new_histogram;
use hypergate_core::record::AccessRecord;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Schema version written to `PRAGMA user_version`. 1: a row per call in a
/// `calls` table; 2: calls in blocks (`call_blocks`).
const SCHEMA_VERSION: i64 = 2;

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
    data BLOB NOT NULL
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
    cost_usd REAL NOT NULL,
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
    conn.execute_batch(SCHEMA)?;
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

/// One rollup being aggregated.
struct Rollup {
    /// Route, cluster, version, model.
    labels: [String; 4],
    by_class: [u64; 6],
    latency: Histogram<u64>,
    latency_sum_us: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
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
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
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
    config: CallStoreConfig,
    /// The id of the next call.
    next_id: i64,
    block: BlockWriter,
    feedback: Vec<Feedback>,
    rollups: HashMap<(i64, u64), Rollup>,
    /// The rollup key of the last call counted.
    last_key: Option<(i64, u64)>,
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
        let last_id: Option<i64> =
            conn.query_row("SELECT MAX(last_id) FROM call_blocks", [], |r| r.get(0))?;
        let now = Instant::now();
        Ok(CallStore {
            conn,
            config,
            next_id: last_id.unwrap_or(0) + 1,
            block: BlockWriter::default(),
            feedback: Vec::new(),
            rollups: HashMap::new(),
            last_key: None,
            last_flush: now,
            last_rollup: now,
            last_retention: now,
            counters: Arc::default(),
        })
    }

    /// Stores records (and counts each into its rollup).
    pub fn add_batch<R: std::ops::Deref<Target = AccessRecord>>(&mut self, records: &[R]) {
        for r in records {
            let same_labels = self.block.push(r);
            self.count(r, same_labels);
        }
    }

    /// Counts a record into its rollup, and queues its feedback; with
    /// `same_labels` (the call before had the same rollup labels) the label
    /// hash of the call before is reused.
    fn count(&mut self, r: &AccessRecord, same_labels: bool) {
        if let Some(f) = r.llm.as_ref().and_then(|l| l.feedback.as_ref()) {
            self.feedback.push(Feedback {
                request_id: f.request_id.clone(),
                ts_ms: r.unix_ms as i64,
                score: f.score,
                comment: f.comment.clone(),
            });
        }
        let model = r.llm.as_ref().map_or("", |l| l.model.as_str());
        let minute = (r.unix_ms / 60_000) as i64;
        let key = match self.last_key {
            Some((m, hash)) if same_labels && m == minute => (m, hash),
            _ => {
                let mut hasher = xxhash_rust::xxh3::Xxh3::new();
                for part in [&r.route, &r.cluster, &r.version, model] {
                    hasher.update(part.as_bytes());
                    hasher.update(&[0]);
                }
                (minute, hasher.digest())
            }
        };
        self.last_key = Some(key);
        let roll = self.rollups.entry(key).or_insert_with(|| Rollup {
            labels: [
                r.route.clone(),
                r.cluster.clone(),
                r.version.clone(),
                model.to_string(),
            ],
            by_class: [0; 6],
            latency: new_histogram(),
            latency_sum_us: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
        });
        roll.by_class[usize::from(r.status / 100).min(5)] += 1;
        roll.latency.saturating_record(r.total_us.max(1));
        roll.latency_sum_us += r.total_us;
        if let Some(l) = &r.llm {
            roll.prompt_tokens += l.prompt_tokens;
            roll.completion_tokens += l.completion_tokens;
            roll.cost_usd += l.cost_usd;
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
        // Rollups are merged in their own transaction, after the calls they count.
        self.flush();
        let rollups = std::mem::take(&mut self.rollups);
        if let Err(e) = merge_rollups(&mut self.conn, rollups) {
            tracing::warn!(error = %e, "call store: rollups lost");
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

fn merge_rollups(
    conn: &mut Connection,
    rollups: HashMap<(i64, u64), Rollup>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut select = tx.prepare_cached(
            "SELECT requests, status_1xx, status_2xx, status_3xx, status_4xx, status_5xx,
                latency_sum_us, latency_hist, prompt_tokens, completion_tokens, cost_usd
             FROM rollups WHERE minute = ?1 AND route = ?2 AND cluster = ?3 AND version = ?4 AND model = ?5",
        )?;
        let mut upsert = tx.prepare_cached(
            "INSERT OR REPLACE INTO rollups (minute, route, cluster, version, model, requests,
                status_1xx, status_2xx, status_3xx, status_4xx, status_5xx, latency_sum_us,
                latency_hist, prompt_tokens, completion_tokens, cost_usd)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        for ((minute, _), mut r) in rollups {
            let [route, cluster, version, model] = std::mem::take(&mut r.labels);
            let existing = select
                .query_row(params![minute, route, cluster, version, model], |row| {
                    Ok((
                        [
                            row.get::<_, i64>(1)? as u64,
                            row.get::<_, i64>(2)? as u64,
                            row.get::<_, i64>(3)? as u64,
                            row.get::<_, i64>(4)? as u64,
                            row.get::<_, i64>(5)? as u64,
                        ],
                        row.get::<_, i64>(6)? as u64,
                        row.get::<_, String>(7)?,
                        row.get::<_, i64>(8)? as u64,
                        row.get::<_, i64>(9)? as u64,
                        row.get::<_, f64>(10)?,
                    ))
                })
                .optional()?;
            if let Some((classes, sum, hist, pt, ct, cost)) = existing {
                for (i, c) in classes.iter().enumerate() {
                    r.by_class[i + 1] += c;
                }
                r.latency_sum_us += sum;
                add_histogram_json(&mut r.latency, &hist);
                r.prompt_tokens += pt;
                r.completion_tokens += ct;
                r.cost_usd += cost;
            }
            let requests: u64 = r.by_class.iter().sum();
            upsert.execute(params![
                minute,
                route,
                cluster,
                version,
                model,
                requests as i64,
                r.by_class[1] as i64,
                r.by_class[2] as i64,
                r.by_class[3] as i64,
                r.by_class[4] as i64,
                r.by_class[5] as i64 + r.by_class[0] as i64,
                r.latency_sum_us as i64,
                histogram_to_json(&r.latency),
                r.prompt_tokens as i64,
                r.completion_tokens as i64,
                r.cost_usd,
            ])?;
        }
    }
    tx.commit()
}

impl hypergate_core::record::RecordStore for CallStore {
    fn add_batch(&mut self, records: &[Box<AccessRecord>]) {
        CallStore::add_batch(self, records);
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
    fn relative_paths_follow_the_config_file() {
        let c = CallStoreConfig::default();
        assert_eq!(
            resolve_path(&c, Some(Path::new("/etc/hypergate/gw.toml"))),
            PathBuf::from("/etc/hypergate/hypercare.db")
        );
        assert_eq!(resolve_path(&c, None), PathBuf::from("hypercare.db"));
    }
}
