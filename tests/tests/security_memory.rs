//! Memory that clients choose stays bounded, and comes back. Each test runs the
//! real `hypergate` binary (with its allocator) and reads its resident set from
//! `/proc` before, during and after a flood:
//! - distinct 16 KB rate-limit keys cost a fixed-size digest each, not 16 KB;
//! - idle connections hold only a small read buffer, and the memory of a flood
//!   of them is returned once they close;
//! - the default per-IP connection cap refuses a single address's flood.

use hypergate_tests::process::GatewayProcess;
use hypergate_tests::{cluster, route_all, wait_until, Conn, MockUpstream, Request};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// A rate limit keyed by the `x-key` header, too generous to refuse anything.
const BY_KEY: &str = r#"
[[rate_limits]]
name = "by-key"
key = "header:x-key"
limits = [{ requests = 1000000, per = "1s" }]
"#;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A gateway whose one route, rate-limited by `x-key`, proxies to `upstream`
/// (or, with `direct`, answers itself, so only the gateway parses the keys).
fn config(upstream: &MockUpstream, extra: &str, direct: bool) -> String {
    let route = if direct {
        "\n[[routes]]\nname = \"all\"\ndirect = { body = \"ok\" }\npolicy = { rate_limits = [\"by-key\"] }\n".to_string()
    } else {
        route_all("all", "backend", "policy = { rate_limits = [\"by-key\"] }")
    };
    format!(
        r#"
[server]
shards = 2
pin_cores = false
drain_delay = "0s"

[admin]
listen = "127.0.0.2:0"

[[listeners]]
name = "main"
address = "127.0.0.1:0"
{extra}
{}{}"#,
        cluster("backend", &[upstream.addr()], ""),
        route
    )
}

/// This process may open as many descriptors as its hard limit allows.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the valid struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

#[test]
fn a_flood_of_distinct_16_kb_rate_limit_keys_costs_a_digest_each() {
    let upstream = MockUpstream::ok("ok");
    let gw = GatewayProcess::spawn(&config(
        &upstream,
        &format!("[limits]\nmax_header_bytes = 20000\n{BY_KEY}"),
        true,
    ));
    let pid = gw.pid();
    let send_keys = |from: usize, count: usize| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let addr = gw.addr;
                std::thread::spawn(move || {
                    let mut c = Conn::connect(addr);
                    let pad = "k".repeat(16 * 1024 - 32);
                    for i in (from + t..from + count).step_by(4) {
                        let r = c
                            .request(&Request::get("/x").header("x-key", &format!("{i:>24}{pad}")));
                        assert_eq!(r.status, 200, "{}", r.text());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("sender");
        }
    };
    // Warm up allocator pools, buffers and the route, then measure 5 000 new keys.
    send_keys(0, 1_000);
    let before = rss_bytes(pid);
    send_keys(1_000_000, 5_000);
    let after = rss_bytes(pid);
    let grown = after.saturating_sub(before);
    eprintln!(
        "RSS {} MiB -> {} MiB after 5 000 distinct 16 KB keys",
        before / MIB,
        after / MIB
    );
    // Stored raw, the keys alone would be 80 MiB.
    assert!(
        grown < 24 * MIB,
        "5 000 keys of 16 KB grew RSS by {} MiB",
        grown / MIB
    );
}

#[test]
fn idle_connections_are_cheap_and_their_memory_comes_back() {
    let have = raise_fd_limit();
    let n: usize = 6_000.min((have as usize).saturating_sub(500) / 2);
    let upstream = MockUpstream::ok("ok");
    let gw = GatewayProcess::spawn(&config(&upstream, BY_KEY, false));
    let pid = gw.pid();
    assert_eq!(
        Conn::connect(gw.addr).request(&Request::get("/")).status,
        200
    );
    let before = rss_bytes(pid);
    // From many loopback addresses, under the per-IP cap.
    let conns: Vec<TcpStream> = (0..n)
        .map(|i| {
            let src = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                1 + (i / 250) as u8,
                1 + (i % 250) as u8,
            ));
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            sock.bind(&SocketAddr::new(src, 0).into())
                .expect("bind source");
            sock.connect(&gw.addr.into()).expect("connect");
            sock.into()
        })
        .collect();
    wait_until(
        "every connection is accepted",
        Duration::from_secs(20),
        || {
            let m = hypergate_tests::gateway::admin_request(gw.admin, "GET", "/metrics").text();
            hypergate_tests::gateway::metric_value(&m, "hypergate_downstream_active_connections")
                >= n as f64
        },
    );
    let during = rss_bytes(pid);
    let per_conn = during.saturating_sub(before) / n as u64;
    eprintln!(
        "RSS {} MiB before, {} MiB with {n} idle connections ({per_conn} bytes each)",
        before / MIB,
        during / MIB
    );
    assert!(
        per_conn < 24 * 1024,
        "an idle connection costs {per_conn} bytes"
    );
    drop(conns);
    // At least three quarters of what the flood took goes back to the OS (the
    // rest is bookkeeping that keeps its size: slot tables, the io_uring slab).
    let flood = during.saturating_sub(before);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = rss_bytes(pid);
        seen.push(now / MIB);
        if now < before + flood / 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the flood's memory was not returned: {} MiB before, {} MiB during, then {seen:?}",
            before / MIB,
            during / MIB
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "RSS {} MiB after they closed (MiB while waiting: {seen:?})",
        rss_bytes(pid) / MIB
    );
}

#[test]
fn the_default_per_ip_cap_refuses_a_single_address_flood() {
    let have = raise_fd_limit();
    if have < 10_000 {
        eprintln!("skipped: the open-file limit ({have}) cannot hold 4 097 connections twice");
        return;
    }
    let upstream = MockUpstream::ok("ok");
    let gw = GatewayProcess::spawn(&config(&upstream, BY_KEY, false));
    let held: Vec<TcpStream> = (0..4_096)
        .map(|_| TcpStream::connect(gw.addr).expect("connect"))
        .collect();
    wait_until("the cap is reached", Duration::from_secs(20), || {
        let m = hypergate_tests::gateway::admin_request(gw.admin, "GET", "/metrics").text();
        hypergate_tests::gateway::metric_value(&m, "hypergate_downstream_active_connections")
            >= 4_096.0
    });
    let mut extra = TcpStream::connect(gw.addr).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("connection_limit"), "{answer:?}");
    drop(held);
}
