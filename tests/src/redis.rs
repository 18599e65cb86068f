//! A real `redis-server` for tests of cluster-wide state (rate limits, budgets):
//! started on an ephemeral port without persistence, killed on drop. `.ci/run`
//! installs the Debian package.

use crate::util::{closed_port, wait_until, TempDir};
use hypergate::config::edge::RedisConfig;
use hypergate::secret::Secret;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` on an ephemeral port, without persistence; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its address.
    pub addr: SocketAddr,
    dir: TempDir,
    /// ACL user and password it requires, if any.
    credentials: Option<(String, String)>,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    /// Starts one that serves only clients authenticated as the ACL user `user`
    /// with `password` (the default user needs `password` too).
    pub fn start_with_user(user: &str, password: &str) -> RedisServer {
        Self::start_with(Some((user.into(), password.into())))
    }

    fn start_with(credentials: Option<(String, String)>) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            addr: closed_port(),
            dir: TempDir::new(),
            credentials,
        };
        server.restart();
        server
    }

    /// A `[redis]` config pointing at it (100 ms timeout), with its credentials.
    pub fn config(&self) -> RedisConfig {
        RedisConfig {
            address: self.addr.to_string(),
            timeout: Duration::from_millis(100),
            username: self.credentials.as_ref().map(|(u, _)| u.clone()),
            password: self
                .credentials
                .as_ref()
                .map(|(_, p)| Secret::new(p.as_str())),
        }
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some((user, password)) = &self.credentials {
            cmd.args(["--requirepass", password, "--user", user, "on"])
                .arg(format!(">{password}"))
                .args(["~*", "&*", "+@all"]);
        }
        let child = cmd
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

    /// Kills it (it can be started again on the same port).
    pub fn stop(&mut self) {
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
