//! Cluster-wide budgets: the same reserve-then-settle windows as [`super::budget`],
//! kept in Redis so every gateway sharing the server enforces one budget.
//!
//! A budget with `backend = "redis"` keeps each window in its own key,
//! `hypergate:budget:<name>:<key>:<window>:<number>` (so a new minute, day or month
//! is a new key, expiring after its window; `<window>` is `m` for tokens, `dn` and
//! `Mn` for a day's and a month's nano-dollars). A Lua script checks every window of
//! every budget and reserves on all of them only if all fit, atomically on the
//! server; settlement adds `actual - reserved` to the same keys. Shards hand jobs to
//! one worker thread over a bounded channel (never blocking: a full queue counts as
//! Redis being unavailable) and await the reply on a one-shot channel, so the shard
//! runs other requests meanwhile. When Redis cannot answer within `redis.timeout`,
//! the budget's `failure_mode` decides: `open` admits the call unbudgeted, `closed`
//! refuses it with 503.

use hypergate_core::config::edge::RedisConfig;
use std::time::{Duration, Instant};

/// Jobs waiting for the worker, at most.
const QUEUE: usize = 1024;
/// Pause between reconnection attempts.
const RECONNECT: Duration = Duration::from_millis(250);

/// KEYS: one per window. ARGV: op, then per key: limit (-1: none), amount, ttl_s.
/// reserve returns {1} or {0, index of the full window (1-based)}; settle returns {1}.
const SCRIPT: &str = r#"
local op = ARGV[1]
if op == 'reserve' then
  for i = 1, #KEYS do
    local limit = tonumber(ARGV[3 * i - 1])
    local amount = tonumber(ARGV[3 * i])
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    if limit >= 0 and used + amount > limit then return {0, i} end
  end
end
for i = 1, #KEYS do
  local amount = tonumber(ARGV[3 * i])
  if amount ~= 0 then
    local v = redis.call('INCRBY', KEYS[i], amount)
    if v < 0 then redis.call('SET', KEYS[i], 0) end
  end
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3 * i + 1]))
end
return {1}
"#;

/// One window of one budget account in Redis.
#[derive(Debug, Clone)]
pub struct RedisWindow {
    /// Key.
    pub key: String,
    /// Limit (`None`: only counted).
    pub limit: Option<u64>,
    /// Amount to reserve, or to add when settling (may be negative).
    pub amount: i64,
    /// Seconds the key outlives its window.
    pub ttl_s: u64,
    /// Counts tokens (else nano-dollars).
    pub tokens: bool,
}

/// What the worker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisAnswer {
    /// Reserved on every window.
    Reserved,
    /// The window at this index is full.
    Full(usize),
    /// Redis could not answer in time.
    Unavailable,
}

struct Job {
    reserve: bool,
    windows: Vec<RedisWindow>,
    deadline: Instant,
    reply: Option<async_channel::Sender<RedisAnswer>>,
}

/// The handle shards use; the worker stops when the last handle is dropped.
pub struct BudgetRedis {
    jobs: crossbeam_channel::Sender<Job>,
    timeout: Duration,
}

impl BudgetRedis {
    /// Starts the worker for `config`.
    pub fn start(config: &RedisConfig) -> BudgetRedis {
        let (jobs, queue) = crossbeam_channel::bounded(QUEUE);
        let config = config.clone();
        let timeout = config.timeout;
        let spawned = std::thread::Builder::new()
            .name("hypergate-budget-redis".into())
            .spawn(move || worker(&config, &queue));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the budget Redis worker");
        }
        BudgetRedis { jobs, timeout }
    }

    /// Reserves on every window, or says which one is full.
    pub async fn reserve(&self, windows: Vec<RedisWindow>) -> RedisAnswer {
        let (tx, rx) = async_channel::bounded(1);
        let job = Job {
            reserve: true,
            windows,
            deadline: Instant::now() + self.timeout,
            reply: Some(tx),
        };
        if self.jobs.try_send(job).is_err() {
            return RedisAnswer::Unavailable;
        }
        // The worker answers every job, by its deadline at the latest; this
        // timeout only guards against a worker that died.
        match monoio::time::timeout(self.timeout * 2 + Duration::from_millis(50), rx.recv()).await {
            Ok(Ok(a)) => a,
            _ => RedisAnswer::Unavailable,
        }
    }

    /// Adds the settlement deltas (fire and forget).
    pub fn settle(&self, windows: Vec<RedisWindow>) {
        let job = Job {
            reserve: false,
            windows,
            deadline: Instant::now() + self.timeout * 4,
            reply: None,
        };
        if self.jobs.try_send(job).is_err() {
            tracing::warn!("budget Redis queue full: a settlement was dropped");
        }
    }
}

fn worker(config: &RedisConfig, queue: &crossbeam_channel::Receiver<Job>) {
    let mut conn: Option<redis::Connection> = None;
    let mut next_connect = Instant::now();
    while let Ok(job) = queue.recv() {
        if conn.is_none() && Instant::now() >= next_connect {
            conn = connect(config)
                .inspect_err(|e| {
                    tracing::warn!(address = %config.address, error = %e, "budget Redis unreachable")
                })
                .ok();
            if conn.is_none() {
                next_connect = Instant::now() + RECONNECT;
            }
        }
        let answer = match conn.as_mut() {
            _ if Instant::now() >= job.deadline => RedisAnswer::Unavailable,
            None => RedisAnswer::Unavailable,
            Some(c) => match run(c, &job) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "budget Redis call failed");
                    // A timed-out connection may still deliver the late reply: never reuse it.
                    conn = None;
                    RedisAnswer::Unavailable
                }
            },
        };
        if let Some(tx) = job.reply {
            let _ = tx.try_send(answer);
        }
    }
}

fn connect(config: &RedisConfig) -> redis::RedisResult<redis::Connection> {
    let timeout = config.timeout;
    let info = hypergate_edge::ratelimit::redis_connection_info(config).ok_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "invalid address"))
    })?;
    let client = redis::Client::open(info)?;
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

fn run(con: &mut redis::Connection, job: &Job) -> redis::RedisResult<RedisAnswer> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SCRIPT).arg(job.windows.len());
    for w in &job.windows {
        cmd.arg(&w.key);
    }
    cmd.arg(if job.reserve { "reserve" } else { "settle" });
    for w in &job.windows {
        let limit = w.limit.map_or(-1, |l| l as i64);
        cmd.arg(limit).arg(w.amount).arg(w.ttl_s);
    }
    let reply: Vec<i64> = cmd.query(con)?;
    Ok(match reply.as_slice() {
        [0, i, ..] => RedisAnswer::Full((*i as usize).saturating_sub(1)),
        _ => RedisAnswer::Reserved,
    })
}
