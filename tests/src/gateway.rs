//! In-process gateway launcher: a real [`hypergate::gateway::Gateway`] on ephemeral ports.
//!
//! [`TestGateway::start`] writes the TOML to a temp file, validates it with
//! `hypergate::config::load_str`, and starts the gateway with that file as its
//! reload source, so `POST /reload` on the admin port re-reads it exactly as in
//! production. Configs use [`preamble`], which binds the data listener and the
//! admin listener to `127.0.0.1:0`, so any number of gateways run side by side.
//! Dropping a `TestGateway` drains it and joins its shard threads.

use crate::client::{Conn, Request, Response};
use crate::util::TempDir;
use hypergate::gateway::Gateway;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[server]`, `[admin]` and one `[[listeners]]` on ephemeral ports, with `shards`
/// shards, no CPU pinning and a 2 s drain. Append clusters, routes and limits.
///
/// The admin listener binds 127.0.0.2 (still loopback) rather than 127.0.0.1:
/// config validation compares the admin and listener addresses literally, so two
/// `127.0.0.1:0` addresses count as a clash even though each gets its own port
/// (`config::admin_and_listener_may_both_use_port_zero` tracks that).
pub fn preamble(shards: usize) -> String {
    format!(
        r#"
[server]
shards = {shards}
pin_cores = false
drain_timeout = "2s"

[admin]
listen = "127.0.0.2:0"

[[listeners]]
name = "main"
address = "127.0.0.1:0"
"#
    )
}

/// A `[[clusters]]` section with round-robin endpoints (extra TOML lines are appended).
pub fn cluster(name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        "\n[[clusters]]\nname = \"{name}\"\nendpoints = [{}]\n{extra}\n",
        eps.join(", ")
    )
}

/// A catch-all `[[routes]]` section to `cluster` (extra TOML lines are appended).
pub fn route_all(name: &str, cluster: &str, extra: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\ncluster = \"{cluster}\"\n{extra}\n")
}

/// A running in-process gateway.
pub struct TestGateway {
    gateway: Option<Gateway>,
    /// First data-plane listener address.
    pub addr: SocketAddr,
    /// Admin listener address.
    pub admin: SocketAddr,
    config_path: PathBuf,
    _dir: TempDir,
}

impl std::fmt::Debug for TestGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestGateway")
            .field("addr", &self.addr)
            .field("admin", &self.admin)
            .finish()
    }
}

impl TestGateway {
    /// Starts a gateway on `toml`; panics with every config error when it is invalid.
    pub fn start(toml: &str) -> TestGateway {
        let dir = TempDir::new();
        let config_path = dir.write("gateway.toml", toml);
        let config = hypergate::config::load_str(toml, &config_path.display().to_string())
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n{toml}"));
        let gateway = Gateway::start(config, Some(config_path.clone())).expect("gateway starts");
        let addr = gateway.listener_addrs[0].1;
        let admin = gateway.admin_addr;
        TestGateway {
            gateway: Some(gateway),
            addr,
            admin,
            config_path,
            _dir: dir,
        }
    }

    /// Starts a gateway on the config `make` writes, again with a new one
    /// when a port it names was taken meanwhile (demo upstreams' ports come
    /// from [`crate::util::closed_port`], and a parallel test's connection
    /// may take one before the gateway binds it): at most 5 tries.
    pub fn start_with_fresh_ports(make: impl Fn() -> String) -> TestGateway {
        let mut last = String::new();
        for _ in 0..5 {
            let toml = make();
            let dir = TempDir::new();
            let config_path = dir.write("gateway.toml", &toml);
            let config = hypergate::config::load_str(&toml, &config_path.display().to_string())
                .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n{toml}"));
            match Gateway::start(config, Some(config_path.clone())) {
                Ok(gateway) => {
                    return TestGateway {
                        addr: gateway.listener_addrs[0].1,
                        admin: gateway.admin_addr,
                        gateway: Some(gateway),
                        config_path,
                        _dir: dir,
                    }
                }
                Err(e) => last = format!("{e:?}"),
            }
        }
        panic!("gateway does not start after 5 tries: {last}");
    }

    /// The gateway itself (controller, addresses).
    pub fn inner(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    /// Rewrites the config file without reloading.
    pub fn write_config(&self, toml: &str) {
        std::fs::write(&self.config_path, toml).expect("write config file");
    }

    /// Rewrites the config file and asks the admin API to reload it.
    pub fn reload(&self, toml: &str) -> Response {
        self.write_config(toml);
        self.admin_request("POST", "/reload")
    }

    /// A request to the admin listener.
    pub fn admin_request(&self, method: &str, path: &str) -> Response {
        admin_request(self.admin, method, path)
    }

    /// Any request (with a body) to the admin listener; `Host` is the admin
    /// address unless the request sets one.
    pub fn admin_send(&self, req: &Request) -> Response {
        admin_send(self.admin, req)
    }

    /// `GET /metrics` text.
    pub fn metrics(&self) -> String {
        let r = self.admin_request("GET", "/metrics");
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        r.text()
    }

    /// The value of one sample in `/metrics` (`name{labels}` exactly as exported), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// `GET /stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        self.admin_request("GET", "/stats").json()
    }

    /// A fresh client connection to the data listener.
    pub fn conn(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// `GET path` on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        self.conn().request(&Request::get(path))
    }

    /// One request on a fresh connection.
    pub fn send(&self, req: &Request) -> Response {
        self.conn().request(req)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown();
        }
    }
}

/// One request to an admin listener (with `Host` set to its address, which the
/// admin's DNS-rebinding check accepts).
pub fn admin_request(admin: SocketAddr, method: &str, path: &str) -> Response {
    admin_send(admin, &Request::new(method, path))
}

/// Any request to an admin listener on a fresh connection, closed after it;
/// `Host` is the admin address unless the request sets one.
pub fn admin_send(admin: SocketAddr, req: &Request) -> Response {
    let mut req = req.clone().header("Connection", "close");
    if !req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        req.headers.insert(0, ("Host".into(), admin.to_string()));
    }
    Conn::connect(admin).request(&req)
}

/// The value of `series` (e.g. `hypergate_rejections_total{reason="bad_chunk"}`) in a
/// Prometheus text exposition, 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap_or(f64::NAN))
        })
        .unwrap_or(0.0)
}
