//! The `hypergate` process and its signals: SIGHUP reloads the config file,
//! SIGTERM drains (in-flight requests finish, new connections are refused,
//! the process exits 0 within `drain_timeout`).

use hypergate_tests::gateway::{admin_request, metric_value};
use hypergate_tests::process::GatewayProcess;
use hypergate_tests::{cluster, route_all, wait_until, Conn, MockUpstream, Reply, Request};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Two shards; no lame-duck period (tests/tests/security_drain.rs covers it).
fn process_config(upstream: &MockUpstream, drain: &str) -> String {
    format!(
        r#"
[server]
shards = 2
pin_cores = false
drain_delay = "0s"
drain_timeout = "{drain}"

[admin]
listen = "127.0.0.2:0"

[[listeners]]
name = "main"
address = "127.0.0.1:0"
{}{}"#,
        cluster("backend", &[upstream.addr()], ""),
        route_all("all", "backend", "")
    )
}

fn body_of(addr: std::net::SocketAddr) -> String {
    Conn::connect(addr).request(&Request::get("/which")).text()
}

#[test]
fn sighup_reloads_the_config_file() {
    let a = MockUpstream::ok("a");
    let b = MockUpstream::ok("b");
    let gw = GatewayProcess::spawn(&process_config(&a, "5s"));
    assert_eq!(body_of(gw.addr), "a");

    std::fs::write(&gw.config_path, process_config(&b, "5s")).expect("rewrite config");
    gw.signal(libc::SIGHUP);
    wait_until(
        "traffic follows the reloaded file",
        Duration::from_secs(10),
        || body_of(gw.addr) == "b",
    );
    let metrics = admin_request(gw.admin, "GET", "/metrics").text();
    assert_eq!(
        metric_value(&metrics, "hypergate_config_reloads_total"),
        1.0
    );

    // A broken file on SIGHUP is refused; the running config stays.
    std::fs::write(&gw.config_path, "[[routes]\nbroken").expect("rewrite config");
    gw.signal(libc::SIGHUP);
    wait_until("the bad reload is counted", Duration::from_secs(10), || {
        let m = admin_request(gw.admin, "GET", "/metrics").text();
        metric_value(&m, "hypergate_config_reloads_failed_total") == 1.0
    });
    assert_eq!(body_of(gw.addr), "b");
    assert!(
        gw.log().iter().any(|l| l.contains("reload refused")),
        "{:#?}",
        gw.log()
    );
}

#[test]
fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_zero() {
    let latency = Duration::from_millis(2000);
    let slow = MockUpstream::start(move |_| Reply::ok("slow").latency(latency).into());
    let drain = Duration::from_secs(8);
    let mut gw = GatewayProcess::spawn(&process_config(&slow, "8s"));
    let addr = gw.addr;

    // An idle keep-alive connection: the drain must close it.
    let mut idle = Conn::connect(addr);
    slow.set_handler(|_| Reply::ok("quick").into());
    assert_eq!(idle.request(&Request::get("/warm")).text(), "quick");
    slow.set_handler(move |_| Reply::ok("slow").latency(latency).into());

    let completed = Arc::new(AtomicUsize::new(0));
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let completed = completed.clone();
            std::thread::spawn(move || {
                let mut c = Conn::connect(addr);
                let r = c.request(&Request::get(&format!("/slow/{i}")));
                completed.fetch_add(1, Ordering::SeqCst);
                r
            })
        })
        .collect();
    wait_until(
        "all four requests reached the upstream",
        Duration::from_secs(10),
        || slow.count_path("/warm") == 1 && slow.request_count() == 5,
    );

    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    wait_until(
        "new connections are refused",
        Duration::from_secs(5),
        || Conn::try_connect(addr).is_err(),
    );
    assert_eq!(
        completed.load(Ordering::SeqCst),
        0,
        "refusal must happen while requests are still in flight (took {:?})",
        signalled.elapsed()
    );
    let ready = admin_request(gw.admin, "GET", "/readyz");
    assert_eq!(
        ready.status,
        503,
        "/readyz while draining: {}",
        ready.text()
    );
    assert!(
        idle.closed_within(Duration::from_secs(5)),
        "idle keep-alive connection not closed by the drain"
    );

    for t in in_flight {
        let r = t.join().expect("request thread");
        assert_eq!(
            r.status,
            200,
            "an in-flight request failed during the drain: {}",
            r.text()
        );
        assert_eq!(r.text(), "slow");
    }
    let status = gw
        .wait_exit(drain + Duration::from_secs(3))
        .unwrap_or_else(|| {
            panic!(
                "process still running after the drain timeout:\n{:#?}",
                gw.log()
            )
        });
    assert!(status.success(), "exit status {status}:\n{:#?}", gw.log());
    assert!(
        signalled.elapsed() < drain,
        "exit took {:?}, longer than the drain timeout",
        signalled.elapsed()
    );
    assert_eq!(slow.request_count(), 5);
}

#[test]
fn sigterm_with_nothing_in_flight_exits_promptly() {
    let mock = MockUpstream::ok("ok");
    let mut gw = GatewayProcess::spawn(&process_config(&mock, "8s"));
    assert_eq!(body_of(gw.addr), "ok");
    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("process exits");
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "idle drain took {:?}",
        signalled.elapsed()
    );
}

#[test]
fn sigterm_exits_at_the_drain_timeout_when_a_request_never_finishes() {
    let hang = MockUpstream::always(hypergate_tests::Action::Hang);
    let mut gw = GatewayProcess::spawn(&process_config(&hang, "1s"));
    let addr = gw.addr;
    let stuck = std::thread::spawn(move || {
        let mut c = Conn::connect(addr);
        c.send(&Request::get("/stuck").to_bytes());
        c.try_read_response(false)
    });
    wait_until(
        "the request reached the upstream",
        Duration::from_secs(10),
        || hang.request_count() == 1,
    );
    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("process exits after its drain timeout");
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the drain timeout"
    );
    assert!(
        took < Duration::from_secs(4),
        "exited only after {took:?} (drain timeout 1s)"
    );
    assert!(
        stuck.join().expect("client thread").is_err(),
        "the stuck request cannot have completed"
    );
}
