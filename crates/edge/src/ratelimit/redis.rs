//! Redis backend: one worker thread per configured server runs the GCRA lease
//! script for every shard.
//!
//! Shards send [`Job`]s over a bounded channel (never blocking: a full queue is a
//! failure) and await the reply on a one-shot `async_channel`. The worker drains
//! up to 64 queued jobs, answers those whose deadline (`redis.timeout` after they
//! were queued) has passed with a timeout, and sends the rest as one pipeline of
//! `EVALSHA` calls (the script is loaded with `SCRIPT LOAD` on connect and again
//! after `NOSCRIPT`). Socket reads and writes time out after `redis.timeout`, so a
//! shard waits at most about twice that. On an I/O error the connection is
//! dropped and the server marked down; shards then decide by `failure_mode`
//! without queueing, while the worker reconnects every 250 ms.

use super::gcra::{Gcra, MAX_WINDOWS};
use super::global::{header, LogEvery};
use super::policy::redis_connection_info;
use crate::config::edge::RedisConfig;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Jobs waiting for the worker, at most.
const QUEUE: usize = 4096;
/// Jobs per pipeline, at most.
const BATCH: usize = 64;
/// Pause between reconnection attempts.
const RECONNECT: Duration = Duration::from_millis(250);

/// GCRA "take up to k" and "give back" over every window of one key, atomically,
/// on the server's clock (µs). Fields "1".."n" of the hash at KEYS[1] hold the
/// windows' TATs. ARGV: op, count, then per window: interval, capacity, tat_after.
/// take returns {granted, wait_us, now_us, debt_us...}.
pub(crate) const SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = (#ARGV - 2) / 3
local fields = {}
for i = 1, n do fields[i] = tostring(i) end
local tats = redis.call('HMGET', KEYS[1], unpack(fields))
local count = tonumber(ARGV[2])
if ARGV[1] == 'give' then
  local set = {}
  for i = 1, n do
    local tat = tonumber(tats[i])
    local ret = math.min(count * tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 2]) - now)
    if tat and tat > now and ret > 0 then
      set[#set + 1] = fields[i]
      set[#set + 1] = string.format('%.3f', math.max(tat - ret, now))
    end
  end
  if #set > 0 then redis.call('HSET', KEYS[1], unpack(set)) end
  return 0
end
local grant = count
local base = {}
for i = 1, n do
  local tat = math.max(tonumber(tats[i]) or 0, now)
  base[i] = tat
  local avail = math.floor((tonumber(ARGV[3 * i + 1]) - (tat - now)) / tonumber(ARGV[3 * i]) + 1e-6)
  if avail < grant then grant = avail end
end
if grant < 0 then grant = 0 end
local out = {grant, 0, now}
if grant > 0 then
  local set = {}
  local ttl = 0
  for i = 1, n do
    local nt = base[i] + grant * tonumber(ARGV[3 * i])
    set[#set + 1] = fields[i]
    set[#set + 1] = string.format('%.3f', nt)
    out[#out + 1] = math.floor(nt - now)
    ttl = math.max(ttl, nt - now)
  end
  redis.call('HSET', KEYS[1], unpack(set))
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1000)
else
  local wait = 0
  for i = 1, n do
    wait = math.max(wait, base[i] - now + tonumber(ARGV[3 * i]) - tonumber(ARGV[3 * i + 1]))
    out[#out + 1] = math.floor(base[i] - now)
  end
  out[2] = math.ceil(wait)
end
return out
"#;

/// Why a Redis lease failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Not connected (the worker is reconnecting).
    Down,
    /// The call or the wait in the queue exceeded `redis.timeout`.
    Timeout,
    /// The job queue is full.
    QueueFull,
    /// Connection error during the call.
    Io,
    /// Unexpected reply.
    Script,
}

impl Failure {
    const ALL: [Failure; 5] = [
        Failure::Down,
        Failure::Timeout,
        Failure::QueueFull,
        Failure::Io,
        Failure::Script,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Down => "down",
            Failure::Timeout => "timeout",
            Failure::QueueFull => "queue_full",
            Failure::Io => "io",
            Failure::Script => "script",
        }
    }
}

/// The server's answer to a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    pub granted: u64,
    /// When nothing was granted: µs until a token is available.
    pub wait_us: u64,
    /// Server clock, µs since the Unix epoch.
    pub now_us: i64,
    /// Per window: TAT - now after the take, µs.
    pub debt_us: [i64; MAX_WINDOWS],
}

/// What a job asks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    /// Take up to `want` tokens.
    Take { want: u64 },
    /// Give back `unused` tokens whose slots end at `tat_after_us`.
    Give {
        unused: u64,
        tat_after_us: [i64; MAX_WINDOWS],
    },
}

/// One script call.
pub(crate) struct Job {
    /// The bucket's Redis key.
    pub key: Vec<u8>,
    pub op: Op,
    pub gcra: [Gcra; MAX_WINDOWS],
    pub windows: usize,
    pub deadline: Instant,
    /// Where the answer goes (`None` for give-backs).
    pub reply: Option<async_channel::Sender<Result<Reply, Failure>>>,
}

/// Counters shared by every worker the limiter starts.
#[derive(Default)]
pub(crate) struct RedisStats {
    round_trips: AtomicU64,
    scripts: AtomicU64,
    errors: [AtomicU64; 5],
}

impl RedisStats {
    pub fn error(&self, f: Failure) {
        self.errors[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn calls(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    pub fn prometheus(&self, out: &mut String, up: bool) {
        header(
            out,
            "hypergate_ratelimit_redis_up",
            "gauge",
            "Whether the rate-limit Redis connection is up.",
        );
        let _ = writeln!(out, "hypergate_ratelimit_redis_up {}", u8::from(up));
        header(
            out,
            "hypergate_ratelimit_redis_round_trips_total",
            "counter",
            "Pipelined round trips to the rate-limit Redis.",
        );
        let _ = writeln!(
            out,
            "hypergate_ratelimit_redis_round_trips_total {}",
            self.calls()
        );
        header(
            out,
            "hypergate_ratelimit_redis_scripts_total",
            "counter",
            "Lease script calls (takes and give-backs) sent to Redis.",
        );
        let _ = writeln!(
            out,
            "hypergate_ratelimit_redis_scripts_total {}",
            self.scripts.load(Ordering::Relaxed)
        );
        header(
            out,
            "hypergate_ratelimit_redis_errors_total",
            "counter",
            "Failed rate-limit Redis leases by reason (down, timeout, queue_full, io, script).",
        );
        for f in Failure::ALL {
            let _ = writeln!(
                out,
                "hypergate_ratelimit_redis_errors_total{{reason=\"{}\"}} {}",
                f.label(),
                self.errors[f as usize].load(Ordering::Relaxed)
            );
        }
    }
}

/// A running worker; dropping the last handle stops it.
pub(crate) struct RedisHandle {
    config: RedisConfig,
    jobs: crossbeam_channel::Sender<Job>,
    up: Arc<AtomicBool>,
    stats: Arc<RedisStats>,
}

impl RedisHandle {
    /// Starts a worker for `config` (the address was validated).
    pub fn start(config: RedisConfig, stats: Arc<RedisStats>) -> RedisHandle {
        let (jobs, queue) = crossbeam_channel::bounded(QUEUE);
        // Optimistic until the first connection attempt says otherwise, so that
        // requests right after start wait for it instead of failing.
        let up = Arc::new(AtomicBool::new(true));
        let worker = Worker {
            config: config.clone(),
            timeout: config.timeout,
            queue,
            up: up.clone(),
            stats: stats.clone(),
            log: LogEvery::new(),
        };
        let spawned = std::thread::Builder::new()
            .name("hypergate-ratelimit-redis".into())
            .spawn(move || worker.run());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the rate-limit Redis worker");
            up.store(false, Ordering::Relaxed);
        }
        RedisHandle {
            config,
            jobs,
            up,
            stats,
        }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Whether the connection is up (or not yet tried).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Queues a job without blocking.
    pub fn send(&self, job: Job) -> Result<(), Failure> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                self.stats.error(Failure::QueueFull);
                Err(Failure::QueueFull)
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                self.stats.error(Failure::Down);
                Err(Failure::Down)
            }
        }
    }
}

struct Worker {
    /// Logged by `address` only; the credentials are used in `connect`.
    config: RedisConfig,
    timeout: Duration,
    queue: crossbeam_channel::Receiver<Job>,
    up: Arc<AtomicBool>,
    stats: Arc<RedisStats>,
    log: LogEvery,
}

struct Connection {
    con: redis::Connection,
    sha: String,
}

impl Worker {
    fn run(self) {
        let mut conn: Option<Connection> = None;
        let mut next_connect = Instant::now();
        let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
        loop {
            if conn.is_none() && Instant::now() >= next_connect {
                match self.connect() {
                    Ok(c) => {
                        if !self.up.swap(true, Ordering::Relaxed) {
                            tracing::info!(address = %self.config.address, "rate-limit Redis reachable again");
                        }
                        conn = Some(c);
                    }
                    Err(e) => {
                        self.up.store(false, Ordering::Relaxed);
                        self.failed(Failure::Down, &e);
                        next_connect = Instant::now() + RECONNECT;
                    }
                }
            }
            let first = if conn.is_some() {
                match self.queue.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                let wait = next_connect.saturating_duration_since(Instant::now());
                match self.queue.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            };
            batch.push(first);
            while batch.len() < BATCH {
                match self.queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            batch.retain(|job| {
                if job.deadline > now {
                    return true;
                }
                self.stats.error(Failure::Timeout);
                answer(job, Err(Failure::Timeout));
                false
            });
            match conn.as_mut() {
                _ if batch.is_empty() => {}
                None => {
                    for job in &batch {
                        self.stats.error(Failure::Down);
                        answer(job, Err(Failure::Down));
                    }
                }
                Some(c) => {
                    if let Err(e) = self.run_batch(c, &batch) {
                        let failure = if e.is_timeout() {
                            Failure::Timeout
                        } else {
                            Failure::Io
                        };
                        for job in &batch {
                            self.stats.error(failure);
                            answer(job, Err(failure));
                        }
                        self.failed(failure, &e);
                        // A timed-out connection may still deliver the late reply: never reuse it.
                        conn = None;
                        self.up.store(false, Ordering::Relaxed);
                        next_connect = Instant::now();
                    }
                }
            }
            batch.clear();
        }
    }

    fn failed(&self, f: Failure, e: &redis::RedisError) {
        if let Some(suppressed) = self.log.allow(super::gcra::now_ns()) {
            tracing::warn!(address = %self.config.address, reason = f.label(), error = %e, suppressed, "rate-limit Redis call failed");
        }
    }

    fn connect(&self) -> redis::RedisResult<Connection> {
        let info = redis_connection_info(&self.config).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "invalid address"))
        })?;
        let client = redis::Client::open(info)?;
        let mut con = client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        let sha = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query(&mut con)?;
        Ok(Connection { con, sha })
    }

    /// Sends the batch as one pipeline; answers every job unless the connection failed.
    fn run_batch(&self, c: &mut Connection, batch: &[Job]) -> redis::RedisResult<()> {
        use redis::ConnectionLike;
        let mut pipe = redis::pipe();
        for job in batch {
            pipe.add_command(script_call("EVALSHA", &c.sha, job));
        }
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        self.stats
            .scripts
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let values = c
            .con
            .req_packed_commands(&pipe.get_packed_pipeline(), 0, batch.len())?;
        for (job, value) in batch.iter().zip(values) {
            let value = match value {
                // The server lost the script (restart, SCRIPT FLUSH): this call did not run.
                redis::Value::ServerError(e) if e.code() == "NOSCRIPT" => {
                    c.sha = redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(SCRIPT)
                        .query(&mut c.con)?;
                    self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
                    c.con.req_command(&script_call("EVALSHA", &c.sha, job))?
                }
                v => v,
            };
            let result = match (&job.op, parse_reply(&value, job.windows)) {
                (Op::Give { .. }, _) => continue,
                (Op::Take { .. }, Some(reply)) => Ok(reply),
                (Op::Take { .. }, None) => {
                    self.stats.error(Failure::Script);
                    if let Some(suppressed) = self.log.allow(super::gcra::now_ns()) {
                        tracing::warn!(reply = ?value, suppressed, "unexpected reply from the rate-limit script");
                    }
                    Err(Failure::Script)
                }
            };
            answer(job, result);
        }
        Ok(())
    }
}

fn answer(job: &Job, result: Result<Reply, Failure>) {
    if let Some(tx) = &job.reply {
        // The shard may have given up waiting; then nobody needs the answer.
        let _ = tx.try_send(result);
    }
}

/// `EVALSHA sha 1 key op count (interval capacity tat_after)...`
fn script_call(command: &str, sha: &str, job: &Job) -> redis::Cmd {
    let mut cmd = redis::cmd(command);
    cmd.arg(sha).arg(1).arg(&job.key[..]);
    let (op, count, tat_after) = match job.op {
        Op::Take { want } => ("take", want, [0; MAX_WINDOWS]),
        Op::Give {
            unused,
            tat_after_us,
        } => ("give", unused, tat_after_us),
    };
    cmd.arg(op).arg(count);
    for (g, tat) in job.gcra[..job.windows].iter().zip(tat_after) {
        cmd.arg(format!("{:.3}", g.t as f64 / 1000.0))
            .arg(format!("{:.3}", g.cap as f64 / 1000.0))
            .arg(tat);
    }
    cmd
}

fn parse_reply(v: &redis::Value, windows: usize) -> Option<Reply> {
    let redis::Value::Array(items) = v else {
        return None;
    };
    let int = |i: usize| match items.get(i)? {
        redis::Value::Int(n) => Some(*n),
        _ => None,
    };
    if items.len() != 3 + windows {
        return None;
    }
    let mut debt_us = [0; MAX_WINDOWS];
    for (i, d) in debt_us.iter_mut().enumerate().take(windows) {
        *d = int(3 + i)?;
    }
    Some(Reply {
        granted: u64::try_from(int(0)?).ok()?,
        wait_us: u64::try_from(int(1)?).unwrap_or(0),
        now_us: int(2)?,
        debt_us,
    })
}
