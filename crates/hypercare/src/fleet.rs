//! The fleet: several gateways behind an L4 balancer judged and steered as
//! one, through the Redis they already share (`[fleet]`, docs/fleet.md). No
//! consensus of our own: Redis's single-threaded scripts are the arbiter.
//!
//! - **Aggregates.** Every `publish_interval` each instance writes its
//!   cumulative hypercare figures (the engine's [`Compact`]: counts by
//!   target and outcome, latency buckets, LLM tokens, cost, TTFT, feedback)
//!   with its id, boot id, config hash and applied epoch under
//!   `<prefix>inst:<id>`, with a TTL of three intervals, so a dead instance
//!   drops out by itself. Each then reads every member's and adds what each
//!   gained since it last read it ([`Compact::accumulate`]): the fleet's
//!   totals, which every instance keeps (a new leader has the history).
//! - **Leader.** One instance holds `<prefix>leader` (`"<id> <token>"`, with a
//!   `lease` TTL, renewed every interval); taking it increments
//!   `<prefix>token`, the fencing token. An instance acts as leader only
//!   while its last renewal is younger than the lease (measured from before
//!   the renewal was sent), so two never judge at once unless clocks run at
//!   very different rates.
//! - **Decisions.** The leader's engine judges the fleet's totals; a weight
//!   change goes through [`FleetControl`] to a script that writes the fleet's
//!   override layer (`<prefix>decisions`: epoch, token, layer) only if the
//!   caller still holds the lease and no newer token wrote before, and
//!   increments the epoch. Every instance polls the epoch every
//!   `decision_poll` and applies a newer layer to its own runtime overrides;
//!   older epochs are ignored. The leader also publishes its engine state
//!   (canary progress, windows, the views) the same fenced way, so a new
//!   leader resumes rollouts where the old one was, and followers show the
//!   fleet's views.
//! - **Redis lost.** The instance keeps serving with the overrides it has,
//!   stops judging (its lease lapses), says so (`hypergate_fleet_redis_up 0`,
//!   `/readyz` detail, one log line) and reconnects every `decision_poll`.
//!
//! Depends on: `hypergate-runtime` (the [`Control`] handle), `hypergate-edge`
//! (the Redis address), the engine's [`series`](super::series) and
//! [`state`](super::state).

use super::series::Compact;
use super::state::{Entry, Saved};
use hypergate_core::config::hypercare::FleetConfig;
use hypergate_core::config::overrides::{OverrideSubject, Overrides, WeightOverride};
use hypergate_core::config::raw::{RawConfig, RedisConfig};
use hypergate_core::config::ConfigIssue;
use hypergate_runtime::control::{Config, Control};
use hypergate_runtime::gateway::OverrideError;
use hypergate_runtime::observability::Snapshot;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Sources whose last figures are kept after they stop publishing (so one
/// that comes back is not counted twice), at most.
const MAX_SOURCES: usize = 1024;
/// How long such figures are kept.
const SOURCE_MEMORY: Duration = Duration::from_secs(3600);
/// The shortest Redis timeout the fleet uses (reading every member's
/// aggregates takes longer than a rate-limit script).
const MIN_TIMEOUT: Duration = Duration::from_millis(200);

/// Takes or renews the lease. KEYS: leader, token. ARGV: id, lease ms, the
/// token held ("" for none). Returns {1 if the caller holds it, token, holder id}.
pub const LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local id, tok = string.match(cur, '^(.*) (%d+)$')
  if id == ARGV[1] and tok == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(tok), id}
  end
  return {0, tonumber(tok) or 0, id or ''}
end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. t, 'PX', ARGV[2])
return {1, t, ARGV[1]}
"#;

/// Writes the fleet's override layer when the caller holds the lease and no
/// newer token wrote it. KEYS: leader, decisions, epoch. ARGV: holder
/// ("<id> <token>"), token, layer JSON, a generation id for a layer written
/// afresh (a Redis that lost its data starts epochs again from 1; followers
/// take a new generation as newer). Returns {epoch, generation}; epoch -1
/// when the caller does not hold the lease, -2 when a newer token wrote.
pub const DECIDE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, ''} end
local cur = tonumber(redis.call('HGET', KEYS[2], 'token') or '0')
if cur > tonumber(ARGV[2]) then return {-2, ''} end
local gen = redis.call('HGET', KEYS[2], 'gen')
if not gen then gen = ARGV[4] end
local e = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], 'epoch', e, 'token', ARGV[2], 'layer', ARGV[3], 'gen', gen)
return {e, gen}
"#;

/// Writes the leader's engine state when the caller holds the lease.
/// KEYS: leader, state. ARGV: holder, state JSON. Returns 1, or -1.
const PUBLISH_STATE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"#;

/// Gives the lease up (a clean shutdown), when still held. KEYS: leader.
/// ARGV: holder.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Checks `[fleet]`, adding every problem to `issues`.
pub fn validate(raw: &RawConfig, issues: &mut Vec<ConfigIssue>) {
    let f = &raw.fleet;
    if !f.enabled {
        return;
    }
    let mut push = |path: &str, reason: String| {
        issues.push(ConfigIssue {
            path: format!("fleet.{path}"),
            reason,
        })
    };
    let name_ok = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    if f.name.is_empty() || f.name.len() > 64 || !name_ok(&f.name) {
        push(
            "name",
            "1 to 64 letters, digits, '-', '_', '.' or ':'".into(),
        );
    }
    if f.instance_id.len() > 128 || !name_ok(&f.instance_id) {
        push(
            "instance_id",
            "at most 128 letters, digits, '-', '_', '.' or ':' (empty: host:admin_port)".into(),
        );
    }
    match f.redis.as_ref().or(raw.redis.as_ref()) {
        None => push(
            "redis",
            "the fleet needs a Redis: set [fleet.redis] or [redis]".into(),
        ),
        Some(r) => {
            if hypergate_edge::ratelimit::redis_connection_info(r).is_none() {
                push(
                    "redis.address",
                    format!("{:?} is not host:port or redis://host:port/db", r.address),
                );
            }
        }
    }
    for (field, d) in [
        ("publish_interval", f.publish_interval),
        ("decision_poll", f.decision_poll),
    ] {
        if d.is_zero() || d > Duration::from_secs(10) {
            push(field, "between 1ms and 10s".into());
        }
    }
    if f.lease < f.publish_interval * 3 || f.lease > Duration::from_secs(60) {
        push(
            "lease",
            "at least three publish intervals (a lease renewed every interval must \
             survive a missed renewal or two), at most 60s"
                .into(),
        );
    }
}

/// What an instance publishes every interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Published {
    id: String,
    /// Random per process: a restarted instance is a new source of figures.
    boot: u64,
    at_ms: u64,
    config_hash: String,
    applied_epoch: u64,
    leader: bool,
    stats: Compact,
}

/// A member as the others see it.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// Its id.
    pub id: String,
    /// Its process's boot id.
    pub boot: u64,
    /// When it last published, Unix ms.
    pub last_seen_ms: u64,
    /// A hash of its config file's sections (secrets redacted).
    pub config_hash: String,
    /// The fleet decision epoch it has applied.
    pub applied_epoch: u64,
    /// Whether it held the lease when it published.
    pub leader: bool,
    /// Requests it counted since it started.
    pub requests: u64,
    /// Of those, errors of the service.
    pub errors: u64,
}

/// The leader's engine state, as followers and a next leader read it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaderState {
    /// The leader's id.
    pub leader: String,
    /// Its fencing token.
    pub token: u64,
    /// When it was written, Unix ms.
    pub at_ms: u64,
    /// Canary progress by subject.
    pub canaries: Vec<(String, Entry)>,
    /// Window progress by name.
    pub windows: Vec<(String, Entry)>,
    /// `/hypercare/canary`, `/hypercare/alerts` and `/hypercare/windows` as
    /// the leader shows them.
    pub views: Value,
    /// The alerts firing.
    pub firing: Vec<String>,
    /// Hypercare's Prometheus text (canary, alert and window gauges).
    pub prometheus: String,
}

impl LeaderState {
    /// The progress to resume from, as the store would give it.
    pub fn saved(&self) -> Saved {
        Saved::from_entries(
            self.canaries
                .iter()
                .map(|(k, e)| (("canary".to_string(), k.clone()), e.clone()))
                .chain(
                    self.windows
                        .iter()
                        .map(|(k, e)| (("window".to_string(), k.clone()), e.clone())),
                ),
        )
    }
}

/// Counters of the fleet's Redis traffic and outcomes.
#[derive(Debug, Default)]
pub struct FleetCounters {
    /// Round trips to Redis.
    pub round_trips: AtomicU64,
    /// Payload bytes sent (published aggregates, layers, states; not RESP framing).
    pub bytes_sent: AtomicU64,
    /// Payload bytes read (members' aggregates, layers, states).
    pub bytes_read: AtomicU64,
    /// Failed Redis calls.
    pub errors: AtomicU64,
    /// Fleet decisions this instance wrote as leader.
    pub decisions_written: AtomicU64,
    /// Decisions refused because the lease was lost or a newer token wrote.
    pub decisions_fenced: AtomicU64,
    /// Fleet layers applied to this instance's overrides.
    pub layers_applied: AtomicU64,
}

/// This instance's lease, while it holds it.
#[derive(Debug, Clone, Copy)]
struct Lease {
    token: u64,
    /// Renewed at (measured before the renewal was sent) plus the lease.
    valid_until: Instant,
}

/// What the fleet thread found, shared with the engine and the admin API.
#[derive(Default)]
struct Shared {
    redis_up: bool,
    /// When Redis was lost (`None` while up, or before the first try).
    down_since: Option<(Instant, u64)>,
    last_error: Option<String>,
    /// The holder as last read: (id, token).
    leader: Option<(String, u64)>,
    lease: Option<Lease>,
    /// The fleet's totals; `None` until the first read of the members.
    merged: Option<Compact>,
    /// How many times the members were read and merged.
    merges: u64,
    members: Vec<Member>,
    /// The layer generation and epoch applied.
    applied_gen: String,
    applied_epoch: u64,
    leader_state: Option<LeaderState>,
}

/// Settings resolved at start.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// The fleet's name.
    pub name: String,
    /// This instance's id.
    pub instance: String,
    /// The Redis.
    pub redis: RedisConfig,
    /// Publish, read and lease period.
    pub publish_interval: Duration,
    /// Decision poll period.
    pub decision_poll: Duration,
    /// Lease length.
    pub lease: Duration,
}

impl FleetSettings {
    /// From a validated config; `admin_port` names the instance when
    /// `instance_id` is empty (`None` when `[fleet]` is off).
    pub fn of(raw: &RawConfig, admin_port: u16) -> Option<FleetSettings> {
        let f: &FleetConfig = &raw.fleet;
        if !f.enabled {
            return None;
        }
        let instance = if f.instance_id.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            let host = if host.is_empty() {
                "localhost".into()
            } else {
                host
            };
            format!("{host}:{admin_port}")
        } else {
            f.instance_id.clone()
        };
        Some(FleetSettings {
            name: f.name.clone(),
            instance,
            redis: f.redis.clone().or_else(|| raw.redis.clone())?,
            publish_interval: f.publish_interval,
            decision_poll: f.decision_poll,
            lease: f.lease,
        })
    }
}

/// The fleet membership of this instance.
pub struct Fleet {
    settings: FleetSettings,
    prefix: String,
    boot: u64,
    shared: Mutex<Shared>,
    /// The engine's connection, for decisions and state (the fleet thread has its own).
    writer: Mutex<Option<redis::Connection>>,
    /// Counters for `/metrics`.
    pub counters: FleetCounters,
}

impl Fleet {
    /// Starts the fleet thread for `controller`.
    pub fn start(
        settings: FleetSettings,
        controller: Weak<dyn Control>,
    ) -> std::io::Result<Arc<Fleet>> {
        let boot = {
            let mut b = [0u8; 8];
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            b.copy_from_slice(&(t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes());
            xxhash_rust::xxh3::xxh3_64(&b)
        };
        let fleet = Arc::new(Fleet {
            prefix: format!("hypergate:fleet:{}:", settings.name),
            settings,
            boot,
            shared: Mutex::new(Shared::default()),
            writer: Mutex::new(None),
            counters: FleetCounters::default(),
        });
        tracing::info!(fleet = %fleet.settings.name, instance = %fleet.settings.instance, redis = %fleet.settings.redis.address, "fleet member starting");
        let thread = fleet.clone();
        std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || thread.run(&controller))?;
        Ok(fleet)
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this instance holds a lease that has not lapsed.
    pub fn is_leader(&self) -> bool {
        self.shared()
            .lease
            .is_some_and(|l| Instant::now() < l.valid_until)
    }

    /// The fleet's totals so far and the number of merges that made them
    /// (`None` before the first read of the members).
    pub fn merged(&self) -> Option<(u64, Compact)> {
        let s = self.shared();
        s.merged.clone().map(|m| (s.merges, m))
    }

    /// The leader's engine state, as last read (followers) or written (leader).
    pub fn leader_state(&self) -> Option<LeaderState> {
        self.shared().leader_state.clone()
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let info = hypergate_edge::ratelimit::redis_connection_info(&self.settings.redis)
            .ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "invalid address"))
            })?;
        let timeout = self.settings.redis.timeout.max(MIN_TIMEOUT);
        let client = redis::Client::open(info)?;
        let con = client.get_connection_with_timeout(timeout)?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        Ok(con)
    }

    fn run(&self, controller: &Weak<dyn Control>) {
        let mut con: Option<redis::Connection> = None;
        let mut sources = Sources::default();
        let mut hash = ConfigHash::default();
        let mut next_publish = Instant::now();
        loop {
            let Some(c) = controller.upgrade() else {
                return;
            };
            if c.is_draining() {
                if let Some(con) = con.as_mut() {
                    self.release(con);
                }
                return;
            }
            if con.is_none() {
                match self.connect() {
                    Ok(new) => con = Some(new),
                    Err(e) => self.failed(&e),
                }
            }
            if let Some(link) = con.as_mut() {
                let mut result = Ok(());
                if Instant::now() >= next_publish {
                    next_publish = Instant::now() + self.settings.publish_interval;
                    result = self.publish_and_read(link, &*c, &mut sources, &mut hash);
                }
                if result.is_ok() {
                    result = self.poll_decisions(link, &*c);
                }
                match result {
                    Ok(()) => self.succeeded(),
                    Err(e) => {
                        self.failed(&e);
                        con = None;
                    }
                }
            }
            drop(c);
            std::thread::sleep(self.settings.decision_poll);
        }
    }

    fn succeeded(&self) {
        let mut s = self.shared();
        if let Some((since, _)) = s.down_since.take() {
            tracing::info!(down_for = ?since.elapsed(), "fleet: Redis reachable again; catching up with the fleet's decisions");
        }
        s.redis_up = true;
        s.last_error = None;
    }

    fn failed(&self, e: &redis::RedisError) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.shared();
        s.redis_up = false;
        s.last_error = Some(e.to_string());
        if s.down_since.is_none() {
            s.down_since = Some((Instant::now(), super::unix_ms()));
            tracing::warn!(error = %e, redis = %self.settings.redis.address, applied_epoch = s.applied_epoch,
                "fleet: Redis unreachable; serving on with the overrides in force, judging nothing, \
                 reconnecting");
        }
    }

    /// One publish interval: write ours, read everyone's, merge, lease, state.
    fn publish_and_read(
        &self,
        con: &mut redis::Connection,
        c: &dyn Control,
        sources: &mut Sources,
        hash: &mut ConfigHash,
    ) -> redis::RedisResult<()> {
        let stats = Compact::of(&c.snapshot(), &c.feedback_scores());
        let (applied_epoch, held) = {
            let s = self.shared();
            (s.applied_epoch, s.lease.map(|l| l.token))
        };
        let mine = Published {
            id: self.settings.instance.clone(),
            boot: self.boot,
            at_ms: super::unix_ms(),
            config_hash: hash.of(&c.config()),
            applied_epoch,
            leader: self.is_leader(),
            stats,
        };
        let bytes = postcard::to_stdvec(&mine).unwrap_or_default();
        let ttl_ms = (self.settings.publish_interval * 3).as_millis() as u64;
        let lease_ms = self.settings.lease.as_millis() as u64;
        let sent_at = Instant::now();
        let (held_now, token, holder, members): (i64, i64, String, Vec<String>) = redis::pipe()
            .cmd("SET")
            .arg(self.key(&format!("inst:{}", self.settings.instance)))
            .arg(&bytes)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(self.key("members"))
            .arg(&self.settings.instance)
            .ignore()
            .cmd("EVAL")
            .arg(LEASE)
            .arg(2)
            .arg(self.key("leader"))
            .arg(self.key("token"))
            .arg(&self.settings.instance)
            .arg(lease_ms)
            .arg(held.map_or(String::new(), |t| t.to_string()))
            .cmd("SMEMBERS")
            .arg(self.key("members"))
            .query(con)
            .map(
                |((held, token, holder), members): ((i64, i64, String), Vec<String>)| {
                    (held, token, holder, members)
                },
            )?;
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let token = token.max(0) as u64;
        {
            let mut s = self.shared();
            let was = s.lease.map(|l| l.token);
            if held_now == 1 {
                s.lease = Some(Lease {
                    token,
                    valid_until: sent_at + self.settings.lease,
                });
                if was != Some(token) {
                    tracing::warn!(fleet = %self.settings.name, instance = %self.settings.instance, token, "fleet: this instance leads the fleet now");
                }
            } else {
                if was.is_some() {
                    tracing::warn!(fleet = %self.settings.name, leader = %holder, "fleet: the lease is held by another instance; following");
                }
                s.lease = None;
            }
            s.leader = (!holder.is_empty()).then(|| (holder.clone(), token));
        }
        // Every member's figures.
        let keys: Vec<String> = members
            .iter()
            .map(|m| self.key(&format!("inst:{m}")))
            .collect();
        let values: Vec<Option<Vec<u8>>> = if keys.is_empty() {
            Vec::new()
        } else {
            redis::cmd("MGET").arg(&keys).query(con)?
        };
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut gone = Vec::new();
        let mut published = Vec::new();
        for (member, value) in members.iter().zip(values) {
            match value.and_then(|v| {
                self.counters
                    .bytes_read
                    .fetch_add(v.len() as u64, Ordering::Relaxed);
                postcard::from_bytes::<Published>(&v).ok()
            }) {
                Some(p) => published.push(p),
                None => gone.push(member.clone()),
            }
        }
        if !gone.is_empty() {
            let _: i64 = redis::cmd("SREM")
                .arg(self.key("members"))
                .arg(&gone)
                .query(con)?;
            self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        let merged = sources.merge(&published, Instant::now());
        // Followers read the leader's state; the leader wrote its own.
        let state = if held_now == 1 {
            None
        } else {
            let v: Option<String> = redis::cmd("GET").arg(self.key("state")).query(con)?;
            self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
            v.and_then(|v| {
                self.counters
                    .bytes_read
                    .fetch_add(v.len() as u64, Ordering::Relaxed);
                serde_json::from_str::<LeaderState>(&v).ok()
            })
        };
        let mut s = self.shared();
        s.merged = Some(merged);
        s.merges += 1;
        s.members = published.iter().map(member).collect();
        if held_now != 1 {
            s.leader_state = state;
        }
        Ok(())
    }

    /// Applies the fleet's layer when it is newer than the one applied: a
    /// higher epoch, or another generation (Redis lost its data and the leader
    /// wrote afresh).
    fn poll_decisions(
        &self,
        con: &mut redis::Connection,
        c: &dyn Control,
    ) -> redis::RedisResult<()> {
        let (epoch, gen, layer): (Option<u64>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(self.key("decisions"))
                .arg("epoch")
                .arg("gen")
                .arg("layer")
                .query(con)?;
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let (Some(epoch), Some(gen), Some(layer)) = (epoch, gen, layer) else {
            return Ok(());
        };
        if !self.is_newer(&gen, epoch) {
            return Ok(());
        }
        self.counters
            .bytes_read
            .fetch_add(layer.len() as u64, Ordering::Relaxed);
        match serde_json::from_str::<Overrides>(&layer) {
            Ok(layer) => self.apply(c, &gen, epoch, &layer),
            Err(e) => {
                tracing::error!(error = %e, epoch, "fleet: the fleet's override layer is unreadable; ignored")
            }
        }
        Ok(())
    }

    fn is_newer(&self, gen: &str, epoch: u64) -> bool {
        let s = self.shared();
        s.applied_gen != gen || epoch > s.applied_epoch
    }

    /// Installs every override of `layer` that differs from the one in force,
    /// then records (`gen`, `epoch`) as applied (unless a newer one was meanwhile).
    fn apply(&self, c: &dyn Control, gen: &str, epoch: u64, layer: &Overrides) {
        let local = c.overrides();
        for (subject, o) in &layer.weights {
            if local.weights.get(subject).map(|l| &l.weights) == Some(&o.weights) {
                continue;
            }
            let mut o = o.clone();
            o.reason = format!("{} (fleet {} epoch {epoch})", o.reason, self.settings.name);
            match c.set_override(subject.clone(), o) {
                Ok(()) => {
                    tracing::info!(%subject, epoch, "fleet: decision applied")
                }
                Err(e) => {
                    tracing::warn!(%subject, epoch, error = %e, "fleet: a decision does not fit this instance's config")
                }
            }
        }
        self.counters.layers_applied.fetch_add(1, Ordering::Relaxed);
        let mut s = self.shared();
        if s.applied_gen != gen || epoch > s.applied_epoch {
            s.applied_gen = gen.to_string();
            s.applied_epoch = epoch;
        }
    }

    fn holder(&self) -> Option<(String, u64)> {
        let s = self.shared();
        s.lease
            .filter(|l| Instant::now() < l.valid_until)
            .map(|l| (format!("{} {}", self.settings.instance, l.token), l.token))
    }

    /// Runs `f` on the engine's connection (connecting first when needed);
    /// the connection is dropped after an error.
    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.is_none() {
            *w = Some(self.connect()?);
        }
        let result = f(w.as_mut().expect("connected above"));
        if result.is_err() {
            *w = None;
        }
        result
    }

    /// The leader's decision: written to the fleet's layer (fenced), then
    /// applied here. Refused when this instance does not hold the lease.
    fn decide(
        &self,
        c: &dyn Control,
        subject: OverrideSubject,
        o: WeightOverride,
    ) -> Result<(), OverrideError> {
        let refuse = |why: String| Err(OverrideError::Fleet(why));
        let Some((holder, token)) = self.holder() else {
            return refuse("this instance does not lead the fleet".into());
        };
        let result = self.with_writer(|con| {
            let layer: Option<String> = redis::cmd("HGET")
                .arg(self.key("decisions"))
                .arg("layer")
                .query(con)?;
            // This read and the script below.
            self.counters.round_trips.fetch_add(2, Ordering::Relaxed);
            let mut layer: Overrides = layer
                .and_then(|l| serde_json::from_str(&l).ok())
                .unwrap_or_default();
            layer.weights.insert(subject.clone(), o.clone());
            let text = serde_json::to_string(&layer).unwrap_or_default();
            self.counters
                .bytes_sent
                .fetch_add(text.len() as u64, Ordering::Relaxed);
            let (epoch, gen): (i64, String) = redis::cmd("EVAL")
                .arg(DECIDE)
                .arg(3)
                .arg(self.key("leader"))
                .arg(self.key("decisions"))
                .arg(self.key("epoch"))
                .arg(&holder)
                .arg(token)
                .arg(text)
                // Unique per write: the same instance may lead again with the
                // same token after Redis lost its data.
                .arg(format!("{:016x}-{token}-{}", self.boot, super::unix_ms()))
                .query(con)?;
            Ok((epoch, gen, layer))
        });
        match result {
            Ok((epoch, gen, layer)) if epoch > 0 => {
                self.counters
                    .decisions_written
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(%subject, epoch, token, weights = ?o.weights, "fleet: decision written");
                self.apply(c, &gen, epoch as u64, &layer);
                Ok(())
            }
            Ok((code, _, _)) => {
                self.counters
                    .decisions_fenced
                    .fetch_add(1, Ordering::Relaxed);
                self.shared().lease = None;
                tracing::warn!(%subject, token, code, "fleet: decision refused: this instance no longer leads the fleet");
                refuse(format!(
                    "fenced: token {token} {}",
                    if code == -2 {
                        "is older than the one that last decided"
                    } else {
                        "no longer holds the lease"
                    }
                ))
            }
            Err(e) => {
                self.failed(&e);
                refuse(format!("Redis: {e}"))
            }
        }
    }

    /// The leader writes its engine state for followers and its successor.
    pub fn publish_state(&self, mut state: LeaderState) {
        let Some((holder, token)) = self.holder() else {
            return;
        };
        state.leader = self.settings.instance.clone();
        state.token = token;
        state.at_ms = super::unix_ms();
        let text = serde_json::to_string(&state).unwrap_or_default();
        let result = self.with_writer(|con| {
            self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
            redis::cmd("EVAL")
                .arg(PUBLISH_STATE)
                .arg(2)
                .arg(self.key("leader"))
                .arg(self.key("state"))
                .arg(&holder)
                .arg(&text)
                .query::<i64>(con)
        });
        match result {
            Ok(1) => {
                self.counters
                    .bytes_sent
                    .fetch_add(text.len() as u64, Ordering::Relaxed);
                self.shared().leader_state = Some(state);
            }
            Ok(_) => self.shared().lease = None,
            Err(e) => self.failed(&e),
        }
    }

    fn release(&self, con: &mut redis::Connection) {
        if let Some((holder, _)) = self.holder() {
            let released: redis::RedisResult<i64> = redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(self.key("leader"))
                .arg(&holder)
                .query(con);
            if matches!(released, Ok(1)) {
                tracing::info!("fleet: lease released (shutting down)");
            }
        }
        self.shared().lease = None;
    }

    /// `GET /hypercare/fleet`.
    pub fn json(&self) -> Value {
        let s = self.shared();
        let now_ms = super::unix_ms();
        json!({
            "enabled": true,
            "fleet": self.settings.name,
            "instance": self.settings.instance,
            "boot": format!("{:016x}", self.boot),
            "is_leader": s.lease.is_some_and(|l| Instant::now() < l.valid_until),
            "leader": s.leader.as_ref().map(|(id, token)| json!({"id": id, "token": token})),
            "applied_epoch": s.applied_epoch,
            "applied_generation": s.applied_gen,
            "redis": {
                "address": self.settings.redis.address,
                "up": s.redis_up,
                "down_since_ms": s.down_since.map(|(_, ms)| ms),
                "last_error": s.last_error,
            },
            "instances": s.members.iter().map(|m| json!({
                "id": m.id,
                "boot": format!("{:016x}", m.boot),
                "last_seen_ms": m.last_seen_ms,
                "last_seen_ago_ms": now_ms.saturating_sub(m.last_seen_ms),
                "config_hash": m.config_hash,
                "applied_epoch": m.applied_epoch,
                "leader": m.leader,
                "requests": m.requests,
                "errors": m.errors,
            })).collect::<Vec<_>>(),
            // Every member's counts since it started, as far as this instance
            // has read them (a member gone before this instance first read it
            // is missing: `totals_note` says so).
            "totals": s.merged.as_ref().map(|m| m.targets_json()),
            "totals_note": "exact counts of every member this instance has read since it \
                started (members that stopped publishing before that are not included); \
                upstream latency is per cluster version, over all its routes",
            "traffic": {
                "round_trips": self.counters.round_trips.load(Ordering::Relaxed),
                "bytes_sent": self.counters.bytes_sent.load(Ordering::Relaxed),
                "bytes_read": self.counters.bytes_read.load(Ordering::Relaxed),
            },
        })
    }

    /// `/readyz` detail: still ready without Redis (the instance serves on),
    /// but says so.
    pub fn readiness(&self) -> Value {
        let s = self.shared();
        json!({
            "redis": if s.redis_up { "up" } else { "down" },
            "leader": s.leader.as_ref().map(|(id, _)| id.clone()),
            "applied_epoch": s.applied_epoch,
            "note": (!s.redis_up).then_some(
                "Redis unreachable: serving with the last fleet decisions, judging nothing"),
        })
    }

    /// The fleet's Prometheus text.
    pub fn prometheus(&self, out: &mut String) {
        use hypergate_core::metrics::{escape, header};
        use std::fmt::Write;
        let s = self.shared();
        let labels = format!(
            "fleet=\"{}\",instance=\"{}\"",
            escape(&self.settings.name),
            escape(&self.settings.instance)
        );
        for (name, kind, help, value) in [
            (
                "hypergate_fleet_redis_up",
                "gauge",
                "1 while the fleet's Redis answers.",
                u64::from(s.redis_up),
            ),
            (
                "hypergate_fleet_leader",
                "gauge",
                "1 while this instance holds the fleet's lease.",
                u64::from(s.lease.is_some_and(|l| Instant::now() < l.valid_until)),
            ),
            (
                "hypergate_fleet_applied_epoch",
                "gauge",
                "The fleet decision epoch this instance has applied.",
                s.applied_epoch,
            ),
            (
                "hypergate_fleet_instances",
                "gauge",
                "Instances that published within their TTL, as last read.",
                s.members.len() as u64,
            ),
            (
                "hypergate_fleet_redis_round_trips_total",
                "counter",
                "Round trips to the fleet's Redis.",
                self.counters.round_trips.load(Ordering::Relaxed),
            ),
            (
                "hypergate_fleet_redis_errors_total",
                "counter",
                "Failed calls to the fleet's Redis.",
                self.counters.errors.load(Ordering::Relaxed),
            ),
            (
                "hypergate_fleet_bytes_sent_total",
                "counter",
                "Payload bytes written to the fleet's Redis (aggregates, layers, states).",
                self.counters.bytes_sent.load(Ordering::Relaxed),
            ),
            (
                "hypergate_fleet_bytes_read_total",
                "counter",
                "Payload bytes read from the fleet's Redis.",
                self.counters.bytes_read.load(Ordering::Relaxed),
            ),
            (
                "hypergate_fleet_decisions_written_total",
                "counter",
                "Fleet decisions this instance wrote as leader.",
                self.counters.decisions_written.load(Ordering::Relaxed),
            ),
            (
                "hypergate_fleet_decisions_fenced_total",
                "counter",
                "Decisions refused because this instance had lost the lease.",
                self.counters.decisions_fenced.load(Ordering::Relaxed),
            ),
            (
                "hypergate_fleet_layers_applied_total",
                "counter",
                "Newer fleet layers applied to this instance's overrides.",
                self.counters.layers_applied.load(Ordering::Relaxed),
            ),
        ] {
            header(out, name, kind, help);
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// What `hypergate report --fleet` reads of a fleet, straight from its Redis.
#[derive(Debug, Clone)]
pub struct FleetSnapshot {
    /// The fleet's name.
    pub name: String,
    /// The lease holder and its token, if any.
    pub leader: Option<(String, u64)>,
    /// The decision epoch in Redis.
    pub epoch: u64,
    /// The members publishing now.
    pub members: Vec<Member>,
    /// Per (route, cluster, version): the members' figures since each started
    /// (see [`Compact::targets_json`]).
    pub totals: Vec<Value>,
    /// The canary decisions other than holds, as the leader last published them.
    pub decisions: Vec<Value>,
}

/// Reads the fleet's members, totals and the leader's decisions from Redis
/// (one connection, four round trips).
pub fn read_snapshot(settings: &FleetSettings) -> Result<FleetSnapshot, String> {
    let key = |suffix: &str| format!("hypergate:fleet:{}:{suffix}", settings.name);
    let info = hypergate_edge::ratelimit::redis_connection_info(&settings.redis)
        .ok_or_else(|| format!("{:?} is not a Redis address", settings.redis.address))?;
    let timeout = settings.redis.timeout.max(MIN_TIMEOUT);
    let fail = |e: redis::RedisError| format!("Redis {}: {e}", settings.redis.address);
    let mut con = redis::Client::open(info)
        .and_then(|c| c.get_connection_with_timeout(timeout))
        .map_err(fail)?;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(key("members"))
        .query(&mut con)
        .map_err(fail)?;
    let keys: Vec<String> = members.iter().map(|m| key(&format!("inst:{m}"))).collect();
    let values: Vec<Option<Vec<u8>>> = if keys.is_empty() {
        Vec::new()
    } else {
        redis::cmd("MGET")
            .arg(&keys)
            .query(&mut con)
            .map_err(fail)?
    };
    let published: Vec<Published> = values
        .into_iter()
        .flatten()
        .filter_map(|v| postcard::from_bytes(&v).ok())
        .collect();
    let holder: Option<String> = redis::cmd("GET")
        .arg(key("leader"))
        .query(&mut con)
        .map_err(fail)?;
    let (epoch, state): (Option<u64>, Option<String>) = redis::pipe()
        .cmd("HGET")
        .arg(key("decisions"))
        .arg("epoch")
        .cmd("GET")
        .arg(key("state"))
        .query(&mut con)
        .map_err(fail)?;
    let state: Option<LeaderState> = state.and_then(|s| serde_json::from_str(&s).ok());
    let mut sources = Sources::default();
    let merged = sources.merge(&published, Instant::now());
    Ok(FleetSnapshot {
        name: settings.name.clone(),
        leader: holder.and_then(|h| {
            let (id, token) = h.rsplit_once(' ')?;
            Some((id.to_string(), token.parse().ok()?))
        }),
        epoch: epoch.unwrap_or(0),
        members: published.iter().map(member).collect(),
        totals: merged.targets_json(),
        decisions: state
            .map(|s| s.views["canary"]["decisions"].clone())
            .and_then(|d| d.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d["decision"]["action"] != "hold")
            .collect(),
    })
}

fn member(p: &Published) -> Member {
    let (requests, errors) = p.stats.totals();
    Member {
        id: p.id.clone(),
        boot: p.boot,
        last_seen_ms: p.at_ms,
        config_hash: p.config_hash.clone(),
        applied_epoch: p.applied_epoch,
        leader: p.leader,
        requests,
        errors,
    }
}

/// The engine's [`Control`] on the fleet's leader: weight changes become fleet
/// decisions; everything else is the instance's own.
pub struct FleetControl<'a> {
    /// This instance's controller.
    pub inner: &'a dyn Control,
    /// The fleet.
    pub fleet: &'a Fleet,
}

impl Control for FleetControl<'_> {
    fn config(&self) -> Arc<Config> {
        self.inner.config()
    }

    fn is_draining(&self) -> bool {
        self.inner.is_draining()
    }

    fn snapshot(&self) -> Snapshot {
        self.inner.snapshot()
    }

    fn feedback_scores(&self) -> BTreeMap<(String, String), (u64, f64, f64)> {
        self.inner.feedback_scores()
    }

    fn tcp_stats(&self) -> Option<Value> {
        self.inner.tcp_stats()
    }

    fn store_path(&self) -> Option<&Path> {
        self.inner.store_path()
    }

    fn overrides(&self) -> Arc<Overrides> {
        self.inner.overrides()
    }

    fn set_override(
        &self,
        subject: OverrideSubject,
        o: WeightOverride,
    ) -> Result<(), OverrideError> {
        self.fleet.decide(self.inner, subject, o)
    }
}

/// Each source's last figures and the fleet's totals built from their gains.
#[derive(Default)]
struct Sources {
    last: HashMap<(String, u64), (Compact, Instant)>,
    total: Compact,
}

impl Sources {
    /// Adds what each published source gained since it was last read; forgets
    /// sources silent for [`SOURCE_MEMORY`], or the oldest beyond [`MAX_SOURCES`].
    fn merge(&mut self, published: &[Published], now: Instant) -> Compact {
        for p in published {
            let key = (p.id.clone(), p.boot);
            let before = self.last.get(&key).map(|(c, _)| c);
            self.total.accumulate(&p.stats, before);
            self.last.insert(key, (p.stats.clone(), now));
        }
        self.last
            .retain(|_, (_, seen)| now.duration_since(*seen) < SOURCE_MEMORY);
        while self.last.len() > MAX_SOURCES {
            let oldest = self
                .last
                .iter()
                .min_by_key(|(_, (_, seen))| *seen)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.last.remove(&k);
                }
                None => break,
            }
        }
        self.total.clone()
    }
}

/// A short hash of the running config's sections (secrets serialise
/// redacted), so `/hypercare/fleet` shows which instances run the same file;
/// computed again only when the config changes (a reload installs a new `Arc`).
#[derive(Default)]
struct ConfigHash {
    of: Option<(std::sync::Weak<Config>, String)>,
}

impl ConfigHash {
    fn of(&mut self, config: &Arc<Config>) -> String {
        match &self.of {
            Some((weak, hash)) if std::ptr::eq(weak.as_ptr(), Arc::as_ptr(config)) => hash.clone(),
            _ => {
                let text = serde_json::to_string(&config.raw).unwrap_or_default();
                let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()));
                self.of = Some((Arc::downgrade(config), hash.clone()));
                hash
            }
        }
    }
}
