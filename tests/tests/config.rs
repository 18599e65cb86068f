//! Configuration as operators meet it: `hypergate check` on good and bad files,
//! and addresses that must be accepted.

use hypergate_tests::process::run_cli;
use hypergate_tests::{preamble, MockUpstream, TempDir, TestGateway};

#[test]
fn check_accepts_a_valid_file() {
    let dir = TempDir::new();
    let path = dir.write(
        "good.toml",
        &format!(
            "{}\n[[clusters]]\nname = \"c\"\nendpoints = [{{ address = \"127.0.0.1:9\" }}]\n\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
            preamble(1)
        ),
    );
    let (status, stdout, stderr) =
        run_cli(&["check", "--config", path.to_str().expect("utf-8 path")]);
    assert!(
        status.success(),
        "check failed on a valid file:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn check_reports_every_error_with_file_and_path() {
    let dir = TempDir::new();
    let path = dir.write(
        "bad.toml",
        r#"
[server]
drain_timeout = "0s"

[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "main"
address = "not an address"

[[clusters]]
name = "c"
endpoints = [{ address = "127.0.0.1:9", weight = 5000 }]
lb = "hash"

[[routes]]
name = "r1"
cluster = "c"

[[routes]]
name = "r2"
cluster = "missing"
[routes.redirect]
location = "https://example.com"
status = 200
"#,
    );
    let file = path.to_str().expect("utf-8 path");
    let (status, stdout, stderr) = run_cli(&["check", "--config", file]);
    assert!(!status.success(), "check passed a bad file:\n{stdout}");
    let expected = [
        "server.drain_timeout",
        "listeners[0].address",
        "clusters[0].endpoints[0].weight",
        "clusters[0].hash_on",
        "routes[1].cluster: unknown cluster",
        "routes[1]: exactly one of",
        "routes[1].redirect.status",
    ];
    for want in expected {
        let line = stderr.lines().find(|l| l.contains(want));
        let line = line.unwrap_or_else(|| panic!("{want:?} not reported:\n{stderr}"));
        assert!(
            line.contains(file),
            "error line without the file name: {line:?}"
        );
    }
    let count: usize = stderr
        .lines()
        .find_map(|l| {
            l.strip_suffix(" configuration error(s)")?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no error count line:\n{stderr}"));
    assert!(count >= expected.len(), "error count {count}:\n{stderr}");
}

#[test]
fn check_reports_type_errors_in_several_sections() {
    let dir = TempDir::new();
    let path = dir.write(
        "types.toml",
        r#"
[limits]
max_headers = "many"

[[listeners]]
name = "main"
address = "127.0.0.1:0"
colour = "blue"

[[routes]]
name = "r"
timeout = 5
"#,
    );
    let (status, _, stderr) = run_cli(&["check", "--config", path.to_str().expect("utf-8 path")]);
    assert!(!status.success());
    for want in ["limits", "listeners[0]", "routes[0]"] {
        assert!(
            stderr.contains(&format!(": {want}: ")),
            "{want} not reported:\n{stderr}"
        );
    }
}

/// Both the admin and a data listener on `127.0.0.1:0` get distinct ephemeral
/// ports, so validation must not call them the same address.
#[test]
fn admin_and_listener_may_both_use_port_zero() {
    let mock = MockUpstream::ok("ok");
    let toml = format!(
        r#"
[server]
shards = 1
pin_cores = false
drain_timeout = "1s"

[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "main"
address = "127.0.0.1:0"

[[clusters]]
name = "c"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "r"
cluster = "c"
"#,
        mock.addr()
    );
    if let Err(e) = hypergate::config::load_str(&toml, "port-zero.toml") {
        panic!("a config with admin and listener on 127.0.0.1:0 is refused:\n{e}");
    }
    let gw = TestGateway::start(&toml);
    assert_ne!(gw.addr, gw.admin);
    assert_eq!(gw.get("/").text(), "ok");
}

#[test]
fn a_start_up_failure_is_one_line_without_a_backtrace() {
    // The data port is taken: binding it is what fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = TempDir::new();
    let path = dir.write(
        "clash.toml",
        &format!(
            "[server]\nshards = 1\npin_cores = false\n\n[admin]\nlisten = \"127.0.0.2:0\"\n\n\
             [[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:{port}\"\n\n\
             [[routes]]\nname = \"r\"\ndirect = {{ body = \"x\" }}\n"
        ),
    );
    let out = std::process::Command::new(hypergate_tests::process::hypergate_bin())
        .args(["run", "--config", path.to_str().expect("utf-8 path")])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "error")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("run hypergate");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [format!(
            "hypergate: error: cannot start the gateway: cannot bind listener \"main\" \
             127.0.0.1:{port}: Address already in use (os error 98)"
        )],
        "{stderr}"
    );
}

/// HTTP/2 upstreams and gRPC settings: every mistake listed at once.
#[test]
fn check_reports_http2_and_grpc_mistakes() {
    let dir = TempDir::new();
    let path = dir.write(
        "bad.toml",
        &format!(
            r#"{preamble}
[[clusters]]
name = "needs-tls"
protocol = "h2"
endpoints = [{{ address = "127.0.0.1:9" }}]

[[clusters]]
name = "plain-only"
protocol = "h2c"
endpoints = [{{ address = "127.0.0.1:9" }}]
[clusters.tls]
ca_file = "/etc/ssl/certs/ca-certificates.crt"
server_name = "x"
[clusters.pool]
max_streams = 0

[[clusters]]
name = "http1"
endpoints = [{{ address = "127.0.0.1:9" }}]
[clusters.health_check]
grpc_service = ""

[[routes]]
name = "r"
cluster = "http1"
[routes.grpc]
error_codes = ["UNAVAILABLE", "NOPE", "0", "99"]
max_timeout = "0s"
"#,
            preamble = preamble(1)
        ),
    );
    let file = path.to_str().expect("utf-8 path");
    let (status, _, stderr) = run_cli(&["check", "--config", file]);
    assert!(!status.success(), "check passed a bad file:\n{stderr}");
    for want in [
        "clusters[0].protocol: \"h2\" is HTTP/2 over TLS",
        "clusters[1].protocol: \"h2c\" is HTTP/2 over plain TCP",
        "clusters[1].pool.max_streams",
        "clusters[2].health_check.grpc_service: gRPC health checks need protocol",
        "routes[0].grpc.error_codes[1]: \"NOPE\" is not a gRPC status code",
        "routes[0].grpc.error_codes[2]: OK is never an error",
        "routes[0].grpc.error_codes[3]",
        "routes[0].grpc.max_timeout",
    ] {
        assert!(stderr.contains(want), "{want:?} not reported:\n{stderr}");
    }
}
