//! Rate limiting, against the `hypergate::edge::ratelimit` module directly:
//! accuracy with two shards (threads) under uniform and skewed load, two
//! "gateway processes" (two `RateLimiter`s) sharing one limit through a real
//! `redis-server`, Redis down in fail-open and fail-closed modes, and a flood of
//! unique keys staying within `max_keys`.
//!
//! Each shard is a thread with its own `ShardLimiter`, as in the gateway; the
//! async `check` runs on a minimal park/unpark executor (cross-thread wakers, as
//! monoio's). The Redis tests start `redis-server` (installed by `.ci/run`) on
//! an ephemeral port with persistence off and kill it at the end.

use hypergate::config::edge::{RateLimitConfig, RateWindowConfig, RedisConfig};
use hypergate::edge::ratelimit::{
    RateDecision, RateHeaders, RateLimitPolicy, RateLimiter, ShardLimiter,
};
use hypergate_tests::util::{closed_port, wait_until, TempDir};
use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

/// Runs a future to completion on this thread (wakers unpark it from any thread).
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

struct Limit {
    name: &'static str,
    requests: u64,
    per: Duration,
    burst: u64,
    max_keys: usize,
    redis: bool,
    failure_mode: &'static str,
}

impl Limit {
    fn new(name: &'static str, requests: u64, burst: u64) -> Limit {
        Limit {
            name,
            requests,
            per: Duration::from_secs(1),
            burst,
            max_keys: 10_000,
            redis: false,
            failure_mode: "open",
        }
    }

    fn build(&self, redis: Option<&RedisConfig>) -> Arc<RateLimitPolicy> {
        let raw = RateLimitConfig {
            name: self.name.into(),
            key: "client_ip".into(),
            limits: vec![RateWindowConfig {
                requests: self.requests,
                per: self.per,
                burst: Some(self.burst),
            }],
            max_keys: self.max_keys,
            backend: if self.redis { "redis" } else { "local" }.into(),
            failure_mode: self.failure_mode.into(),
        };
        let mut issues = Vec::new();
        let policy = RateLimitPolicy::from_raw(&raw, "rate_limits[0]", redis, &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        Arc::new(policy.expect("valid policy"))
    }
}

/// One shard's load: `pause` between requests, for `duration` after the barrier.
#[derive(Clone, Copy)]
struct Load {
    pause: Duration,
}

/// Runs one thread per `(limiter, load)` pair, each with its own `ShardLimiter`,
/// all checking `key` until `duration` has passed; returns admissions per thread.
fn hammer(
    shards: &[(Arc<RateLimiter>, Load)],
    policy: &Arc<RateLimitPolicy>,
    key: &'static [u8],
    duration: Duration,
) -> Vec<u64> {
    hammer_counting(shards, policy, key, duration)
        .into_iter()
        .map(|(admitted, _)| admitted)
        .collect()
}

/// [`hammer`], returning `(admitted, attempts)` per thread.
fn hammer_counting(
    shards: &[(Arc<RateLimiter>, Load)],
    policy: &Arc<RateLimitPolicy>,
    key: &'static [u8],
    duration: Duration,
) -> Vec<(u64, u64)> {
    let barrier = Arc::new(Barrier::new(shards.len()));
    let handles: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(i, (global, load))| {
            let (global, load, policy, barrier) =
                (global.clone(), *load, policy.clone(), barrier.clone());
            thread::spawn(move || {
                let shard = ShardLimiter::new(global, i);
                barrier.wait();
                let end = Instant::now() + duration;
                let (mut admitted, mut attempts) = (0, 0);
                while Instant::now() < end {
                    attempts += 1;
                    if let RateDecision::Allowed(_) = block_on(shard.check(&policy, key)) {
                        admitted += 1;
                    }
                    thread::sleep(load.pause);
                }
                (admitted, attempts)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("shard thread"))
        .collect()
}

#[track_caller]
fn assert_within(admitted: u64, expected: u64, tolerance: f64, what: &str) {
    let error = (admitted as f64 - expected as f64) / expected as f64;
    assert!(
        error.abs() <= tolerance,
        "{what}: {admitted} admitted, expected {expected} ± {:.0}% (error {:+.2}%)",
        tolerance * 100.0,
        error * 100.0
    );
}

fn metrics(global: &RateLimiter) -> String {
    let mut out = String::new();
    global.prometheus(&mut out);
    out
}

fn metric(global: &RateLimiter, series: &str) -> f64 {
    hypergate_tests::gateway::metric_value(&metrics(global), series)
}

const WINDOW: Duration = Duration::from_secs(10);

#[test]
fn two_shards_uniform_load_admit_rate_times_window_plus_burst() {
    let limit = Limit::new("uniform", 1_000, 200);
    let policy = limit.build(None);
    let global = RateLimiter::new();
    global.install(std::slice::from_ref(&policy), None);
    // Both shards offer ~5 000 requests per second each: 10× the limit.
    let load = Load {
        pause: Duration::from_micros(200),
    };
    let per_shard = hammer(
        &[(global.clone(), load), (global.clone(), load)],
        &policy,
        b"k",
        WINDOW,
    );
    let total: u64 = per_shard.iter().sum();
    assert_within(total, 1_000 * 10 + 200, 0.02, "uniform");
    assert!(
        per_shard.iter().all(|n| *n > 3_000),
        "both shards served: {per_shard:?}"
    );
    assert_eq!(
        metric(
            &global,
            "hypergate_ratelimit_admitted_total{policy=\"uniform\"}"
        ) as u64,
        total
    );
}

#[test]
fn two_shards_skewed_load_admit_rate_times_window_plus_burst() {
    let limit = Limit::new("skewed", 1_000, 200);
    let policy = limit.build(None);
    let global = RateLimiter::new();
    global.install(std::slice::from_ref(&policy), None);
    // Shard 0 offers ~5 000/s, shard 1 ~100/s: the quiet shard must not strand tokens.
    let per_shard = hammer(
        &[
            (
                global.clone(),
                Load {
                    pause: Duration::from_micros(200),
                },
            ),
            (
                global.clone(),
                Load {
                    pause: Duration::from_millis(10),
                },
            ),
        ],
        &policy,
        b"k",
        WINDOW,
    );
    let total: u64 = per_shard.iter().sum();
    assert_within(total, 1_000 * 10 + 200, 0.02, "skewed");
}

#[test]
fn unique_key_flood_stays_within_max_keys() {
    let mut limit = Limit::new("flood", 5, 5);
    limit.max_keys = 1_000;
    let policy = limit.build(None);
    let global = RateLimiter::new();
    global.install(std::slice::from_ref(&policy), None);
    let handles: Vec<_> = (0..2u32)
        .map(|s| {
            let (global, policy) = (global.clone(), policy.clone());
            thread::spawn(move || {
                let shard = ShardLimiter::new(global, s as usize);
                let mut admitted = 0u64;
                // 50 000 spoofed addresses per shard.
                for i in 0..50_000u32 {
                    let key = format!("10.{s}.{}.{}", i >> 8, i & 255);
                    if let RateDecision::Allowed(_) = block_on(shard.check(&policy, key.as_bytes()))
                    {
                        admitted += 1;
                    }
                }
                assert!(shard.leased_keys() <= 4_096, "shard lease map is bounded");
                admitted
            })
        })
        .collect();
    let admitted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let keys = metric(&global, "hypergate_ratelimit_keys{policy=\"flood\"}");
    let overflow = metric(
        &global,
        "hypergate_ratelimit_overflow_total{policy=\"flood\"}",
    );
    assert!(keys <= 1_000.0, "{keys} keys tracked");
    assert_eq!(keys, 1_000.0, "the cap is reached");
    assert_eq!(
        overflow, 99_000.0,
        "every untracked key went to the overflow bucket"
    );
    // 1 000 tracked keys got their first request; the other 99 000 shared one
    // bucket (5 + 5/s over the test's run time).
    assert!((1_005..1_200).contains(&admitted), "{admitted} admitted");
    // Idle keys expire (buckets full after 1 s, deleted after 1 s more), freeing the cap.
    wait_until("idle keys expire", Duration::from_secs(10), || {
        metric(&global, "hypergate_ratelimit_keys{policy=\"flood\"}") == 0.0
    });
    assert_eq!(
        metric(
            &global,
            "hypergate_ratelimit_keys_expired_total{policy=\"flood\"}"
        ),
        1_000.0
    );
}

/// A `redis-server` on an ephemeral port, without persistence; killed on drop.
struct RedisServer {
    child: Option<Child>,
    addr: SocketAddr,
    dir: TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            addr: closed_port(),
            dir: TempDir::new(),
        };
        server.restart();
        server
    }

    fn config(&self) -> RedisConfig {
        RedisConfig {
            address: self.addr.to_string(),
            timeout: Duration::from_millis(100),
        }
    }

    /// Starts (again) on the same port.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install -y redis-server; .ci/run installs it)");
        self.child = Some(child);
        let addr = self.addr;
        wait_until(
            "redis-server accepts connections",
            Duration::from_secs(10),
            || TcpStream::connect(addr).is_ok(),
        );
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn two_gateways_share_one_limit_through_redis() {
    let redis = RedisServer::start();
    let cfg = redis.config();
    let mut limit = Limit::new("shared", 1_000, 200);
    limit.redis = true;
    // Two gateway processes: two process-wide limiters, each with its own
    // policy object (as each would validate its own config) and two shards.
    let gateways: Vec<Arc<RateLimiter>> = (0..2)
        .map(|_| {
            let g = RateLimiter::new();
            g.install(&[limit.build(Some(&cfg))], Some(&cfg));
            g
        })
        .collect();
    let policy = limit.build(Some(&cfg));
    let load = Load {
        pause: Duration::from_micros(500),
    };
    let shards = [
        (gateways[0].clone(), load),
        (gateways[0].clone(), load),
        (gateways[1].clone(), load),
        (gateways[1].clone(), load),
    ];
    let counts = hammer_counting(&shards, &policy, b"k", WINDOW);
    let per_shard: Vec<u64> = counts.iter().map(|c| c.0).collect();
    let total: u64 = per_shard.iter().sum();
    let attempts: u64 = counts.iter().map(|c| c.1).sum();
    assert_within(total, 1_000 * 10 + 200, 0.02, "shared through Redis");
    let first: u64 = per_shard[..2].iter().sum();
    assert!(
        first > 2_000 && total - first > 2_000,
        "both gateways served: {per_shard:?}"
    );
    // Redis saw leases, not requests, even with the key far over its limit.
    let scripts = || -> f64 {
        gateways
            .iter()
            .map(|g| metric(g, "hypergate_ratelimit_redis_scripts_total"))
            .sum()
    };
    let over_limit_calls = scripts();
    assert!(
        over_limit_calls < attempts as f64 / 4.0,
        "{over_limit_calls} Redis calls for {attempts} requests"
    );

    // A limit that never trips: almost every request is served from a lease.
    let mut roomy = Limit::new("roomy", 100_000, 100_000);
    roomy.redis = true;
    for g in &gateways {
        g.install(
            &[limit.build(Some(&cfg)), roomy.build(Some(&cfg))],
            Some(&cfg),
        );
    }
    let roomy = roomy.build(Some(&cfg));
    let counts = hammer_counting(&shards, &roomy, b"k", Duration::from_secs(2));
    let attempts: u64 = counts.iter().map(|c| c.1).sum();
    assert_eq!(
        counts.iter().map(|c| c.0).sum::<u64>(),
        attempts,
        "nothing limited"
    );
    let calls = scripts() - over_limit_calls;
    assert!(
        calls < attempts as f64 / 20.0,
        "{calls} Redis calls for {attempts} requests under the limit"
    );
    for g in &gateways {
        assert_eq!(metric(g, "hypergate_ratelimit_redis_up"), 1.0);
        let failures = metric(
            g,
            "hypergate_ratelimit_backend_failures_total{policy=\"shared\",decision=\"open\"}",
        );
        assert_eq!(failures, 0.0);
    }
}

#[test]
fn redis_keys_beyond_max_keys_use_the_overflow_bucket() {
    let redis = RedisServer::start();
    let cfg = redis.config();
    let mut limit = Limit::new("redis-flood", 2, 2);
    limit.redis = true;
    limit.max_keys = 100;
    let policy = limit.build(Some(&cfg));
    let global = RateLimiter::new();
    global.install(std::slice::from_ref(&policy), Some(&cfg));
    let shard = ShardLimiter::new(global.clone(), 0);
    let mut admitted = 0;
    for i in 0..1_000u32 {
        if let RateDecision::Allowed(_) = block_on(shard.check(&policy, &i.to_be_bytes())) {
            admitted += 1;
        }
    }
    assert_eq!(
        metric(&global, "hypergate_ratelimit_keys{policy=\"redis-flood\"}"),
        100.0
    );
    assert_eq!(
        metric(
            &global,
            "hypergate_ratelimit_overflow_total{policy=\"redis-flood\"}"
        ),
        900.0
    );
    // 100 own buckets + the overflow bucket's burst (and what refills meanwhile).
    assert!((102..=110).contains(&admitted), "{admitted}");
}

#[test]
fn redis_down_fails_open_or_closed_as_configured() {
    let mut redis = RedisServer::start();
    let cfg = redis.config();
    let mut open = Limit::new("open", 100, 100);
    open.redis = true;
    let mut closed = Limit::new("closed", 100, 100);
    closed.redis = true;
    closed.failure_mode = "closed";
    let (open, closed) = (open.build(Some(&cfg)), closed.build(Some(&cfg)));
    let global = RateLimiter::new();
    global.install(&[open.clone(), closed.clone()], Some(&cfg));
    let shard = ShardLimiter::new(global.clone(), 0);

    // Up: both policies answer from Redis.
    for p in [&open, &closed] {
        let RateDecision::Allowed(h) = block_on(shard.check(p, b"a")) else {
            panic!("allowed while Redis is up")
        };
        assert_eq!(h.remaining, Some(99));
    }

    // Down: fresh keys need Redis; each policy decides by its failure mode, quickly.
    redis.stop();
    let started = Instant::now();
    for i in 0..20u32 {
        let key = format!("down-{i}");
        match block_on(shard.check(&open, key.as_bytes())) {
            RateDecision::Allowed(h) => assert_eq!(h.remaining, None, "unknown while failing open"),
            other => panic!("fail-open must admit, got {other:?}"),
        }
        assert_eq!(
            block_on(shard.check(&closed, key.as_bytes())),
            RateDecision::Unavailable
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "40 decisions with Redis down took {:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(
            &global,
            "hypergate_ratelimit_backend_failures_total{policy=\"open\",decision=\"open\"}"
        ),
        20.0
    );
    assert_eq!(
        metric(
            &global,
            "hypergate_ratelimit_backend_failures_total{policy=\"closed\",decision=\"closed\"}"
        ),
        20.0
    );
    assert_eq!(metric(&global, "hypergate_ratelimit_redis_up"), 0.0);
    let errors: f64 = ["down", "io", "timeout"]
        .iter()
        .map(|r| {
            metric(
                &global,
                &format!("hypergate_ratelimit_redis_errors_total{{reason=\"{r}\"}}"),
            )
        })
        .sum();
    assert!(errors >= 1.0, "Redis errors counted");

    // Back up: the worker reconnects by itself and limits apply again.
    redis.restart();
    wait_until(
        "the limiter reconnects to Redis",
        Duration::from_secs(10),
        || {
            matches!(
                block_on(shard.check(&closed, b"after")),
                RateDecision::Allowed(RateHeaders {
                    remaining: Some(_),
                    ..
                })
            )
        },
    );
    assert_eq!(metric(&global, "hypergate_ratelimit_redis_up"), 1.0);
}

#[test]
fn redis_unreachable_from_the_start_fails_closed_quickly() {
    let cfg = RedisConfig {
        address: closed_port().to_string(),
        timeout: Duration::from_millis(50),
    };
    let mut limit = Limit::new("never", 100, 100);
    limit.redis = true;
    limit.failure_mode = "closed";
    let policy = limit.build(Some(&cfg));
    let global = RateLimiter::new();
    global.install(std::slice::from_ref(&policy), Some(&cfg));
    let shard = ShardLimiter::new(global.clone(), 0);
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(
            block_on(shard.check(&policy, b"k")),
            RateDecision::Unavailable
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(
            &global,
            "hypergate_ratelimit_backend_failures_total{policy=\"never\",decision=\"closed\"}"
        ),
        100.0
    );
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let limit = Limit::new("promtool", 10, 10);
    let policy = limit.build(None);
    let global = RateLimiter::new();
    global.install(std::slice::from_ref(&policy), None);
    let shard = ShardLimiter::new(global.clone(), 0);
    for _ in 0..20 {
        block_on(shard.check(&policy, b"k"));
    }
    let text = metrics(&global);
    assert_eq!(
        metric(
            &global,
            "hypergate_ratelimit_admitted_total{policy=\"promtool\"}"
        ),
        10.0
    );
    assert_eq!(
        metric(
            &global,
            "hypergate_ratelimit_limited_total{policy=\"promtool\"}"
        ),
        10.0
    );
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        panic!("promtool runs (apt-get install -y prometheus; .ci/run installs it)");
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
