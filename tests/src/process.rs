//! The `hypergate` binary as a child process, for signal, drain and CLI tests.
//!
//! [`hypergate_bin`] finds the binary in the same target directory as the
//! running test executable (`.../debug/deps/<test>` -> `.../debug/hypergate`)
//! and runs `cargo build -p hypergate --bin hypergate` once per test process
//! (a no-op when it is up to date), so the tests never run a stale binary.
//! [`GatewayProcess::spawn`] starts `hypergate run --config FILE` with
//! `NO_COLOR=1`, reads its stderr on a thread, and learns the data and admin
//! addresses from the `listening` and `admin listening` log lines (ANSI escapes
//! are stripped in case colours are on anyway).

use crate::util::TempDir;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root (parent of this package's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of the `hypergate` binary built from the current sources.
pub fn hypergate_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // .../<target>/<profile>/deps/<test binary>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("profile dir has a parent");
        let bin = profile_dir.join("hypergate");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "-p", "hypergate", "--bin", "hypergate"])
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd
            .output()
            .expect("run cargo build for the hypergate binary");
        assert!(
            out.status.success(),
            "cargo build -p hypergate --bin hypergate failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
        bin
    })
    .clone()
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The value after `key=` in a log line (up to the next space).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("{key}=");
    let start = line.find(&pat)? + pat.len();
    line[start..].split_whitespace().next()
}

/// A running `hypergate run` child process; killed when dropped if still running.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    /// First data-plane listener address.
    pub addr: SocketAddr,
    /// Admin listener address.
    pub admin: SocketAddr,
    /// The config file it was started with (rewrite it, then send SIGHUP).
    pub config_path: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl GatewayProcess {
    /// Starts `hypergate run --config <file with toml>` and waits until it listens.
    pub fn spawn(toml: &str) -> GatewayProcess {
        Self::spawn_with(&hypergate_bin(), toml)
    }

    /// The same with another build of the binary (e.g. one with the `ebpf` feature).
    pub fn spawn_with(bin: &std::path::Path, toml: &str) -> GatewayProcess {
        let dir = TempDir::new();
        let config_path = dir.write("gateway.toml", toml);
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hypergate");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(strip_ansi(&line));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (addr, admin) = loop {
            {
                let lines = log.lock().unwrap_or_else(|e| e.into_inner());
                let data = lines
                    .iter()
                    .find(|l| l.contains("listening") && l.contains("listener="))
                    .and_then(|l| field(l, "addr")?.parse().ok());
                let admin = lines
                    .iter()
                    .find(|l| l.contains("admin listening"))
                    .and_then(|l| field(l, "admin_addr")?.parse().ok());
                if let (Some(d), Some(a)) = (data, admin) {
                    break (d, a);
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "hypergate exited ({status}) before listening:\n{}",
                    log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "hypergate did not log its addresses in time:\n{}",
                    log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        GatewayProcess {
            child,
            addr,
            admin,
            config_path,
            log,
            _dir: dir,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `libc::SIGHUP`).
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with the pid of our own, not yet reaped child and a valid
        // signal number only delivers the signal; it touches no memory of ours.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stderr lines so far (ANSI stripped).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `hypergate <args>` to completion; returns (status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(hypergate_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run hypergate");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    )
}
