//! Raw calls in blocks: how the call store keeps every call cheaply, and the
//! SQL table `calls` that reads them back.
//!
//! The writer encodes each call ([`BlockWriter::push`]) with `postcard` (varints,
//! length-prefixed strings) into the open block, and one flush writes the whole
//! block as one row of `call_blocks` (its first and last call id, its time range,
//! the encoded calls). Labels that repeat from one call to the next (route,
//! cluster, version, endpoint, consumer, model...) are written once and then
//! marked "as before". A row per call cost the writer about 2 µs (binding 35
//! values, a B-tree insert, the page written to the WAL and again at the
//! checkpoint; `cargo bench -p hypergate --bench callstore`); a call in a block
//! costs about 0.4 µs.
//!
//! Readers lose nothing: [`register`] installs `calls` as an eponymous virtual
//! table on a connection, with the columns the store has always had (`id`,
//! `ts_ms`, `request_id` ... `response_body`). Constraints on `id` and `ts_ms`
//! narrow the blocks read, and `ORDER BY id [DESC]` is served in order, so
//! "the newest 100 calls" reads one block.

use hypergate_core::error::Outcome;
use hypergate_core::record::AccessRecord;
use rusqlite::ffi;
use rusqlite::vtab::{
    eponymous_only_module, Context, Filters, IndexConstraintOp, IndexInfo, VTab, VTabConnection,
    VTabCursor,
};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::ffi::c_int;
use std::marker::PhantomData;

/// The block format written now: 3 (each call's outcome, costs in
/// nano-dollars). Format 2 blocks (no outcome, costs as float dollars) are
/// still read ([`CallFiguresV2`], [`LlmFiguresV2`]).
pub const BLOCK_FORMAT: i64 = 3;

/// One call as stored. `None` labels mean "the same as the call before in this
/// block". `C` and `L` are the figures of the block's format.
#[derive(Serialize, Deserialize)]
struct Stored<'a, C = CallFigures, L = LlmFigures> {
    /// Milliseconds since the call before (the first: since the Unix epoch).
    ts_delta_ms: i64,
    figures: C,
    request_id: &'a str,
    trace_id: &'a str,
    path: &'a str,
    /// Captured bodies (sampled calls, redacted), LLM calls' included.
    request_body: Option<&'a str>,
    response_body: Option<&'a str>,
    #[serde(borrow)]
    labels: [Option<&'a str>; API_LABELS],
    #[serde(borrow)]
    llm: Option<StoredLlm<'a, L>>,
}

/// A call's numbers, as stored and as read back.
#[derive(Clone, Copy, Default, Serialize, Deserialize)]
struct CallFigures {
    status: u16,
    total_us: u64,
    upstream_us: Option<u64>,
    bytes_in: u64,
    bytes_out: u64,
    retries: u32,
    outcome: Outcome,
}

/// A call's numbers in a format 2 block.
#[derive(Deserialize)]
struct CallFiguresV2 {
    status: u16,
    total_us: u64,
    upstream_us: Option<u64>,
    bytes_in: u64,
    bytes_out: u64,
    retries: u32,
}

impl From<CallFiguresV2> for CallFigures {
    /// Format 2 kept no outcome: it is read back from the status and the
    /// error label alone (no error and a 5xx: an upstream error).
    fn from(v: CallFiguresV2) -> Self {
        CallFigures {
            status: v.status,
            total_us: v.total_us,
            upstream_us: v.upstream_us,
            bytes_in: v.bytes_in,
            bytes_out: v.bytes_out,
            retries: v.retries,
            outcome: Outcome::of(v.status, None, false, false),
        }
    }
}

/// The LLM part of a stored call.
#[derive(Serialize, Deserialize)]
struct StoredLlm<'a, L = LlmFigures> {
    #[serde(borrow)]
    labels: [Option<&'a str>; LLM_LABELS],
    figures: L,
}

/// An LLM call's numbers, as stored and as read back.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct LlmFigures {
    ttft_us: Option<u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    reasoning_tokens: u64,
    cost_nanos: u64,
    estimated: bool,
    cache_hit: bool,
}

/// An LLM call's numbers in a format 2 block (cost as float dollars).
#[derive(Deserialize)]
struct LlmFiguresV2 {
    ttft_us: Option<u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    reasoning_tokens: u64,
    cost_usd: f64,
    estimated: bool,
    cache_hit: bool,
}

impl From<LlmFiguresV2> for LlmFigures {
    fn from(v: LlmFiguresV2) -> Self {
        LlmFigures {
            ttft_us: v.ttft_us,
            prompt_tokens: v.prompt_tokens,
            completion_tokens: v.completion_tokens,
            cached_tokens: v.cached_tokens,
            reasoning_tokens: v.reasoning_tokens,
            cost_nanos: (v.cost_usd * 1e9).round() as u64,
            estimated: v.estimated,
            cache_hit: v.cache_hit,
        }
    }
}

/// Method, route, consumer, cluster, version, endpoint, error.
const API_LABELS: usize = 7;
/// Provider, model, alias, target, prompt, prompt version, guardrails.
const LLM_LABELS: usize = 7;

/// Encodes calls into one block.
#[derive(Default)]
pub struct BlockWriter {
    data: Vec<u8>,
    calls: u32,
    min_ts_ms: i64,
    max_ts_ms: i64,
    last_ts_ms: i64,
    /// The labels last written in this block (API then LLM labels; buffers
    /// reused), and which of them have been written in it.
    last_labels: [String; API_LABELS + LLM_LABELS],
    written: [bool; API_LABELS + LLM_LABELS],
}

impl BlockWriter {
    /// Calls in the block.
    pub fn len(&self) -> u32 {
        self.calls
    }

    /// Whether the block holds no call.
    pub fn is_empty(&self) -> bool {
        self.calls == 0
    }

    /// Appends a call.
    pub fn push(&mut self, r: &AccessRecord) {
        let ts = r.unix_ms as i64;
        if self.calls == 0 {
            self.min_ts_ms = ts;
            self.max_ts_ms = ts;
        }
        self.min_ts_ms = self.min_ts_ms.min(ts);
        self.max_ts_ms = self.max_ts_ms.max(ts);
        let guardrails;
        let mut fresh = [""; API_LABELS + LLM_LABELS];
        fresh[..API_LABELS].copy_from_slice(&[
            r.method.as_str(),
            &r.route,
            &r.consumer,
            &r.cluster,
            &r.version,
            &r.endpoint,
            r.error,
        ]);
        if let Some(l) = r.llm.as_deref() {
            guardrails = l.guardrails.join(",");
            fresh[API_LABELS..].copy_from_slice(&[
                l.provider.as_str(),
                &l.model,
                &l.alias,
                &l.target,
                &l.prompt,
                &l.prompt_version,
                &guardrails,
            ]);
        }
        // LLM labels are compared only on LLM calls: the reader skips them on the others.
        let n = if r.llm.is_some() {
            API_LABELS + LLM_LABELS
        } else {
            API_LABELS
        };
        let mut labels = [None; API_LABELS + LLM_LABELS];
        for (i, value) in fresh.iter().enumerate().take(n) {
            if !self.written[i] || !same(&self.last_labels[i], value) {
                labels[i] = Some(*value);
                self.last_labels[i].clear();
                self.last_labels[i].push_str(value);
                self.written[i] = true;
            }
        }
        let stored = Stored {
            ts_delta_ms: ts - self.last_ts_ms,
            figures: CallFigures {
                status: r.status,
                total_us: r.total_us,
                upstream_us: r.upstream_us,
                bytes_in: r.bytes_in,
                bytes_out: r.bytes_out,
                retries: r.retries,
                outcome: r.outcome,
            },
            request_id: &r.request_id,
            trace_id: &r.trace_id,
            path: &r.path,
            request_body: r
                .request_body
                .as_deref()
                .or(r.llm.as_ref().and_then(|l| l.request_body.as_deref())),
            response_body: r
                .response_body
                .as_deref()
                .or(r.llm.as_ref().and_then(|l| l.response_body.as_deref())),
            labels: labels[..API_LABELS].try_into().unwrap_or_default(),
            llm: r.llm.as_deref().map(|l| StoredLlm {
                labels: labels[API_LABELS..].try_into().unwrap_or_default(),
                figures: LlmFigures {
                    ttft_us: l.ttft_us,
                    prompt_tokens: l.prompt_tokens,
                    completion_tokens: l.completion_tokens,
                    cached_tokens: l.cached_tokens,
                    reasoning_tokens: l.reasoning_tokens,
                    cost_nanos: l.cost_nanos,
                    estimated: l.estimated,
                    cache_hit: l.cache_hit,
                },
            }),
        };
        let data = std::mem::take(&mut self.data);
        // Encoding into a Vec cannot fail (postcard fails only when its output is full).
        self.data = postcard::to_extend(&stored, data).unwrap_or_default();
        self.last_ts_ms = ts;
        self.calls += 1;
    }

    /// Writes the block as one row (in the caller's transaction) with ids
    /// `first_id ..`; the writer is left empty.
    pub fn write(&mut self, conn: &Connection, first_id: i64) -> rusqlite::Result<()> {
        let mut insert = conn.prepare_cached(
            "INSERT INTO call_blocks (first_id, last_id, min_ts_ms, max_ts_ms, calls, data, format)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let result = insert.execute(rusqlite::params![
            first_id,
            first_id + i64::from(self.calls) - 1,
            self.min_ts_ms,
            self.max_ts_ms,
            self.calls,
            self.data,
            BLOCK_FORMAT,
        ]);
        self.clear();
        result.map(drop)
    }

    /// Drops the calls in the block.
    pub fn clear(&mut self) {
        self.data.clear();
        self.calls = 0;
        self.last_ts_ms = 0;
        self.written = [false; API_LABELS + LLM_LABELS];
    }
}

/// String equality for labels, a few bytes each, compared inline eight bytes
/// at a time: `==` calls `memcmp` for every one, 7 to 14 calls per record.
#[inline]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut wa, mut wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let words = (&mut wa).zip(&mut wb).all(|(x, y)| {
        u64::from_ne_bytes(x.try_into().unwrap_or_default())
            == u64::from_ne_bytes(y.try_into().unwrap_or_default())
    });
    words
        && wa
            .remainder()
            .iter()
            .zip(wb.remainder())
            .all(|(x, y)| x == y)
}

/// The columns of `calls`, in order (`cost_usd` is `cost_nanos` / 10^9).
pub const COLUMNS: [&str; 37] = [
    "id",
    "ts_ms",
    "request_id",
    "trace_id",
    "method",
    "path",
    "route",
    "consumer",
    "cluster",
    "version",
    "endpoint",
    "status",
    "error",
    "total_us",
    "upstream_us",
    "ttft_us",
    "bytes_in",
    "bytes_out",
    "retries",
    "provider",
    "model",
    "alias",
    "target",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "estimated",
    "prompt",
    "prompt_version",
    "cache_hit",
    "guardrails",
    "request_body",
    "response_body",
    "outcome",
    "cost_nanos",
];

/// Text spans of a decoded call: request id, trace id, path, then the API and LLM labels.
const FIRST_LABEL: usize = 3;
const SPANS: usize = FIRST_LABEL + API_LABELS + LLM_LABELS;

/// A decoded call: numbers, and where its strings sit in the block.
#[derive(Clone, Default)]
struct Row {
    id: i64,
    ts_ms: i64,
    figures: CallFigures,
    spans: [(u32, u32); SPANS],
    request_body: Option<(u32, u32)>,
    response_body: Option<(u32, u32)>,
    llm: Option<LlmFigures>,
}

/// Where `s` (borrowed from `data`) sits in `data`.
fn span(data: &[u8], s: &str) -> (u32, u32) {
    let start = (s.as_ptr() as usize).saturating_sub(data.as_ptr() as usize) as u32;
    (start, start + s.len() as u32)
}

/// Decodes the call at the start of `bytes` (a suffix of `data`), stored with
/// figures `C` and `L`, and returns the bytes after it; labels written "as
/// before" get no span (`None`).
#[allow(clippy::type_complexity)]
fn decode_one<'a, C, L>(
    bytes: &'a [u8],
    data: &[u8],
) -> postcard::Result<(Row, [bool; API_LABELS + LLM_LABELS], &'a [u8])>
where
    C: Deserialize<'a> + Into<CallFigures>,
    L: Deserialize<'a> + Into<LlmFigures>,
{
    let (s, rest): (Stored<'_, C, L>, _) = postcard::take_from_bytes(bytes)?;
    let mut given = [false; API_LABELS + LLM_LABELS];
    let mut spans = [(0, 0); SPANS];
    spans[0] = span(data, s.request_id);
    spans[1] = span(data, s.trace_id);
    spans[2] = span(data, s.path);
    for (i, l) in s.labels.iter().enumerate() {
        if let Some(l) = l {
            spans[FIRST_LABEL + i] = span(data, l);
            given[i] = true;
        }
    }
    let llm = s.llm.map(|l| {
        for (i, v) in l.labels.iter().enumerate() {
            if let Some(v) = v {
                spans[FIRST_LABEL + API_LABELS + i] = span(data, v);
                given[API_LABELS + i] = true;
            }
        }
        l.figures.into()
    });
    let row = Row {
        id: 0,
        ts_ms: s.ts_delta_ms,
        figures: s.figures.into(),
        spans,
        request_body: s.request_body.map(|b| span(data, b)),
        response_body: s.response_body.map(|b| span(data, b)),
        llm,
    };
    Ok((row, given, rest))
}

/// Decodes a whole block of `format` whose first call has id `first_id`.
fn decode_block(
    data: &[u8],
    first_id: i64,
    calls: usize,
    format: i64,
) -> postcard::Result<Vec<Row>> {
    let mut rows = Vec::with_capacity(calls);
    let mut labels = [(0, 0); API_LABELS + LLM_LABELS];
    let mut ts = 0;
    let mut rest = data;
    while !rest.is_empty() {
        let (mut row, given, after) = if format >= BLOCK_FORMAT {
            decode_one::<CallFigures, LlmFigures>(rest, data)?
        } else {
            decode_one::<CallFiguresV2, LlmFiguresV2>(rest, data)?
        };
        rest = after;
        ts += row.ts_ms;
        row.ts_ms = ts;
        row.id = first_id + rows.len() as i64;
        // Fill "as before" labels; a call without an LLM part leaves the LLM
        // labels of the call before to the next one, and shows none itself.
        let has_llm = row.llm.is_some();
        for (i, given) in given.iter().enumerate() {
            let s = &mut row.spans[FIRST_LABEL + i];
            if i >= API_LABELS && !has_llm {
                continue;
            }
            if *given {
                labels[i] = *s;
            } else {
                *s = labels[i];
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Installs `calls` on `conn`.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_module(c"calls", eponymous_only_module::<CallsTab>(), None)
}

/// Constraint kinds passed from `best_index` to `filter` (one per argument, in `idx_str`).
const ID_MIN: u8 = b'i';
const ID_MAX: u8 = b'I';
const ID_EQ: u8 = b'e';
const TS_MIN: u8 = b't';
const TS_MAX: u8 = b'T';
const TS_EQ: u8 = b'E';
/// `idx_num` bits: rows in ascending / descending id order.
const ORDER_ASC: c_int = 1;
const ORDER_DESC: c_int = 2;

/// The `calls` virtual table.
#[repr(C)]
struct CallsTab {
    /// Base class; must be first.
    base: ffi::sqlite3_vtab,
    /// The connection the table belongs to (it reads `call_blocks` through it).
    db: *mut ffi::sqlite3,
}

// SAFETY: `CallsTab` is `#[repr(C)]` with the `sqlite3_vtab` base first, as
// the trait requires; the cursor type below is laid out the same way.
unsafe impl<'vtab> VTab<'vtab> for CallsTab {
    type Aux = ();
    type Cursor = CallsCursor<'vtab>;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        let columns: Vec<String> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| match i {
                0 | 1 | 11 | 13..=18 | 23..=26 | 28 | 31 | 36 => format!("{c} INTEGER"),
                27 => format!("{c} REAL"),
                _ => format!("{c} TEXT"),
            })
            .collect();
        Ok((
            format!("CREATE TABLE x({})", columns.join(", ")),
            CallsTab {
                base: ffi::sqlite3_vtab::default(),
                // SAFETY: only the pointer is kept; it is used while SQLite
                // runs a query on this table, when the connection is open.
                db: unsafe { db.handle() },
            },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<()> {
        // Each usable bound on `id` (or rowid) and `ts_ms` becomes an argument
        // of `filter`, its kind one letter of `idx_str`. `filter` only narrows
        // the blocks read (inclusive bounds); SQLite still checks every
        // constraint on the rows, so `>` and `<` stay exact.
        let mut kinds = String::new();
        let mut used = Vec::new();
        for (i, c) in info.constraints().enumerate() {
            let id = matches!(c.column(), -1 | 0);
            if !c.is_usable() || !(id || c.column() == 1) {
                continue;
            }
            let kind = match (c.operator(), id) {
                (IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ, true) => ID_EQ,
                (IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ, false) => TS_EQ,
                (
                    IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GT
                    | IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GE,
                    true,
                ) => ID_MIN,
                (
                    IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GT
                    | IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GE,
                    false,
                ) => TS_MIN,
                (
                    IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LT
                    | IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LE,
                    true,
                ) => ID_MAX,
                (
                    IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LT
                    | IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LE,
                    false,
                ) => TS_MAX,
                _ => continue,
            };
            kinds.push(kind as char);
            used.push(i);
        }
        for (argv, i) in used.iter().enumerate() {
            info.constraint_usage(*i).set_argv_index(argv as c_int + 1);
        }
        let mut idx_num = 0;
        let mut order_bys = info.order_bys();
        if let (Some(o), None) = (order_bys.next(), order_bys.next()) {
            if matches!(o.column(), -1 | 0) {
                idx_num = if o.is_order_by_desc() {
                    ORDER_DESC
                } else {
                    ORDER_ASC
                };
            }
        }
        if idx_num != 0 {
            info.set_order_by_consumed(true);
        }
        info.set_idx_num(idx_num);
        info.set_idx_str(&kinds);
        info.set_estimated_cost(if used.is_empty() {
            1_000_000.0
        } else {
            1_000.0
        });
        Ok(())
    }

    fn open(&'vtab mut self) -> rusqlite::Result<CallsCursor<'vtab>> {
        Ok(CallsCursor {
            base: ffi::sqlite3_vtab_cursor::default(),
            db: self.db,
            blocks: Vec::new(),
            next_block: 0,
            desc: false,
            data: Vec::new(),
            rows: Vec::new(),
            at: 0,
            phantom: PhantomData,
        })
    }
}

/// A scan of `calls`: the blocks to read, and the decoded rows of the current one.
#[repr(C)]
struct CallsCursor<'vtab> {
    /// Base class; must be first.
    base: ffi::sqlite3_vtab_cursor,
    db: *mut ffi::sqlite3,
    /// First ids and call counts of the blocks to read, in scan order.
    blocks: Vec<(i64, usize)>,
    next_block: usize,
    desc: bool,
    /// The current block and its decoded rows.
    data: Vec<u8>,
    rows: Vec<Row>,
    /// Index into `rows` (scan order).
    at: usize,
    phantom: PhantomData<&'vtab CallsTab>,
}

impl CallsCursor<'_> {
    /// The table's connection, for reading blocks.
    fn conn(&self) -> rusqlite::Result<Connection> {
        // SAFETY: the handle is the connection running this query, open for
        // as long as the query runs; `from_handle` never closes it.
        unsafe { Connection::from_handle(self.db) }
    }

    /// Loads blocks until one has rows (or none is left).
    fn load_next_block(&mut self) -> rusqlite::Result<()> {
        self.rows.clear();
        self.at = 0;
        while self.rows.is_empty() && self.next_block < self.blocks.len() {
            let (first_id, calls) = self.blocks[self.next_block];
            self.next_block += 1;
            let conn = self.conn()?;
            let block: Option<(Vec<u8>, i64)> = conn
                .query_row(
                    "SELECT data, format FROM call_blocks WHERE first_id = ?1",
                    [first_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            // A block deleted by retention since the scan began is skipped.
            let Some((data, format)) = block else {
                continue;
            };
            self.data = data;
            self.rows = decode_block(&self.data, first_id, calls, format)
                .map_err(|e| rusqlite::Error::ModuleError(format!("call block {first_id}: {e}")))?;
            if self.desc {
                self.rows.reverse();
            }
        }
        Ok(())
    }

    fn row(&self) -> Option<&Row> {
        self.rows.get(self.at)
    }

    fn text(&self, span: (u32, u32)) -> &str {
        std::str::from_utf8(&self.data[span.0 as usize..span.1 as usize]).unwrap_or("")
    }
}

// SAFETY: `CallsCursor` is `#[repr(C)]` with the `sqlite3_vtab_cursor` base first.
unsafe impl VTabCursor for CallsCursor<'_> {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        let (mut id_lo, mut id_hi) = (i64::MIN, i64::MAX);
        let (mut ts_lo, mut ts_hi) = (i64::MIN, i64::MAX);
        for (i, kind) in idx_str.unwrap_or("").bytes().enumerate() {
            // Only whole numbers narrow the scan; any other bound (NULL, a
            // real, text) reads every block and is left to SQLite's own check.
            let Ok(Some(v)) = args.get::<Option<i64>>(i) else {
                continue;
            };
            match kind {
                ID_MIN => id_lo = id_lo.max(v),
                ID_MAX => id_hi = id_hi.min(v),
                ID_EQ => (id_lo, id_hi) = (id_lo.max(v), id_hi.min(v)),
                TS_MIN => ts_lo = ts_lo.max(v),
                TS_MAX => ts_hi = ts_hi.min(v),
                TS_EQ => (ts_lo, ts_hi) = (ts_lo.max(v), ts_hi.min(v)),
                _ => {}
            }
        }
        self.desc = idx_num & ORDER_DESC != 0;
        let conn = self.conn()?;
        let mut blocks = conn.prepare_cached(if self.desc {
            "SELECT first_id, calls FROM call_blocks
             WHERE last_id >= ?1 AND first_id <= ?2 AND max_ts_ms >= ?3 AND min_ts_ms <= ?4
             ORDER BY first_id DESC"
        } else {
            "SELECT first_id, calls FROM call_blocks
             WHERE last_id >= ?1 AND first_id <= ?2 AND max_ts_ms >= ?3 AND min_ts_ms <= ?4
             ORDER BY first_id"
        })?;
        self.blocks = blocks
            .query_map([id_lo, id_hi, ts_lo, ts_hi], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as usize))
            })?
            .collect::<rusqlite::Result<_>>()?;
        self.next_block = 0;
        self.load_next_block()
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        self.at += 1;
        if self.at >= self.rows.len() {
            self.load_next_block()?;
        }
        Ok(())
    }

    fn eof(&self) -> bool {
        self.row().is_none()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        let Some(r) = self.row() else {
            return ctx.set_result(&rusqlite::types::Null);
        };
        let text = |n: usize| self.text(r.spans[n]);
        // LLM text columns are NULL when empty, as they were as real columns.
        let llm_text = |n: usize| {
            r.llm
                .as_ref()
                .map(|_| text(FIRST_LABEL + API_LABELS + n))
                .filter(|s| !s.is_empty())
        };
        let l = r.llm.as_ref();
        let label = |n: usize| text(FIRST_LABEL + n);
        match i {
            0 => ctx.set_result(&r.id),
            1 => ctx.set_result(&r.ts_ms),
            2 => ctx.set_result(&text(0)),
            3 => ctx.set_result(&text(1)),
            4 => ctx.set_result(&label(0)),
            5 => ctx.set_result(&text(2)),
            6 => ctx.set_result(&label(1)),
            7 => ctx.set_result(&label(2)),
            8 => ctx.set_result(&label(3)),
            9 => ctx.set_result(&label(4)),
            10 => ctx.set_result(&label(5)),
            11 => ctx.set_result(&r.figures.status),
            12 => ctx.set_result(&label(6)),
            13 => ctx.set_result(&(r.figures.total_us as i64)),
            14 => ctx.set_result(&r.figures.upstream_us.map(|v| v as i64)),
            15 => ctx.set_result(&l.and_then(|l| l.ttft_us).map(|v| v as i64)),
            16 => ctx.set_result(&(r.figures.bytes_in as i64)),
            17 => ctx.set_result(&(r.figures.bytes_out as i64)),
            18 => ctx.set_result(&r.figures.retries),
            19..=22 => ctx.set_result(&llm_text(i as usize - 19)),
            23 => ctx.set_result(&l.map(|l| l.prompt_tokens as i64)),
            24 => ctx.set_result(&l.map(|l| l.completion_tokens as i64)),
            25 => ctx.set_result(&l.map(|l| l.cached_tokens as i64)),
            26 => ctx.set_result(&l.map(|l| l.reasoning_tokens as i64)),
            27 => ctx.set_result(&l.map(|l| l.cost_nanos as f64 / 1e9)),
            28 => ctx.set_result(&l.map(|l| l.estimated)),
            29 => ctx.set_result(&llm_text(4)),
            30 => ctx.set_result(&llm_text(5)),
            31 => ctx.set_result(&l.map(|l| l.cache_hit)),
            32 => ctx.set_result(&llm_text(6)),
            33 => ctx.set_result(&r.request_body.map(|s| self.text(s))),
            34 => ctx.set_result(&r.response_body.map(|s| self.text(s))),
            35 => ctx.set_result(&r.figures.outcome.label()),
            36 => ctx.set_result(&l.map(|l| l.cost_nanos as i64)),
            _ => ctx.set_result(&rusqlite::types::Null),
        }
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.row().map_or(0, |r| r.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypergate_core::record::LlmRecord;

    fn record(i: u64) -> AccessRecord {
        AccessRecord {
            unix_ms: 1_700_000_000_000 + i * 3,
            request_id: format!("req-{i}"),
            trace_id: format!("{i:032x}"),
            method: if i % 3 == 0 { "POST" } else { "GET" }.into(),
            path: format!("/items/{i}"),
            route: if i % 5 == 0 { "llm" } else { "api" }.into(),
            cluster: "backend".into(),
            version: if i % 2 == 0 { "v1" } else { "v2" }.into(),
            endpoint: "127.0.0.1:9000".into(),
            status: if i % 7 == 0 { 503 } else { 200 },
            outcome: if i % 7 == 0 {
                Outcome::UpstreamError
            } else {
                Outcome::Ok
            },
            error: if i % 7 == 0 {
                "upstream_unavailable"
            } else {
                ""
            },
            total_us: 100 + i,
            upstream_us: (i % 7 != 0).then_some(90 + i),
            bytes_out: 10 * i,
            llm: (i % 5 == 0).then(|| {
                Box::new(LlmRecord {
                    alias: "smart".into(),
                    target: format!("openai/gpt-{}", i % 2),
                    provider: "openai".into(),
                    model: format!("gpt-{}", i % 2),
                    prompt_tokens: i,
                    completion_tokens: 2 * i,
                    cost_nanos: i * 1_000_000,
                    ttft_us: Some(50),
                    guardrails: if i % 10 == 0 {
                        vec!["pii:redact".into(), "deny:block".into()]
                    } else {
                        vec![]
                    },
                    request_body: (i % 10 == 0).then(|| format!("{{\"n\":{i}}}")),
                    ..LlmRecord::default()
                })
            }),
            ..AccessRecord::default()
        }
    }

    fn table(n: u64, block_size: u64) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::store::SCHEMA).unwrap();
        register(&conn).unwrap();
        let mut w = BlockWriter::default();
        let mut first = 1;
        for i in 0..n {
            w.push(&record(i));
            if u64::from(w.len()) == block_size {
                let calls = i64::from(w.len());
                w.write(&conn, first).unwrap();
                first += calls;
            }
        }
        if !w.is_empty() {
            w.write(&conn, first).unwrap();
        }
        conn
    }

    /// A block as format 2 wrote it (no outcome, cost as float dollars).
    #[derive(Serialize)]
    struct V2<'a> {
        ts_delta_ms: i64,
        figures: (u16, u64, Option<u64>, u64, u64, u32),
        request_id: &'a str,
        trace_id: &'a str,
        path: &'a str,
        request_body: Option<&'a str>,
        response_body: Option<&'a str>,
        labels: [Option<&'a str>; API_LABELS],
        llm: Option<([Option<&'a str>; LLM_LABELS], V2Llm)>,
    }

    #[derive(Serialize)]
    struct V2Llm(Option<u64>, u64, u64, u64, u64, f64, bool, bool);

    #[test]
    fn format_2_blocks_still_read() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::store::SCHEMA).unwrap();
        register(&conn).unwrap();
        let call = |status, cost| V2 {
            ts_delta_ms: 5,
            figures: (status, 100, Some(90), 0, 10, 0),
            request_id: "r",
            trace_id: "t",
            path: "/p",
            request_body: None,
            response_body: None,
            labels: [
                Some("GET"),
                Some("llm"),
                Some(""),
                Some("c"),
                Some("v1"),
                Some("e"),
                Some(""),
            ],
            llm: Some((
                [Some("openai"), Some("m"), None, None, None, None, None],
                V2Llm(None, 3, 0, 0, 0, cost, false, false),
            )),
        };
        let mut data = postcard::to_allocvec(&call(200, 0.000_004_5)).unwrap();
        data.extend(postcard::to_allocvec(&call(503, 0.0)).unwrap());
        conn.execute(
            "INSERT INTO call_blocks (first_id, last_id, min_ts_ms, max_ts_ms, calls, data, format)
             VALUES (1, 2, 0, 10, 2, ?1, 2)",
            [data],
        )
        .unwrap();
        let rows: Vec<(u16, String, i64)> = conn
            .prepare("SELECT status, outcome, cost_nanos FROM calls ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [(200, "ok".into(), 4_500), (503, "upstream_error".into(), 0)]
        );
    }

    #[test]
    fn labels_compare_by_content() {
        for (a, b, eq) in [
            ("", "", true),
            ("v1", "v1", true),
            ("v1", "v2", false),
            ("v1", "v10", false),
            ("127.0.0.1:19000", "127.0.0.1:19000", true),
            ("127.0.0.1:19000", "127.0.0.2:19000", false),
            ("127.0.0.1:19000", "127.0.0.1:19001", false),
        ] {
            assert_eq!(same(a, b), eq, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn every_field_reads_back_as_written() {
        let conn = table(100, 16);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM calls ORDER BY id",
                COLUMNS.join(",")
            ))
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut i = 0;
        while let Some(row) = rows.next().unwrap() {
            let r = record(i);
            assert_eq!(row.get::<_, i64>(0).unwrap(), i as i64 + 1);
            assert_eq!(row.get::<_, u64>(1).unwrap(), r.unix_ms);
            assert_eq!(row.get::<_, String>(2).unwrap(), r.request_id);
            assert_eq!(row.get::<_, String>(3).unwrap(), r.trace_id);
            assert_eq!(row.get::<_, String>(4).unwrap(), r.method);
            assert_eq!(row.get::<_, String>(5).unwrap(), r.path);
            assert_eq!(row.get::<_, String>(6).unwrap(), r.route);
            assert_eq!(row.get::<_, String>(9).unwrap(), r.version);
            assert_eq!(row.get::<_, u16>(11).unwrap(), r.status);
            assert_eq!(row.get::<_, String>(12).unwrap(), r.error);
            assert_eq!(row.get::<_, Option<u64>>(14).unwrap(), r.upstream_us);
            assert_eq!(row.get::<_, u64>(17).unwrap(), r.bytes_out);
            let l = r.llm.as_deref();
            assert_eq!(
                row.get::<_, Option<String>>(20).unwrap().as_deref(),
                l.map(|l| l.model.as_str())
            );
            assert_eq!(
                row.get::<_, Option<u64>>(23).unwrap(),
                l.map(|l| l.prompt_tokens)
            );
            assert_eq!(
                row.get::<_, Option<f64>>(27).unwrap(),
                l.map(|l| l.cost_nanos as f64 / 1e9)
            );
            assert_eq!(
                row.get::<_, Option<u64>>(36).unwrap(),
                l.map(|l| l.cost_nanos)
            );
            assert_eq!(row.get::<_, String>(35).unwrap(), r.outcome.label());
            assert_eq!(
                row.get::<_, Option<String>>(32).unwrap(),
                l.filter(|l| !l.guardrails.is_empty())
                    .map(|l| l.guardrails.join(","))
            );
            assert_eq!(
                row.get::<_, Option<String>>(33).unwrap(),
                l.and_then(|l| l.request_body.clone())
            );
            i += 1;
        }
        assert_eq!(i, 100);
    }

    #[test]
    fn ranges_order_and_filters_match_a_plain_table() {
        let conn = table(1000, 64);
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        let t0 = 1_700_000_000_000i64;
        assert_eq!(count("SELECT COUNT(*) FROM calls"), 1000);
        assert_eq!(count("SELECT COUNT(*) FROM calls WHERE id > 990"), 10);
        assert_eq!(count("SELECT COUNT(*) FROM calls WHERE id = 500"), 1);
        assert_eq!(
            count("SELECT COUNT(*) FROM calls WHERE rowid BETWEEN 10 AND 19"),
            10
        );
        assert_eq!(
            count(&format!(
                "SELECT COUNT(*) FROM calls WHERE ts_ms >= {} AND ts_ms < {}",
                t0 + 300,
                t0 + 600
            )),
            100
        );
        assert_eq!(count("SELECT COUNT(*) FROM calls WHERE status = 503"), 143);
        assert_eq!(
            count("SELECT COUNT(*) FROM calls WHERE route = 'llm' AND model = 'gpt-0'"),
            100
        );
        let ids = |sql: &str| -> Vec<i64> {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(
            ids("SELECT id FROM calls WHERE id < 500 ORDER BY id DESC LIMIT 3"),
            [499, 498, 497]
        );
        assert_eq!(ids("SELECT id FROM calls ORDER BY id LIMIT 2"), [1, 2]);
        assert_eq!(count("SELECT COUNT(*) FROM calls WHERE id = NULL"), 0);
    }
}
