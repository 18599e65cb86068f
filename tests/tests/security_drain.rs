//! Lame-duck drain: SIGTERM under load loses nothing. `/readyz` turns 503 at
//! once while the listeners keep accepting and serving for `drain_delay`; then
//! answers carry `Connection: close`, idle connections close only between
//! requests, and the process exits when the last request ends. Clients here
//! behave like a load balancer's pool: they keep sending on their keep-alive
//! connections, open no new connection once `/readyz` said 503, and retire a
//! connection only after an answer that says `Connection: close`. None of their
//! requests may fail or see a reset.

use hypergate_tests::gateway::admin_request;
use hypergate_tests::process::GatewayProcess;
use hypergate_tests::{cluster, route_all, wait_until, Conn, MockUpstream, Reply, Request};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(upstream: &MockUpstream, delay: &str, timeout: &str) -> String {
    format!(
        r#"
[server]
shards = 2
pin_cores = false
drain_delay = "{delay}"
drain_timeout = "{timeout}"
drain_idle_grace = "2s"

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

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    ok_after_signal: AtomicUsize,
    closed_cleanly: AtomicUsize,
    failed: std::sync::Mutex<Vec<String>>,
}

#[test]
fn sigterm_under_load_fails_no_request() {
    let upstream =
        MockUpstream::start(|_| Reply::ok("ok").latency(Duration::from_millis(3)).into());
    let mut gw = GatewayProcess::spawn(&config(&upstream, "1500ms", "5s"));
    let addr = gw.addr;
    let tally = Arc::new(Tally::default());
    let lb_saw_503 = Arc::new(AtomicBool::new(false));
    let signalled = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (tally, lb_saw_503, signalled) =
                (tally.clone(), lb_saw_503.clone(), signalled.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(20) {
                    if lb_saw_503.load(Ordering::SeqCst) {
                        // The balancer sends new connections elsewhere now.
                        return;
                    }
                    let Ok(mut conn) = Conn::try_connect(addr) else {
                        return;
                    };
                    conn.set_read_timeout(Duration::from_secs(10));
                    loop {
                        let req = Request::get(&format!("/client/{i}"));
                        if let Err(e) = conn.try_send(&req.to_bytes()) {
                            tally.failed.lock().unwrap().push(format!("send: {e}"));
                            return;
                        }
                        match conn.try_read_response(false) {
                            Ok(r) if r.status == 200 => {
                                tally.ok.fetch_add(1, Ordering::SeqCst);
                                if signalled.load(Ordering::SeqCst) {
                                    tally.ok_after_signal.fetch_add(1, Ordering::SeqCst);
                                }
                                if r.says_close() {
                                    tally.closed_cleanly.fetch_add(1, Ordering::SeqCst);
                                    break;
                                }
                            }
                            Ok(r) => {
                                tally
                                    .failed
                                    .lock()
                                    .unwrap()
                                    .push(format!("status {}", r.status));
                                return;
                            }
                            Err(e) => {
                                tally.failed.lock().unwrap().push(format!("read: {e}"));
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    wait_until("load is flowing", Duration::from_secs(10), || {
        tally.ok.load(Ordering::SeqCst) > 300
    });

    signalled.store(true, Ordering::SeqCst);
    let at = Instant::now();
    gw.signal(libc::SIGTERM);
    wait_until("/readyz says 503", Duration::from_secs(2), || {
        admin_request(gw.admin, "GET", "/readyz").status == 503
    });
    lb_saw_503.store(true, Ordering::SeqCst);
    let readyz_flip = at.elapsed();

    // The lame duck still accepts and serves new connections, keep-alive and all.
    let mut late = Conn::connect(addr);
    let r = late.request(&Request::get("/late"));
    assert_eq!(r.status, 200);
    assert!(
        !r.says_close(),
        "an answer during the lame-duck period closed"
    );
    assert!(
        at.elapsed() < Duration::from_millis(1500),
        "test too slow for the 1.5 s lame duck"
    );
    // A connection idle across the drain: closed between requests, not under one.
    let idle_late = late;

    for c in clients {
        c.join().expect("client thread");
    }
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running:\n{:#?}", gw.log()));
    let exit_after = at.elapsed();
    let failed = tally.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "failed requests across the drain: {failed:?}"
    );
    assert!(status.success(), "exit status {status}:\n{:#?}", gw.log());
    assert!(
        readyz_flip < Duration::from_millis(500),
        "/readyz flipped after {readyz_flip:?}"
    );
    assert!(
        tally.ok_after_signal.load(Ordering::SeqCst) > 50,
        "the lame duck stopped serving: {} answers after SIGTERM",
        tally.ok_after_signal.load(Ordering::SeqCst)
    );
    assert!(
        tally.closed_cleanly.load(Ordering::SeqCst) >= 8,
        "each client connection ends with a Connection: close answer"
    );
    assert!(
        exit_after >= Duration::from_millis(1500) && exit_after < Duration::from_secs(7),
        "exit after {exit_after:?} (lame duck 1.5 s, idle grace 2 s, drain timeout 5 s)"
    );
    drop(idle_late);
}

#[test]
fn a_connection_idle_at_the_drain_still_gets_an_answer() {
    let upstream = MockUpstream::ok("ok");
    let mut gw = GatewayProcess::spawn(&config(&upstream, "0s", "5s"));
    let mut conn = Conn::connect(gw.addr);
    assert_eq!(conn.request(&Request::get("/a")).status, 200);
    // A slow request keeps the process in its drain while we send on the idle one.
    upstream.set_handler(|r| {
        if r.path() == "/slow" {
            Reply::ok("slow")
                .latency(Duration::from_millis(1500))
                .into()
        } else {
            Reply::ok("ok").into()
        }
    });
    let addr = gw.addr;
    let slow = std::thread::spawn(move || Conn::connect(addr).request(&Request::get("/slow")));
    wait_until(
        "the slow request is upstream",
        Duration::from_secs(5),
        || upstream.count_path("/slow") == 1,
    );
    gw.signal(libc::SIGTERM);
    wait_until("draining", Duration::from_secs(5), || {
        Conn::try_connect(gw.addr).is_err()
    });
    // Within the grace period, the idle connection's next request is answered
    // (with Connection: close) instead of finding the socket closed.
    let r = conn.request(&Request::get("/b"));
    assert_eq!(r.status, 200);
    assert!(r.says_close());
    assert_eq!(slow.join().expect("slow").status, 200);
    assert!(gw
        .wait_exit(Duration::from_secs(8))
        .is_some_and(|s| s.success()));
}

#[test]
fn connection_churn_through_the_drain_resets_nothing() {
    // The hardest case: no lame duck, and clients that open a new connection for
    // every request (each answer says `Connection: close` once draining) right
    // through the listener's close. Connections are refused (before anything is
    // sent) once it is closed; none may be reset, nor a sent request lost.
    let upstream = MockUpstream::ok("ok");
    let mut gw = GatewayProcess::spawn(&config(&upstream, "0s", "5s"));
    let addr = gw.addr;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (tally, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut conn) = Conn::try_connect(addr) else {
                        continue;
                    };
                    conn.set_read_timeout(Duration::from_secs(5));
                    if conn.try_send(&Request::get("/churn").to_bytes()).is_err() {
                        // Refused mid-handshake is a connect failure: nothing was sent.
                        continue;
                    }
                    match conn.try_read_response(false) {
                        Ok(r) if r.status == 200 => {
                            tally.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => tally
                            .failed
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status)),
                        Err(e) => tally.failed.lock().unwrap().push(format!("read: {e}")),
                    }
                }
            })
        })
        .collect();
    wait_until("churn is flowing", Duration::from_secs(10), || {
        tally.ok.load(Ordering::SeqCst) > 200
    });
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(10));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    let failed = tally.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "requests lost across the drain: {failed:?}"
    );
    assert!(status.is_some_and(|s| s.success()), "{:#?}", gw.log());
}
