//! The README's hypercare walk-through, as far as CI can run it: the real
//! `examples/canary.toml` (only its addresses moved to free ports) in the real
//! binary, steady load from `wrk` until the gateway rolls the canary back, then the claims the README and docs/hypercare.md make:
//! `v2` at 0% with the decision and its evidence, the `canary-rollback` alert
//! firing and v2's own error alert fired, `hypergate report` with totals that
//! equal the requests sent, and `hypergate diff --from v1 --to v2` finding v2's
//! errors significant, all from the example's own store file.

use hypergate_tests::gateway::{admin_request, metric_value};
use hypergate_tests::process::{run_cli, workspace_root, GatewayProcess};
use hypergate_tests::wait_until;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

fn admin_json(admin: std::net::SocketAddr, path: &str) -> Value {
    admin_request(admin, "GET", path).json()
}

#[test]
fn the_canary_walk_through_does_what_the_readme_says() {
    let example = std::fs::read_to_string(workspace_root().join("examples/canary.toml")).unwrap();
    let mut toml = example;
    // Four distinct free ports (held together while they are picked).
    let held: Vec<std::net::TcpListener> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let free: Vec<String> = held
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    drop(held);
    for (fixed, port) in [
        "127.0.0.1:8080",
        "127.0.0.1:9901",
        "127.0.0.1:8081",
        "127.0.0.1:8083",
    ]
    .iter()
    .zip(&free)
    {
        assert!(toml.contains(fixed), "the example no longer uses {fixed}");
        toml = toml.replace(fixed, port);
    }
    let mut gw = GatewayProcess::spawn(&toml);
    let (addr, admin) = (gw.addr, gw.admin);
    let canary = || admin_json(admin, "/hypercare/canary");
    // Steady load from wrk, as the README has it (bounded: 60 s at most; it
    // is stopped as soon as the gateway rolls v2 back).
    let mut wrk = Command::new("wrk")
        .args(["-t2", "-c16", "-d60s", &format!("http://{addr}/checkout")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wrk must be installed (Debian package `wrk`; .ci/run installs it)");
    wait_until("the canary is rolled back", Duration::from_secs(90), || {
        canary()["canaries"][0]["status"]["phase"] == "rolled_back"
    });
    let _ = wrk.kill();
    let _ = wrk.wait();
    // Every request the gateway counted (requests wrk had in flight when it
    // stopped included), from its own counters, once wrk's connections are
    // gone (a connection is counted closed after its last request's record).
    wait_until(
        "wrk's connections are closed",
        Duration::from_secs(10),
        || {
            let m = admin_request(admin, "GET", "/metrics").text();
            metric_value(&m, "hypergate_downstream_active_connections") == 0.0
        },
    );
    let metrics = admin_request(admin, "GET", "/metrics").text();
    let sent: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("hypergate_requests_total{route=\"checkout\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(sent > 1000, "{metrics}");
    let view = canary();
    assert_eq!(view["canaries"][0]["weight"], 0, "{view}");
    let last = view["decisions"].as_array().unwrap().last().unwrap();
    assert_eq!(last["decision"]["action"], "rollback", "{last}");
    assert!(
        last["decision"]["evidence"]["error_rate"]["canary_rate"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The rollback is an alert firing, and v2's own error rate fired too.
    let alerts = admin_json(admin, "/hypercare/alerts");
    assert!(
        alerts["firing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "canary-rollback:checkout"),
        "{alerts}"
    );
    // v2's own error-rate rule (over 30 s, held for 5 s) fires on the errors
    // v2 served before the rollback.
    wait_until("checkout-v2-errors fires", Duration::from_secs(30), || {
        admin_json(admin, "/hypercare/alerts")["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["alert"] == "checkout-v2-errors" && e["state"] == "firing")
    });

    // The report and diff read the example's own store: stop the gateway so
    // every call's rollup and row is in it.
    gw.signal(libc::SIGTERM);
    assert!(
        gw.wait_exit(Duration::from_secs(30)).is_some(),
        "the gateway exits"
    );
    let config = gw.config_path.display().to_string();
    assert!(
        gw.config_path.with_file_name("canary.db").exists(),
        "the store is canary.db next to the config"
    );
    let (st, report, err) = run_cli(&["report", "--config", &config, "--since", "1h"]);
    assert!(st.success(), "{err}");
    assert!(
        report.contains(&format!("{sent} requests")),
        "the report counts every request ({sent}):\n{report}"
    );
    for want in [
        "| rollback |",
        "canary-rollback:checkout",
        "checkout-v2-errors",
    ] {
        assert!(report.contains(want), "report lacks {want:?}:\n{report}");
    }
    let (st, diff, err) = run_cli(&["diff", "--config", &config, "--from", "v1", "--to", "v2"]);
    assert!(st.success(), "{err}");
    let diff: Value = serde_json::from_str(&diff).unwrap();
    assert_eq!(diff["error_rate"]["significant"], true, "{diff}");
    // Only this walk-through's calls, every one of them: v1's and v2's add up
    // to the requests sent.
    let on = |side: &str| diff[side]["baseline"]["requests"].as_u64().unwrap();
    assert_eq!(on("from") + on("to"), sent, "{diff}");
}
