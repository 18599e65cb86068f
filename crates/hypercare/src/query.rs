//! Read-side queries over the call store, shared by the admin API
//! (`/hypercare/calls`, `/hypercare/calls/<id>`, `/hypercare/summary`) and the
//! CLI (`hypergate calls`, `hypergate summary`), so both always say the same thing.

use super::store::{add_histogram_json, rollup_figures, ROLLUP_COLUMNS};
use hdrhistogram::Histogram;
use hypergate_core::error::Outcome;
use hypergate_core::metrics::new_histogram;
use hypergate_core::rollup::RollupFigures;
use rusqlite::{params_from_iter, Connection};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Filters of `/hypercare/calls`.
#[derive(Debug, Default, Clone)]
pub struct CallFilter {
    /// Route name.
    pub route: Option<String>,
    /// Consumer name.
    pub consumer: Option<String>,
    /// Cluster version label.
    pub version: Option<String>,
    /// Exact status (`503`) or class (`5xx`).
    pub status: Option<String>,
    /// Minimum total latency in milliseconds.
    pub min_latency_ms: Option<u64>,
    /// LLM model: the provider's model (`gpt-4o`) or the alias clients ask for.
    pub model: Option<String>,
    /// How calls ended: an [`Outcome`] label (`timeout`), or `error` for every
    /// outcome that is an error of the service.
    pub outcome: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until_ms: Option<i64>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Continue after this row id (from the previous page's `next_cursor`).
    pub cursor: Option<i64>,
}

/// Why a query could not run.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A filter value is invalid.
    #[error("{0}")]
    BadFilter(String),
    /// The database failed.
    #[error("call store: {0}")]
    Store(#[from] rusqlite::Error),
}

/// Parses a time filter: Unix milliseconds, RFC 3339, or a duration ago (`15m`, `24h`).
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, QueryError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64));
    }
    humantime::parse_duration(text)
        .map(|d| now_ms - d.as_millis() as i64)
        .map_err(|_| {
            QueryError::BadFilter(format!(
                "{text:?}: expected Unix milliseconds, an RFC 3339 time or a duration like 15m"
            ))
        })
}

impl CallFilter {
    /// Builds a filter from `key=value` query parameters (unknown keys are errors).
    pub fn from_query(query: &str, now_ms: i64) -> Result<CallFilter, QueryError> {
        let mut f = CallFilter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| QueryError::BadFilter(format!("{k}: {v:?} is not a number")))
            };
            match k {
                "route" => f.route = Some(v),
                "consumer" => f.consumer = Some(v),
                "version" => f.version = Some(v),
                "status" => f.status = Some(v),
                "min_latency_ms" => f.min_latency_ms = Some(num(&v)?),
                "model" => f.model = Some(v),
                "outcome" if v == "error" || Outcome::ALL.iter().any(|o| o.label() == v) => {
                    f.outcome = Some(v)
                }
                "outcome" => {
                    let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.label()).collect();
                    return Err(QueryError::BadFilter(format!(
                        "outcome: {v:?} is not error, {}",
                        labels.join(", ")
                    )));
                }
                "since" => f.since_ms = Some(parse_time(&v, now_ms)?),
                "until" => f.until_ms = Some(parse_time(&v, now_ms)?),
                "limit" => f.limit = Some(num(&v)? as usize),
                "cursor" => f.cursor = Some(num(&v)? as i64),
                other => {
                    return Err(QueryError::BadFilter(format!(
                        "unknown filter {other:?} (route, consumer, version, status, model, outcome, min_latency_ms, since, until, limit, cursor)"
                    )))
                }
            }
        }
        Ok(f)
    }
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Newest calls first, one page.
pub fn calls(conn: &Connection, f: &CallFilter) -> Result<Value, QueryError> {
    let mut sql = String::from(
        "SELECT c.id, c.ts_ms, c.request_id, trace_id, method, path, route, consumer, cluster,
            version, endpoint, status, outcome, error, total_us, upstream_us, ttft_us, bytes_in,
            bytes_out, retries, provider, model, alias, target, prompt_tokens, completion_tokens,
            cached_tokens, reasoning_tokens, cost_usd, estimated, prompt, prompt_version,
            cache_hit, guardrails, f.score AS feedback_score, f.comment AS feedback_comment,
            request_body, response_body
         FROM calls c LEFT JOIN feedback f ON f.request_id = c.request_id WHERE 1 = 1",
    );
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut add = |clause: &str, v: rusqlite::types::Value| {
        sql.push_str(" AND ");
        sql.push_str(clause);
        args.push(v);
    };
    if let Some(v) = &f.route {
        add("route = ?", v.clone().into());
    }
    if let Some(v) = &f.consumer {
        add("consumer = ?", v.clone().into());
    }
    if let Some(v) = &f.version {
        add("version = ?", v.clone().into());
    }
    if let Some(s) = &f.status {
        match s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
            Some(class) => {
                let c: i64 = class
                    .parse()
                    .map_err(|_| QueryError::BadFilter(format!("status: {s:?}")))?;
                add("status / 100 = ?", c.into());
            }
            None => {
                let c: i64 = s
                    .parse()
                    .map_err(|_| QueryError::BadFilter(format!("status: {s:?}")))?;
                add("status = ?", c.into());
            }
        }
    }
    if let Some(v) = &f.model {
        add("? IN (model, alias)", v.clone().into());
    }
    if let Some(o) = &f.outcome {
        let labels: Vec<&str> = match o.as_str() {
            "error" => Outcome::ALL
                .iter()
                .filter(|o| o.is_error())
                .map(|o| o.label())
                .collect(),
            label => vec![label],
        };
        add(
            "outcome IN (SELECT value FROM json_each(?))",
            json!(labels).to_string().into(),
        );
    }
    if let Some(ms) = f.min_latency_ms {
        add("total_us >= ?", (ms as i64 * 1000).into());
    }
    if let Some(t) = f.since_ms {
        add("c.ts_ms >= ?", t.into());
    }
    if let Some(t) = f.until_ms {
        add("c.ts_ms < ?", t.into());
    }
    if let Some(c) = f.cursor {
        add("c.id < ?", c.into());
    }
    let limit = f.limit.unwrap_or(100).clamp(1, 1000);
    sql.push_str(" ORDER BY c.id DESC LIMIT ?");
    args.push((limit as i64).into());
    let mut out = Vec::new();
    let mut last_id = None;
    rows_as_json(conn, &sql, params_from_iter(args), false, |obj| {
        last_id = obj.get("id").and_then(Value::as_i64);
        out.push(obj);
    })?;
    let next = if out.len() == limit { last_id } else { None };
    Ok(json!({"calls": out, "next_cursor": next}))
}

/// One call by id with every column (NULLs as `null`) and its feedback
/// (`feedback_score`, `feedback_comment`); `None` when the store holds no call
/// with that id (never recorded, or gone by retention).
pub fn call(conn: &Connection, id: i64) -> Result<Option<Value>, QueryError> {
    let mut found = None;
    rows_as_json(
        conn,
        "SELECT c.*, f.score AS feedback_score, f.comment AS feedback_comment
         FROM calls c LEFT JOIN feedback f ON f.request_id = c.request_id WHERE c.id = ?1",
        [id],
        true,
        |obj| found = Some(obj),
    )?;
    Ok(found)
}

/// Runs a query and hands each row to `each` as a JSON object keyed by column
/// name (NULLs as `null`, or left out when `nulls` is false; blobs as hex).
pub fn rows_as_json(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    nulls: bool,
    mut each: impl FnMut(Value),
) -> Result<(), QueryError> {
    let mut stmt = conn.prepare(sql)?;
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let mut rows = stmt.query(params)?;
    while let Some(row) = rows.next()? {
        let mut obj = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            let j = match row.get::<_, rusqlite::types::Value>(i)? {
                rusqlite::types::Value::Null if !nulls => continue,
                rusqlite::types::Value::Null => Value::Null,
                rusqlite::types::Value::Integer(n) => json!(n),
                rusqlite::types::Value::Real(x) => json!(x),
                rusqlite::types::Value::Text(t) => json!(t),
                rusqlite::types::Value::Blob(b) => {
                    json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
                }
            };
            obj.insert(name.clone(), j);
        }
        each(Value::Object(obj));
    }
    Ok(())
}

/// Figures of one group of rollups: exact totals (the shards count every
/// call), and how many of the calls have a stored row.
#[derive(Default)]
pub struct Aggregate {
    /// Calls.
    pub requests: u64,
    /// By status class 1xx..5xx (calls that never got a status are in `no_status`).
    pub by_class: [u64; 5],
    /// Calls that never got a status.
    pub no_status: u64,
    /// By outcome, in [`Outcome::ALL`] order.
    pub by_outcome: [u64; Outcome::COUNT],
    /// Calls whose outcome is an error of the service ([`Outcome::is_error`]).
    pub errors: u64,
    /// Latency histogram (µs).
    pub latency: Option<Histogram<u64>>,
    /// Sum of latencies (µs).
    pub latency_sum_us: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cost in nano-dollars.
    pub cost_nanos: u64,
    /// LLM calls whose usage the gateway estimated.
    pub estimated: u64,
    /// Sum and count of streamed calls' time to first token (µs).
    pub ttft: (u64, u64),
    /// Calls whose row was handed to the store's writer (a write that fails
    /// afterwards loses them; `hypergate_callstore_lost_total` counts those).
    pub recorded: u64,
    /// Calls whose row the store's sampling rules left out.
    pub sampled_out: u64,
}

impl Aggregate {
    /// Adds a rollup's figures.
    pub fn add_figures(&mut self, f: &RollupFigures) {
        self.requests += f.requests();
        for i in 0..5 {
            self.by_class[i] += f.by_class[i + 1];
        }
        self.no_status += f.by_class[0];
        for o in Outcome::ALL {
            self.by_outcome[o.index()] += f.by_outcome[o.index()];
            if o.is_error() {
                self.errors += f.by_outcome[o.index()];
            }
        }
        self.latency_sum_us += f.latency_sum_us;
        self.prompt_tokens += f.prompt_tokens;
        self.completion_tokens += f.completion_tokens;
        self.cost_nanos += f.cost_nanos;
        self.estimated += f.estimated;
        self.ttft.0 += f.ttft_sum_us;
        self.ttft.1 += f.ttft_calls;
        self.recorded += f.recorded;
        self.sampled_out += f.sampled_out;
    }

    /// Adds another group's figures.
    pub fn absorb(&mut self, a: &Aggregate) {
        self.requests += a.requests;
        for i in 0..5 {
            self.by_class[i] += a.by_class[i];
        }
        self.no_status += a.no_status;
        for i in 0..Outcome::COUNT {
            self.by_outcome[i] += a.by_outcome[i];
        }
        self.errors += a.errors;
        if let Some(h) = &a.latency {
            let _ = self.latency.get_or_insert_with(new_histogram).add(h);
        }
        self.latency_sum_us += a.latency_sum_us;
        self.prompt_tokens += a.prompt_tokens;
        self.completion_tokens += a.completion_tokens;
        self.cost_nanos += a.cost_nanos;
        self.estimated += a.estimated;
        self.ttft.0 += a.ttft.0;
        self.ttft.1 += a.ttft.1;
        self.recorded += a.recorded;
        self.sampled_out += a.sampled_out;
    }

    /// Share of calls that are errors of the service.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// Cost in dollars.
    pub fn cost_usd(&self) -> f64 {
        self.cost_nanos as f64 / 1e9
    }

    /// Calls whose row was dropped (a full queue or a failed write), neither
    /// stored nor sampled out.
    pub fn dropped(&self) -> u64 {
        self.requests
            .saturating_sub(self.recorded + self.sampled_out)
    }

    /// "recorded N of M calls" and why the rest are missing, or `None` when
    /// every call has its row.
    pub fn rows_note(&self) -> Option<String> {
        (self.recorded < self.requests).then(|| {
            format!(
                "rows: recorded {} of {} calls ({} left out by sampling, {} dropped); totals count every call \
                 (recorded: handed to the store's writer; rows of a write that failed afterwards are \
                 counted in hypergate_callstore_lost_total)",
                self.recorded,
                self.requests,
                self.sampled_out,
                self.dropped()
            )
        })
    }

    /// A latency quantile in µs (0 without data).
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.latency.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }

    /// JSON for APIs and reports.
    pub fn json(&self) -> Value {
        let outcome: serde_json::Map<String, Value> = Outcome::ALL
            .iter()
            .map(|o| (o.label().to_string(), json!(self.by_outcome[o.index()])))
            .collect();
        json!({
            "requests": self.requests,
            "status": {"1xx": self.by_class[0], "2xx": self.by_class[1], "3xx": self.by_class[2], "4xx": self.by_class[3], "5xx": self.by_class[4], "none": self.no_status},
            "outcome": outcome,
            "errors": self.errors,
            "error_rate": self.error_rate(),
            "latency_ms": {
                "mean": if self.requests == 0 { 0.0 } else { self.latency_sum_us as f64 / self.requests as f64 / 1000.0 },
                "p50": self.quantile_us(0.5) as f64 / 1000.0,
                "p90": self.quantile_us(0.9) as f64 / 1000.0,
                "p99": self.quantile_us(0.99) as f64 / 1000.0,
            },
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd(),
            "cost_nanos": self.cost_nanos,
            "estimated_usage_calls": self.estimated,
            "rows": {
                "recorded": self.recorded,
                "sampled_out": self.sampled_out,
                "dropped": self.dropped(),
                "complete": self.recorded == self.requests,
            },
        })
    }
}

/// Rollup key for grouping: (route, cluster, version, model).
pub type GroupKey = (String, String, String, String);

/// Sums rollups from `since_minute` (inclusive) to `until_minute` (exclusive)
/// per (route, cluster, version, model).
pub fn aggregate(
    conn: &Connection,
    since_minute: i64,
    until_minute: i64,
) -> Result<BTreeMap<GroupKey, Aggregate>, QueryError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT route, cluster, version, model, {ROLLUP_COLUMNS}
         FROM rollups WHERE minute >= ?1 AND minute < ?2"
    ))?;
    let mut rows = stmt.query([since_minute, until_minute])?;
    let mut groups: BTreeMap<GroupKey, Aggregate> = BTreeMap::new();
    while let Some(r) = rows.next()? {
        let key = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        let (figures, hist) = rollup_figures(r, 4)?;
        let a = groups.entry(key).or_default();
        a.add_figures(&figures);
        add_histogram_json(a.latency.get_or_insert_with(new_histogram), &hist);
    }
    Ok(groups)
}

/// `/hypercare/summary`: per route and version over the last `window`.
pub fn summary(conn: &Connection, window: Duration, now_ms: i64) -> Result<Value, QueryError> {
    let until = now_ms / 60_000 + 1;
    let since = (now_ms - window.as_millis() as i64) / 60_000;
    let groups = aggregate(conn, since, until)?;
    let mut total = Aggregate::default();
    let mut out = Vec::new();
    for ((route, cluster, version, model), a) in &groups {
        total.absorb(a);
        let mut v = a.json();
        v["route"] = route.as_str().into();
        v["cluster"] = cluster.as_str().into();
        v["version"] = version.as_str().into();
        v["model"] = model.as_str().into();
        out.push(v);
    }
    Ok(json!({
        "window": humantime::format_duration(window).to_string(),
        "since_ms": since * 60_000,
        "until_ms": until * 60_000,
        "total": total.json(),
        "rows_note": total.rows_note(),
        "groups": out,
    }))
}

/// `/hypercare/series`: per minute and (route, version), over the last `window`:
/// requests, errors (outcomes that are errors of the service), p50 and p99
/// latency (ms), tokens, cost, and calls with a stored row; for charts.
pub fn series(conn: &Connection, window: Duration, now_ms: i64) -> Result<Value, QueryError> {
    let since = (now_ms - window.as_millis() as i64) / 60_000;
    let mut stmt = conn.prepare_cached(
        "SELECT minute, route, version, requests, upstream_error + gateway_error + timeout,
            latency_hist, prompt_tokens + completion_tokens, cost_nanos, recorded
         FROM rollups WHERE minute >= ?1 ORDER BY minute",
    )?;
    let mut rows = stmt.query([since])?;
    // (route, version) -> minute -> figures (several clusters or models may share a minute).
    type Minute = (u64, u64, Histogram<u64>, u64, u64, u64);
    let mut by: BTreeMap<(String, String), BTreeMap<i64, Minute>> = BTreeMap::new();
    while let Some(r) = rows.next()? {
        let key = (r.get::<_, String>(1)?, r.get::<_, String>(2)?);
        let m = by
            .entry(key)
            .or_default()
            .entry(r.get(0)?)
            .or_insert_with(|| (0, 0, new_histogram(), 0, 0, 0));
        m.0 += r.get::<_, i64>(3)? as u64;
        m.1 += r.get::<_, i64>(4)? as u64;
        add_histogram_json(&mut m.2, &r.get::<_, String>(5)?);
        m.3 += r.get::<_, i64>(6)? as u64;
        m.4 += r.get::<_, i64>(7)? as u64;
        m.5 += r.get::<_, i64>(8)? as u64;
    }
    let series: Vec<Value> = by
        .into_iter()
        .map(|((route, version), minutes)| {
            let (mut t, mut req, mut err, mut p50, mut p99, mut tok, mut cost, mut rec) = (
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
            );
            for (minute, (n, e, h, tk, c, rc)) in minutes {
                t.push(minute * 60);
                req.push(n);
                err.push(e);
                p50.push(h.value_at_quantile(0.5) as f64 / 1000.0);
                p99.push(h.value_at_quantile(0.99) as f64 / 1000.0);
                tok.push(tk);
                cost.push(c as f64 / 1e9);
                rec.push(rc);
            }
            json!({"route": route, "version": version, "t": t, "requests": req, "errors": err,
                   "p50_ms": p50, "p99_ms": p99, "tokens": tok, "cost_usd": cost,
                   "recorded": rec})
        })
        .collect();
    Ok(json!({"window": humantime::format_duration(window).to_string(), "series": series}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_reject_unknown_keys() {
        let f = CallFilter::from_query(
            "route=api&status=5xx&since=15m&limit=5&consumer=a%20b",
            1_000_000,
        )
        .unwrap();
        assert_eq!(f.route.as_deref(), Some("api"));
        assert_eq!(f.consumer.as_deref(), Some("a b"));
        assert_eq!(f.since_ms, Some(1_000_000 - 900_000));
        assert!(CallFilter::from_query("rout=api", 0).is_err());
        let f = CallFilter::from_query("model=gpt-4o&status=500&outcome=timeout", 0).unwrap();
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert_eq!(f.status.as_deref(), Some("500"));
        assert_eq!(f.outcome.as_deref(), Some("timeout"));
        assert!(CallFilter::from_query("outcome=error", 0).is_ok());
        assert!(CallFilter::from_query("outcome=failed", 0).is_err());
        assert!(CallFilter::from_query("limit=x", 0).is_err());
        assert_eq!(
            parse_time("2026-11-27T00:00:00Z", 0).unwrap(),
            1_795_737_600_000
        );
    }
}
