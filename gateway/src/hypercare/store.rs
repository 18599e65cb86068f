//! The call-record store: every request as a row in an embedded SQLite database,
//! plus per-minute rollups, written off the hot path.
//!
//! The record writer thread (`observability::access_log`) owns the only write
//! connection. It appends records to a batch and [`CallStore::tick`] commits the
//! batch in one transaction (WAL mode, `synchronous = NORMAL`) at most every
//! `flush_interval`. Rollups per (minute, route, cluster, version, model) are
//! aggregated in memory from the same records (counts by status class, an HDR
//! latency histogram, tokens, cost) and merged into the `rollups` table every
//! `rollup_interval`, so a rollup is exactly the sum of the raw rows it covers.
//! Retention deletes raw rows by age and count, and rollups by age, once a minute.
//! Readers (admin API, CLI) open their own read-only connections; WAL lets them
//! read while the writer writes.

use crate::config::hypercare::CallStoreConfig;
use crate::observability::access_log::AccessRecord;
use crate::observability::metrics::new_histogram;
use hdrhistogram::Histogram;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    route TEXT NOT NULL,
    consumer TEXT NOT NULL,
    cluster TEXT NOT NULL,
    version TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    error TEXT NOT NULL,
    total_us INTEGER NOT NULL,
    upstream_us INTEGER,
    ttft_us INTEGER,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    provider TEXT,
    model TEXT,
    alias TEXT,
    target TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cached_tokens INTEGER,
    reasoning_tokens INTEGER,
    cost_usd REAL,
    estimated INTEGER,
    prompt TEXT,
    prompt_version TEXT,
    cache_hit INTEGER,
    guardrails TEXT,
    request_body TEXT,
    response_body TEXT
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts_ms);
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
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    // Databases created before body capture existed lack its columns.
    let mut columns = conn.prepare("SELECT name FROM pragma_table_info('calls')")?;
    let have: Vec<String> = columns
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    drop(columns);
    for column in ["request_body", "response_body"] {
        if !have.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE calls ADD COLUMN {column} TEXT"))?;
        }
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
        use crate::observability::export::header;
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
/// Records are inserted as they come, straight from the pooled record (no copy),
/// inside a transaction that stays open until the batch is due; rollups are keyed
/// by a hash of their labels so counting a record allocates nothing.
pub struct CallStore {
    conn: Connection,
    config: CallStoreConfig,
    /// Rows inserted in the open transaction.
    pending: u64,
    in_tx: bool,
    /// An insert failed: the open batch is lost, and records are skipped until the next flush.
    broken: bool,
    feedback: Vec<Feedback>,
    rollups: HashMap<(i64, u64), Rollup>,
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
        let now = Instant::now();
        Ok(CallStore {
            conn,
            config,
            pending: 0,
            in_tx: false,
            broken: false,
            feedback: Vec::new(),
            rollups: HashMap::new(),
            last_flush: now,
            last_rollup: now,
            last_retention: now,
            counters: Arc::default(),
        })
    }

    /// Stores a record (and counts it into its rollup).
    pub fn add(&mut self, r: &AccessRecord) {
        if let Some(f) = r.llm.as_ref().and_then(|l| l.feedback.as_ref()) {
            self.feedback.push(Feedback {
                request_id: f.request_id.clone(),
                ts_ms: r.unix_ms as i64,
                score: f.score,
                comment: f.comment.clone(),
            });
        }
        let model = r.llm.as_ref().map_or("", |l| l.model.as_str());
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for part in [&r.route, &r.cluster, &r.version, model] {
            hasher.update(part.as_bytes());
            hasher.update(&[0]);
        }
        let key = ((r.unix_ms / 60_000) as i64, hasher.digest());
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
        self.insert(r);
    }

    fn insert(&mut self, r: &AccessRecord) {
        if self.broken {
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let result = (|| {
            if !self.in_tx {
                self.conn.execute_batch("BEGIN")?;
                self.in_tx = true;
            }
            insert_row(&self.conn, r)
        })();
        match result {
            Ok(()) => self.pending += 1,
            Err(e) => {
                tracing::warn!(error = %e, records = self.pending + 1, "call store: batch lost");
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .lost
                    .fetch_add(self.pending + 1, Ordering::Relaxed);
                self.abort();
                self.broken = true;
            }
        }
    }

    /// Rolls the open transaction back (its rows are lost).
    fn abort(&mut self) {
        if self.in_tx {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.in_tx = false;
        self.pending = 0;
    }

    /// Whether a batch is due (by time or size).
    pub fn due(&self) -> bool {
        self.pending >= 4096 || self.last_flush.elapsed() >= self.config.flush_interval
    }

    /// Commits what is due: the batch, rollups, retention.
    pub fn tick(&mut self) {
        if self.in_tx || self.broken || !self.feedback.is_empty() {
            if self.due() {
                self.flush();
            }
        } else {
            self.last_flush = Instant::now();
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

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        self.broken = false;
        let n = self.pending;
        let result = (|| {
            if !self.in_tx && !self.feedback.is_empty() {
                self.conn.execute_batch("BEGIN")?;
                self.in_tx = true;
            }
            if !self.in_tx {
                return Ok(());
            }
            apply_feedback(&self.conn, &self.feedback)?;
            self.conn.execute_batch("COMMIT")
        })();
        match result {
            Ok(()) => {
                self.counters.written.fetch_add(n, Ordering::Relaxed);
                self.in_tx = false;
                self.pending = 0;
            }
            Err(e) => {
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                self.counters.lost.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %e, records = n, "call store: batch lost");
                self.abort();
            }
        }
        self.feedback.clear();
    }

    fn flush_rollups(&mut self) {
        self.last_rollup = Instant::now();
        if self.rollups.is_empty() {
            return;
        }
        // Rollups are merged in their own transaction, after the rows they count.
        if self.in_tx || self.broken {
            self.flush();
        }
        let rollups = std::mem::take(&mut self.rollups);
        if let Err(e) = merge_rollups(&mut self.conn, rollups) {
            tracing::warn!(error = %e, "call store: rollups lost");
        }
    }

    fn retention(&mut self) {
        self.last_retention = Instant::now();
        if self.in_tx || self.broken {
            self.flush();
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let raw_cut = now_ms - self.config.retention.as_millis() as i64;
        let roll_cut = (now_ms - self.config.rollup_retention.as_millis() as i64) / 60_000;
        let result = (|| -> rusqlite::Result<usize> {
            let mut n = self
                .conn
                .execute("DELETE FROM calls WHERE ts_ms < ?1", [raw_cut])?;
            let max_id: Option<i64> =
                self.conn
                    .query_row("SELECT MAX(id) FROM calls", [], |r| r.get(0))?;
            if let Some(max_id) = max_id {
                n += self.conn.execute(
                    "DELETE FROM calls WHERE id <= ?1",
                    [max_id - self.config.max_calls as i64],
                )?;
            }
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

/// Inserts one record (in the caller's transaction).
fn insert_row(conn: &Connection, r: &AccessRecord) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO calls (ts_ms, request_id, trace_id, method, path, route, consumer, cluster,
            version, endpoint, status, error, total_us, upstream_us, ttft_us, bytes_in, bytes_out,
            retries, provider, model, alias, target, prompt_tokens, completion_tokens,
            cached_tokens, reasoning_tokens, cost_usd, estimated, prompt, prompt_version,
            cache_hit, guardrails, request_body, response_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
            ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34)",
    )?;
    let l = r.llm.as_deref();
    let text = |f: fn(&crate::ai::LlmRecord) -> &str| l.map(f).filter(|s| !s.is_empty());
    insert.execute(params![
        r.unix_ms as i64,
        r.request_id,
        r.trace_id,
        r.method,
        r.path,
        r.route,
        r.consumer,
        r.cluster,
        r.version,
        r.endpoint,
        r.status,
        r.error,
        r.total_us as i64,
        r.upstream_us.map(|v| v as i64),
        l.and_then(|l| l.ttft_us).map(|v| v as i64),
        r.bytes_in as i64,
        r.bytes_out as i64,
        r.retries,
        text(|l| &l.provider),
        text(|l| &l.model),
        text(|l| &l.alias),
        text(|l| &l.target),
        l.map(|l| l.prompt_tokens as i64),
        l.map(|l| l.completion_tokens as i64),
        l.map(|l| l.cached_tokens as i64),
        l.map(|l| l.reasoning_tokens as i64),
        l.map(|l| l.cost_usd),
        l.map(|l| l.estimated),
        text(|l| &l.prompt),
        text(|l| &l.prompt_version),
        l.map(|l| l.cache_hit),
        l.filter(|l| !l.guardrails.is_empty())
            .map(|l| l.guardrails.join(",")),
        l.and_then(|l| l.request_body.as_deref()),
        l.and_then(|l| l.response_body.as_deref()),
    ])?;
    Ok(())
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
