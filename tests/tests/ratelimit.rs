//! Rate limiting, end to end through the gateway (HTTP) and against the
//! `hypergate::edge::ratelimit` module directly.
//!
//! HTTP: 429 with `Retry-After`, the IETF `RateLimit-Policy` / `RateLimit`
//! headers and a JSON body; accuracy with 2 shards under uniform and skewed
//! load (admissions within 2% of rate × 10 s + burst); two in-process gateways
//! sharing one limit through a real `redis-server`; Redis down in fail-open and
//! fail-closed modes; a flood of unique keys staying within `max_keys`.
//!
//! Module: the same properties with each shard a thread holding its own
//! `ShardLimiter`, as in the gateway; the async `check` runs on a minimal
//! park/unpark executor (cross-thread wakers, as monoio's).
//!
//! The Redis tests start `redis-server` (installed by `.ci/run`) on an ephemeral
//! port with persistence off and kill it at the end.

use hypergate::config::edge::{RateLimitConfig, RateWindowConfig, RedisConfig};
use hypergate::edge::ratelimit::{
    RateDecision, RateHeaders, RateLimitPolicy, RateLimiter, ShardLimiter,
};
use hypergate_tests::redis::RedisServer;
use hypergate_tests::util::{closed_port, wait_until};
use hypergate_tests::{preamble, Request, TestGateway};
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
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
                let mut admitted = 0;
                while Instant::now() < end {
                    if let RateDecision::Allowed(_) = block_on(shard.check(&policy, key)) {
                        admitted += 1;
                    }
                    thread::sleep(load.pause);
                }
                admitted
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
fn two_shards_uniform_and_skewed_load_admit_rate_times_window_plus_burst() {
    // Both scenarios at once (separate limiters), to keep the suite short.
    let uniform = thread::spawn(|| {
        let policy = Limit::new("uniform", 1_000, 200).build(None);
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
        let counted = metric(
            &global,
            "hypergate_ratelimit_admitted_total{policy=\"uniform\"}",
        );
        (per_shard, total, counted as u64)
    });
    let skewed = thread::spawn(|| {
        let policy = Limit::new("skewed", 1_000, 200).build(None);
        let global = RateLimiter::new();
        global.install(std::slice::from_ref(&policy), None);
        // Shard 0 offers ~5 000/s, shard 1 ~100/s: the quiet shard must not strand tokens.
        let busy = Load {
            pause: Duration::from_micros(200),
        };
        let quiet = Load {
            pause: Duration::from_millis(10),
        };
        let per_shard = hammer(
            &[(global.clone(), busy), (global, quiet)],
            &policy,
            b"k",
            WINDOW,
        );
        per_shard.iter().sum::<u64>()
    });
    let (per_shard, total, counted) = uniform.join().unwrap();
    assert_within(total, 1_000 * 10 + 200, 0.02, "uniform");
    assert!(
        per_shard.iter().all(|n| *n > 3_000),
        "both shards served: {per_shard:?}"
    );
    assert_eq!(counted, total);
    assert_within(skewed.join().unwrap(), 1_000 * 10 + 200, 0.02, "skewed");
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
        ..RedisConfig::default()
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

#[test]
fn redis_applies_burst_and_every_window() {
    let redis = RedisServer::start();
    let cfg = redis.config();
    let raw = RateLimitConfig {
        name: "windows".into(),
        key: "consumer".into(),
        limits: vec![
            RateWindowConfig {
                requests: 5,
                per: Duration::from_secs(1),
                burst: None,
            },
            RateWindowConfig {
                requests: 8,
                per: Duration::from_secs(60),
                burst: None,
            },
        ],
        max_keys: 100,
        backend: "redis".into(),
        failure_mode: "closed".into(),
    };
    let mut issues = Vec::new();
    let policy = Arc::new(
        RateLimitPolicy::from_raw(&raw, "rate_limits[0]", Some(&cfg), &mut issues).unwrap(),
    );
    let global = RateLimiter::new();
    global.install(std::slice::from_ref(&policy), Some(&cfg));
    let shard = ShardLimiter::new(global.clone(), 0);
    let check = || block_on(shard.check(&policy, b"alice"));
    // The per-second burst: 5, with the remaining count going down.
    for left in (0..5).rev() {
        let RateDecision::Allowed(h) = check() else {
            panic!("within the burst")
        };
        assert_eq!(
            h.remaining,
            Some(left),
            "the per-second window is the tighter: {h:?}"
        );
    }
    let RateDecision::Limited {
        retry_after_secs, ..
    } = check()
    else {
        panic!("the burst is spent")
    };
    assert_eq!(retry_after_secs, 1);
    // After a second, 3 more fit the minute window (burst 8), then it has a
    // token again only every 7.5 s.
    thread::sleep(Duration::from_millis(1_100));
    let admitted = (0..5)
        .filter(|_| matches!(check(), RateDecision::Allowed(_)))
        .count();
    assert_eq!(admitted, 3);
    let RateDecision::Limited {
        headers,
        retry_after_secs,
    } = check()
    else {
        panic!("the minute window is spent")
    };
    assert!((6..=8).contains(&retry_after_secs), "{retry_after_secs}");
    assert_eq!(
        (headers.quota, headers.window_secs, headers.remaining),
        (8, 60, Some(0))
    );
}

// ---------------------------------------------------------------------------
// Through the gateway.
// ---------------------------------------------------------------------------

/// A gateway with `shards` shards, the given `[[rate_limits]]` (and other)
/// sections, and a direct-answer route `/rl/...` limited by `policies`.
fn limited_gateway(shards: usize, sections: &str, policies: &[&str]) -> TestGateway {
    let list: Vec<String> = policies.iter().map(|p| format!("{p:?}")).collect();
    TestGateway::start(&format!(
        r#"{}
{sections}

[[routes]]
name = "rl"
[routes.match]
path_prefix = "/rl"
[routes.direct]
status = 200
body = "ok"
[routes.policy]
rate_limits = [{}]
"#,
        preamble(shards),
        list.join(", ")
    ))
}

fn rate_limit_section(name: &str, key: &str, requests: u64, burst: u64, extra: &str) -> String {
    format!(
        r#"
[[rate_limits]]
name = "{name}"
key = "{key}"
limits = [{{ requests = {requests}, per = "1s", burst = {burst} }}]
{extra}
"#
    )
}

#[test]
fn http_limited_requests_get_429_retry_after_and_ratelimit_headers() {
    let gw = limited_gateway(
        2,
        &rate_limit_section("per-ip", "client_ip", 10, 10, ""),
        &["per-ip"],
    );
    let mut conn = gw.conn();
    for left in (0..10).rev() {
        let r = conn.request(&Request::get("/rl/a"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("ratelimit-policy"), Some("\"per-ip\";q=10;w=1"));
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"per-ip\";r={left};t=1").as_str())
        );
    }
    let r = conn.request(&Request::get("/rl/a"));
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("ratelimit"), Some("\"per-ip\";r=0;t=1"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"per-ip\";q=10;w=1"));
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    assert!(r.json().is_object(), "JSON error body: {}", r.text());
    // The connection stays usable, and the limit refills at 10 per second.
    thread::sleep(Duration::from_millis(250));
    assert_eq!(conn.request(&Request::get("/rl/a")).status, 200);
    assert_eq!(
        gw.metric("hypergate_ratelimit_admitted_total{policy=\"per-ip\"}"),
        11.0
    );
    assert_eq!(
        gw.metric("hypergate_ratelimit_limited_total{policy=\"per-ip\"}"),
        1.0
    );
}

/// `(connections, pause between requests)` groups of clients sending `GET path`
/// with `headers` for `duration`; returns (200s, statuses other than 200 and 429, requests).
fn http_load(
    addrs: &[SocketAddr],
    groups: &[(usize, Duration)],
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    duration: Duration,
) -> (u64, u64, u64) {
    let total: usize = groups.iter().map(|g| g.0).sum::<usize>() * addrs.len();
    let barrier = Arc::new(Barrier::new(total));
    let mut handles = Vec::new();
    for &addr in addrs {
        for &(connections, pause) in groups {
            for _ in 0..connections {
                let barrier = barrier.clone();
                handles.push(thread::spawn(move || {
                    let mut conn = hypergate_tests::Conn::connect(addr);
                    let mut req = Request::get(path);
                    for (k, v) in headers {
                        req = req.header(k, v);
                    }
                    barrier.wait();
                    let end = Instant::now() + duration;
                    let (mut ok, mut odd, mut sent) = (0, 0, 0);
                    while Instant::now() < end {
                        sent += 1;
                        match conn.request(&req).status {
                            200 => ok += 1,
                            429 => {}
                            _ => odd += 1,
                        }
                        thread::sleep(pause);
                    }
                    (ok, odd, sent)
                }));
            }
        }
    }
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

#[test]
fn http_two_shards_uniform_load_admit_rate_times_window_plus_burst() {
    let gw = limited_gateway(
        2,
        &rate_limit_section("uniform", "route", 300, 60, ""),
        &["uniform"],
    );
    // 8 keep-alive connections spread over both shards, ~2 400 requests/s offered.
    let (ok, odd, _) = http_load(
        &[gw.addr],
        &[(8, Duration::from_millis(3))],
        "/rl/u",
        &[],
        WINDOW,
    );
    assert_eq!(odd, 0);
    assert_within(ok, 300 * 10 + 60, 0.02, "HTTP, uniform");
    assert_eq!(
        gw.metric("hypergate_ratelimit_admitted_total{policy=\"uniform\"}") as u64,
        ok
    );
}

#[test]
fn http_two_shards_skewed_load_admit_rate_times_window_plus_burst() {
    let gw = limited_gateway(
        2,
        &rate_limit_section("skewed", "header:x-tenant", 300, 60, ""),
        &["skewed"],
    );
    // One connection offers ~2 000/s, four offer ~50/s each: most of the load on
    // one shard, a trickle on the other.
    let (ok, odd, _) = http_load(
        &[gw.addr],
        &[
            (1, Duration::from_micros(500)),
            (4, Duration::from_millis(20)),
        ],
        "/rl/s",
        &[("x-tenant", "acme")],
        WINDOW,
    );
    assert_eq!(odd, 0);
    assert_within(ok, 300 * 10 + 60, 0.02, "HTTP, skewed");
}

#[test]
fn http_unique_key_flood_stays_within_max_keys() {
    let gw = limited_gateway(
        2,
        &rate_limit_section("flood", "header:x-client", 5, 5, "max_keys = 100"),
        &["flood"],
    );
    let mut conn = gw.conn();
    let mut ok = 0;
    for i in 0..2_000 {
        let r = conn.request(&Request::get("/rl/f").header("x-client", &format!("spoofed-{i}")));
        ok += u32::from(r.status == 200);
    }
    assert_eq!(
        gw.metric("hypergate_ratelimit_keys{policy=\"flood\"}"),
        100.0
    );
    assert_eq!(
        gw.metric("hypergate_ratelimit_max_keys{policy=\"flood\"}"),
        100.0
    );
    assert_eq!(
        gw.metric("hypergate_ratelimit_overflow_total{policy=\"flood\"}"),
        1_900.0
    );
    // 100 own buckets, and the 1 900 others shared one bucket of 5 (+5/s).
    assert!((105..200).contains(&ok), "{ok} admitted");
    wait_until("idle keys expire", Duration::from_secs(10), || {
        gw.metric("hypergate_ratelimit_keys{policy=\"flood\"}") == 0.0
    });
}

fn redis_section(redis: &RedisServer) -> String {
    format!(
        "\n[redis]\naddress = \"{}\"\ntimeout = \"100ms\"\n",
        redis.addr
    )
}

#[test]
fn http_two_gateways_share_one_limit_through_redis() {
    let redis = RedisServer::start();
    let sections = format!(
        "{}{}{}",
        redis_section(&redis),
        rate_limit_section("cluster", "route", 300, 60, "backend = \"redis\""),
        rate_limit_section("roomy", "route", 100_000, 100_000, "backend = \"redis\""),
    );
    // Plus a route `/roomy` with a limit that never trips.
    let sections = format!(
        "{sections}\n[[routes]]\nname = \"roomy\"\n[routes.match]\npath_prefix = \"/roomy\"\n\
         [routes.direct]\nstatus = 200\nbody = \"ok\"\n[routes.policy]\nrate_limits = [\"roomy\"]\n"
    );
    let a = limited_gateway(2, &sections, &["cluster"]);
    let b = limited_gateway(2, &sections, &["cluster"]);
    let scripts = || {
        a.metric("hypergate_ratelimit_redis_scripts_total")
            + b.metric("hypergate_ratelimit_redis_scripts_total")
    };
    let (ok, odd, sent) = http_load(
        &[a.addr, b.addr],
        &[(4, Duration::from_millis(3))],
        "/rl/c",
        &[],
        WINDOW,
    );
    assert_eq!(odd, 0);
    assert_within(ok, 300 * 10 + 60, 0.02, "HTTP, two gateways through Redis");
    let (from_a, from_b) = (
        a.metric("hypergate_ratelimit_admitted_total{policy=\"cluster\"}"),
        b.metric("hypergate_ratelimit_admitted_total{policy=\"cluster\"}"),
    );
    assert_eq!((from_a + from_b) as u64, ok);
    assert!(
        from_a > 500.0 && from_b > 500.0,
        "both served: {from_a} {from_b}"
    );
    assert_eq!(a.metric("hypergate_ratelimit_redis_up"), 1.0);
    // Redis sees leases, not requests, even with the key far over its limit ...
    let over_limit_calls = scripts();
    assert!(
        over_limit_calls < sent as f64 / 4.0,
        "{over_limit_calls} Redis calls for {sent} requests"
    );
    // ... and rarely when the limit does not trip.
    let (ok, odd, sent) = http_load(
        &[a.addr, b.addr],
        &[(2, Duration::from_millis(1))],
        "/roomy",
        &[],
        Duration::from_secs(2),
    );
    assert_eq!((ok, odd), (sent, 0), "nothing limited");
    let calls = scripts() - over_limit_calls;
    assert!(
        calls < sent as f64 / 10.0,
        "{calls} Redis calls for {sent} requests under the limit"
    );
}

#[test]
fn http_redis_down_fails_open_or_closed_as_configured() {
    let mut redis = RedisServer::start();
    let sections = format!(
        "{}{}{}",
        redis_section(&redis),
        rate_limit_section(
            "open",
            "client_ip",
            100,
            100,
            "backend = \"redis\"\nfailure_mode = \"open\""
        ),
        rate_limit_section(
            "closed",
            "client_ip",
            100,
            100,
            "backend = \"redis\"\nfailure_mode = \"closed\""
        ),
    );
    let gw = TestGateway::start(&format!(
        r#"{}
{sections}

[[routes]]
name = "open"
[routes.match]
path_prefix = "/open"
[routes.direct]
status = 200
body = "ok"
[routes.policy]
rate_limits = ["open"]

[[routes]]
name = "closed"
[routes.match]
path_prefix = "/closed"
[routes.direct]
status = 200
body = "ok"
[routes.policy]
rate_limits = ["closed"]
"#,
        preamble(1)
    ));
    assert_eq!(gw.get("/closed").status, 200);
    assert_eq!(gw.get("/open").status, 200);
    redis.stop();
    // Requests from new client addresses need Redis (a shard's lease for an
    // address it has seen may still hold tokens for up to 200 ms).
    for i in 2..12 {
        let source: std::net::IpAddr = format!("127.0.0.{i}").parse().unwrap();
        let open =
            hypergate_tests::Conn::connect_from(gw.addr, source).request(&Request::get("/open"));
        assert_eq!(open.status, 200, "fail-open admits");
        assert_eq!(
            open.header("ratelimit"),
            None,
            "no remaining count while failing open"
        );
        let closed =
            hypergate_tests::Conn::connect_from(gw.addr, source).request(&Request::get("/closed"));
        assert_eq!(closed.status, 503, "fail-closed refuses: {}", closed.text());
        assert!(closed.json().is_object());
    }
    assert_eq!(
        gw.metric("hypergate_ratelimit_backend_failures_total{policy=\"open\",decision=\"open\"}"),
        10.0
    );
    assert_eq!(
        gw.metric(
            "hypergate_ratelimit_backend_failures_total{policy=\"closed\",decision=\"closed\"}"
        ),
        10.0
    );
    assert_eq!(gw.metric("hypergate_ratelimit_redis_up"), 0.0);
    redis.restart();
    wait_until(
        "the gateway reconnects to Redis",
        Duration::from_secs(10),
        || gw.get("/closed").status == 200,
    );
}
