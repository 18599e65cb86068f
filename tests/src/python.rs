//! Python clients with official SDKs (`openai`, `anthropic`, `opentelemetry-sdk`)
//! as real clients of the gateway: each script in `tests/python/` takes the
//! gateway's address, prints one JSON line with what it observed, and runs
//! under a deadline.
//!
//! The interpreter is `$HYPERGATE_PYTHON` (set by `.ci/run`), else the venv
//! `.ci/run` creates at `~/.cache/hypergate/pyenv` from
//! `tests/python/requirements.txt`; without either the tests fail and say to
//! run `bash .ci/run`.

use serde_json::Value;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a client script may run (a few calls, each answered in
/// milliseconds; interpreter start-up and SDK imports take most of it).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);

/// The Python interpreter with the SDKs installed.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("HYPERGATE_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "HYPERGATE_PYTHON={} does not exist; run `bash .ci/run` to create the SDK venv",
            p.display()
        );
        return p;
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    let default = Path::new(&home).join(".cache/hypergate/pyenv/bin/python");
    assert!(
        default.exists(),
        "no Python with the openai and anthropic SDKs: HYPERGATE_PYTHON is unset and {} \
         does not exist; run `bash .ci/run`, which creates it from tests/python/requirements.txt",
        default.display()
    );
    default
}

/// Runs `tests/python/<script> <gateway> <args...>` and returns the JSON line it printed.
pub fn run_script(script: &str, gateway: SocketAddr, args: &[&str]) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let mut cmd = Command::new(python());
    cmd.arg(dir.join(script))
        .arg(gateway.to_string())
        .args(args)
        .current_dir(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The SDKs' HTTP client honours proxy variables; the gateway is local.
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        cmd.env_remove(var).env_remove(var.to_ascii_lowercase());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {script} with {}: {e}", python().display()));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the script") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{script} ran past {SCRIPT_DEADLINE:?}; stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    assert!(
        status.success(),
        "{script} failed ({status}); stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    line.and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!("{script} printed no JSON line; stdout:\n{stdout}\nstderr:\n{stderr}")
        })
}

/// A Python server (`tests/python/<script>`) that prints `{"port": N}` once
/// it listens on 127.0.0.1 and serves until its stdin closes (on drop).
pub struct Server {
    child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `script` (with `args`) and waits for its port line.
    pub fn start(script: &str, args: &[&std::ffi::OsStr]) -> Server {
        use std::io::BufRead;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
        let mut child = Command::new(python())
            .arg(dir.join(script))
            .args(args)
            .current_dir(&dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        // The first line is the port; the read ends when the server prints
        // it or exits.
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the port line");
        let port = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .unwrap_or_else(|| panic!("{script} printed no port: {line:?}"));
        Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port as u16)),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if self.child.try_wait().ok().flatten().is_none() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
