//! The kernel TCP probe end to end: a `hypergate` process built with `--features
//! ebpf` loads the probe, a known workload runs through it, and the kernel's counts
//! must match what the test did, exactly, while unrelated TCP traffic from this
//! test process is not counted.
//!
//! Needs root (or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN), kernel BTF and cgroup v2;
//! CI runs as root on such a kernel. Without them the probe test FAILS with the
//! reason: it never passes silently. The probe object must exist (`cargo xtask
//! build-ebpf`, which .ci/run runs first); the gateway binary is built here with the
//! feature into `<target>/ebpf-gateway`, so it never replaces the plain binary the
//! other tests run.
//!
//! Workload of [`probe_counts_exactly_the_gateways_own_connections`]:
//! - `N` requests on `N` client connections to an upstream that closes after each
//!   answer: `N` downstream and `N` upstream connections, opened and closed (plus
//!   the overrunning client's below, `M = N + 1` upstream in all);
//! - `R` requests to a closed upstream port: `R` refused connects, `R` resets received;
//! - 1 request to a "blackhole" upstream (a listener whose accept queue is full, so
//!   its SYNs are dropped) with a 1.5 s connect timeout: 1 connect failure, exactly
//!   1 SYN retransmit (the kernel retransmits a SYN after 1 s, then 3 s);
//! - 1 client that aborts (SO_LINGER 0): 1 downstream reset received;
//! - 1 client that sends 300 KB past a `Connection: close` request: the gateway
//!   closes with unread data, 1 downstream reset sent;
//! - meanwhile an unrelated client/server pair in this process (not in the
//!   gateway's cgroup) opens, resets and closes connections of its own.

use hypergate_tests::process::{field, hypergate_bin, workspace_root, GatewayProcess};
use hypergate_tests::util::closed_port;
use hypergate_tests::{Action, MockUpstream, Reply};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Client connections proxied to the healthy upstream.
const N: u64 = 12;
/// Requests to the closed upstream port.
const R: u64 = 3;

/// Fails (does not skip) when the machine cannot run the probe, saying why.
fn require_probe_environment() {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the eBPF probe test must run as root (or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN): \
         it loads BPF programs and moves the gateway into a cgroup. CI runs it as root; \
         run `sudo -E cargo test -p hypergate-tests --test ebpf` locally."
    );
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "the eBPF probe test needs kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        mounts.lines().any(|l| l.contains(" - cgroup2 ")),
        "the eBPF probe test needs a mounted cgroup v2 hierarchy"
    );
}

/// The `hypergate` binary built with `--features ebpf`, in its own target dir.
fn ebpf_gateway_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let object =
            workspace_root().join("ebpf/probe/target/bpfel-unknown-none/release/hypergate-probe");
        let object = std::env::var_os("HYPERGATE_EBPF_OBJECT").map_or(object, PathBuf::from);
        assert!(
            object.is_file(),
            "the probe object {} is missing: run `cargo xtask build-ebpf` first (.ci/run does)",
            object.display()
        );
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let target_dir = profile_dir
            .parent()
            .expect("profile dir has a parent")
            .join("ebpf-gateway");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args([
                "build",
                "-p",
                "hypergate",
                "--features",
                "ebpf",
                "--bin",
                "hypergate",
            ])
            .env("CARGO_TARGET_DIR", &target_dir);
        if release {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build --features ebpf");
        assert!(
            out.status.success(),
            "cargo build -p hypergate --features ebpf failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = target_dir
            .join(if release { "release" } else { "debug" })
            .join("hypergate");
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
        bin
    })
    .clone()
}

/// A `hypergate run` child process built with the `ebpf` feature; on drop it is
/// killed and its (then empty) cgroup removed, rather than left for the next start.
struct Gateway(GatewayProcess);

impl std::ops::Deref for Gateway {
    type Target = GatewayProcess;
    fn deref(&self) -> &GatewayProcess {
        &self.0
    }
}

impl Gateway {
    fn spawn(bin: &Path, toml: &str) -> Gateway {
        Gateway(GatewayProcess::spawn_with(bin, toml))
    }

    fn admin_get(&self, path: &str) -> String {
        let (status, body) = http_get(self.admin, path);
        assert_eq!(status, 200, "GET {path} on admin: {body}");
        body
    }

    fn stats(&self) -> Value {
        serde_json::from_str(&self.admin_get("/stats")).expect("/stats is JSON")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.0.signal(libc::SIGKILL);
        let _ = self.0.wait_exit(Duration::from_secs(5));
        for line in self.0.log() {
            if let Some(dir) = field(&line, "cgroup") {
                if dir.contains("/hypergate-") {
                    let _ = std::fs::remove_dir(dir);
                }
            }
        }
    }
}

/// One request on a fresh connection with `Connection: close`; returns status and body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // One write: the head arrives in one segment.
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// A listener whose accept queue is full (backlog 0, one connection never
/// accepted): the kernel drops further SYNs, so connecting to it times out after
/// SYN retransmits.
struct Blackhole {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _filler: TcpStream,
}

impl Blackhole {
    fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        listener.bind(&any.into()).expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet");
        let filler = TcpStream::connect(addr).expect("first connection fills the queue");
        Blackhole {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }
}

/// Unrelated TCP traffic from this process (outside the gateway's cgroup): an echo
/// server and a client that keeps opening connections, half of them closed with a
/// reset, until stopped.
struct Unrelated {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Unrelated {
    fn start() -> Unrelated {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let server_stop = stop.clone();
        let server = std::thread::spawn(move || {
            while !server_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let client_stop = stop.clone();
        let count = connections.clone();
        let client = std::thread::spawn(move || {
            let mut abort = true;
            while !client_stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    continue;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut echo = [0u8; 1024];
                if s.write_all(&[7u8; 1024]).is_ok() {
                    let _ = s.read_exact(&mut echo);
                }
                if abort {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                } else {
                    let _ = s.shutdown(Shutdown::Both);
                }
                drop(s);
                count.fetch_add(1, Ordering::Relaxed);
                abort = !abort;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Unrelated {
            addr,
            stop,
            connections,
            threads: vec![server, client],
        }
    }

    /// Stops the traffic; returns how many connections it made.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.connections.load(Ordering::Relaxed)
    }
}

/// Connects, then aborts the connection before sending anything (the gateway
/// receives a reset).
fn aborting_client(addr: SocketAddr) {
    let s = TcpStream::connect(addr).expect("connect");
    std::thread::sleep(Duration::from_millis(50));
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(s);
}

/// Sends a `Connection: close` request followed by 300 KB the gateway never reads:
/// closing with unread data makes the gateway's kernel send a reset.
fn overrunning_client(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut bytes = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 300_000));
    // The gateway may reset before all of it is written; either way it saw unread data.
    let _ = s.write_all(&bytes);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn probe_counts_exactly_the_gateways_own_connections() {
    require_probe_environment();
    let bin = ebpf_gateway_bin();
    let api = MockUpstream::always(Action::Respond(Reply::ok("hello").close()));
    let dead = closed_port();
    let blackhole = Blackhole::new();
    let toml = format!(
        r#"
[server]
shards = 2
pin_cores = false
drain_timeout = "2s"

[admin]
listen = "127.0.0.2:0"

[[listeners]]
name = "web"
address = "127.0.0.1:0"

[observability.ebpf]
enabled = true
drain_interval = "100ms"

[[clusters]]
name = "api"
endpoints = [{{ address = "{api}" }}]
[clusters.retry]
attempts = 0

[[clusters]]
name = "dead"
endpoints = [{{ address = "{dead}" }}]
[clusters.retry]
attempts = 0
[clusters.outlier]
consecutive_failures = 1000

[[clusters]]
name = "blackhole"
endpoints = [{{ address = "{blackhole}" }}]
connect_timeout = "1500ms"
[clusters.retry]
attempts = 0

[[routes]]
name = "dead"
cluster = "dead"
[routes.match]
path_prefix = "/dead"

[[routes]]
name = "blackhole"
cluster = "blackhole"
[routes.match]
path_prefix = "/blackhole"

[[routes]]
name = "all"
cluster = "api"
"#,
        api = api.addr(),
        blackhole = blackhole.addr,
    );
    let gw = Gateway::spawn(&bin, &toml);
    let log = gw.log().join("\n");
    assert!(
        log.contains("eBPF TCP probe attached"),
        "the probe did not attach:\n{log}"
    );

    let unrelated = Unrelated::start();
    let unrelated_addr = unrelated.addr;
    for i in 0..N {
        let (status, body) = http_get(gw.addr, &format!("/ok/{i}"));
        assert_eq!((status, body.as_str()), (200, "hello"));
    }
    for _ in 0..R {
        let (status, _) = http_get(gw.addr, "/dead");
        assert!(
            (500..600).contains(&status),
            "refused upstream gave {status}"
        );
    }
    let started = Instant::now();
    let (status, _) = http_get(gw.addr, "/blackhole");
    assert_eq!(
        status,
        504,
        "blackholed upstream after {:?}",
        started.elapsed()
    );
    aborting_client(gw.addr);
    overrunning_client(gw.addr);
    std::thread::sleep(Duration::from_millis(200));
    let unrelated_connections = unrelated.stop();
    assert!(
        unrelated_connections > 0,
        "the unrelated pair made no connections"
    );
    // The overrunning client's request is proxied too.
    let m = N + 1;
    assert_eq!(
        api.accepted() as u64,
        m,
        "upstream connections the mock accepted"
    );

    let downstream = N + R + 1 + 2;
    let expected_counts = [
        ("downstream.web.opened", downstream),
        ("downstream.web.closed", downstream),
        ("downstream.web.resets_received", 1),
        ("downstream.web.resets_sent", 1),
        ("downstream.web.handshake.count", downstream),
        ("downstream.web.srtt_at_close.count", downstream),
        ("downstream.web.lifetime.count", downstream),
        ("upstream.api.opened", m),
        ("upstream.api.closed", m),
        ("upstream.api.connect_failures", 0),
        ("upstream.api.resets_received", 0),
        ("upstream.api.resets_sent", 0),
        ("upstream.api.handshake.count", m),
        ("upstream.api.srtt_at_close.count", m),
        ("upstream.api.lifetime.count", m),
        ("upstream.dead.opened", 0),
        ("upstream.dead.connect_failures", R),
        ("upstream.dead.resets_received", R),
        ("upstream.dead.retransmits", 0),
        ("upstream.blackhole.opened", 0),
        ("upstream.blackhole.connect_failures", 1),
        ("upstream.blackhole.retransmits", 1),
        ("upstream.blackhole.resets_received", 0),
    ];
    let lookup = |tcp: &Value, path: &str| -> u64 {
        let mut v = tcp;
        for part in path.split('.') {
            v = &v[part];
        }
        u(v)
    };
    // Closes and the drain are asynchronous: poll until the figures settle.
    let deadline = Instant::now() + Duration::from_secs(15);
    let tcp = loop {
        let tcp = gw.stats()["tcp"].clone();
        let done = expected_counts
            .iter()
            .all(|(path, want)| lookup(&tcp, path) == *want);
        if done || Instant::now() >= deadline {
            break tcp;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wrong: Vec<String> = expected_counts
        .iter()
        .filter(|(path, want)| lookup(&tcp, path) != *want)
        .map(|(path, want)| format!("{path}: want {want}, got {}", lookup(&tcp, path)))
        .collect();
    assert!(
        wrong.is_empty(),
        "kernel counts differ from the workload:\n  {}\n/stats tcp:\n{}",
        wrong.join("\n  "),
        serde_json::to_string_pretty(&tcp).unwrap_or_default()
    );

    // Only the gateway's own peers: its listeners and its clusters' endpoints.
    let downstream_names: Vec<&String> = tcp["downstream"]
        .as_object()
        .expect("downstream object")
        .keys()
        .collect();
    assert!(
        downstream_names
            .iter()
            .all(|n| *n == "web" || *n == "admin"),
        "unexpected downstream peers: {downstream_names:?}"
    );
    let upstream_names: Vec<&String> = tcp["upstream"]
        .as_object()
        .expect("upstream object")
        .keys()
        .collect();
    assert!(
        upstream_names
            .iter()
            .all(|n| ["api", "dead", "blackhole"].contains(&n.as_str())),
        "unexpected upstream peers: {upstream_names:?}"
    );
    let text = tcp.to_string();
    assert!(
        !text.contains(&unrelated_addr.port().to_string()),
        "the unrelated pair on {unrelated_addr} shows up in the probe's figures: {text}"
    );
    assert_eq!(u(&tcp["probe"]["events_lost"]), 0);

    // Plausible latencies on loopback: above zero, far below a second.
    for (side, name) in [("downstream", "web"), ("upstream", "api")] {
        for hist in ["handshake", "srtt_at_close"] {
            let h = &tcp[side][name][hist];
            assert!(
                u(&h["min_us"]) >= 1 && u(&h["max_us"]) < 500_000,
                "{side}.{name}.{hist} implausible on loopback: {h}"
            );
        }
    }
    let stats = gw.stats();
    let api_stats = &stats["clusters"]["api"];
    assert_eq!(u(&api_stats["tcp"]["srtt"]["count"]), m, "{api_stats}");
    assert!(
        api_stats.get("upstream_latency").is_some(),
        "kernel RTT sits next to the L7 latency: {api_stats}"
    );

    let metrics = gw.admin_get("/metrics");
    for line in [
        format!("hypergate_tcp_connections_opened_total{{side=\"downstream\",listener=\"web\"}} {downstream}"),
        format!("hypergate_tcp_connections_closed_total{{side=\"upstream\",cluster=\"api\",endpoint=\"{}\"}} {m}", api.addr()),
        format!("hypergate_tcp_resets_received_total{{side=\"upstream\",cluster=\"dead\",endpoint=\"{dead}\"}} {R}"),
        format!("hypergate_tcp_retransmits_total{{side=\"upstream\",cluster=\"blackhole\",endpoint=\"{}\"}} 1", blackhole.addr),
        format!("hypergate_tcp_handshake_duration_seconds_count{{side=\"upstream\",cluster=\"api\",endpoint=\"{}\"}} {m}", api.addr()),
    ] {
        assert!(metrics.contains(&format!("{line}\n")), "/metrics lacks `{line}`:\n{metrics}");
    }
    promtool_check(&metrics);
}

/// `promtool check metrics` must accept the exposition.
fn promtool_check(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A gateway with the probe enabled that cannot load it: one clear warning, then
/// business as usual, and no `hypergate_tcp_*` figures.
fn assert_runs_without_probe(bin: &Path, cgroup: Option<&str>, reason: &[&str]) {
    let api = MockUpstream::always(Action::Respond(Reply::ok("fine")));
    let cgroup_line = cgroup.map_or(String::new(), |c| format!("cgroup = \"{c}\"\n"));
    let toml = format!(
        r#"
[server]
shards = 1
pin_cores = false
drain_timeout = "2s"

[admin]
listen = "127.0.0.2:0"

[[listeners]]
name = "web"
address = "127.0.0.1:0"

[observability.ebpf]
enabled = true
{cgroup_line}
[[clusters]]
name = "api"
endpoints = [{{ address = "{api}" }}]

[[routes]]
name = "all"
cluster = "api"
"#,
        api = api.addr()
    );
    let gw = Gateway::spawn(bin, &toml);
    assert_eq!(http_get(gw.addr, "/"), (200, "fine".to_string()));
    let log = gw.log();
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("eBPF probe not loaded"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "want one warning line:\n{}",
        log.join("\n")
    );
    let line = warnings[0];
    assert!(
        line.contains("WARN") && line.contains("continuing without kernel TCP metrics"),
        "{line}"
    );
    assert!(
        reason.iter().any(|r| line.contains(r)),
        "the warning should say why ({reason:?}): {line}"
    );
    assert!(!gw.admin_get("/metrics").contains("hypergate_tcp_"));
    assert!(gw.stats().get("tcp").is_none());
}

#[test]
fn probe_that_cannot_load_is_reported_once_and_the_gateway_serves() {
    let bin = ebpf_gateway_bin();
    let missing = std::env::temp_dir().join("hypergate-ebpf-test-no-such-cgroup");
    assert_runs_without_probe(
        &bin,
        Some(missing.to_str().expect("utf-8 temp dir")),
        // As root the cgroup is the problem; without privileges loading fails first.
        &["does not exist", "not permitted"],
    );
}

#[test]
fn binary_without_the_feature_says_so_and_serves() {
    assert_runs_without_probe(&hypergate_bin(), None, &["without the `ebpf` feature"]);
}
