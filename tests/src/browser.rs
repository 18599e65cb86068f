//! Headless Chromium driven over the DevTools protocol, for tests of web pages.
//!
//! [`Browser::launch`] starts Debian's `chromium` with `--remote-debugging-pipe`:
//! the protocol runs over the child's file descriptors 3 (commands in) and 4
//! (replies and events out) as NUL-terminated JSON messages, so no port is
//! opened and nothing else can attach. A reader thread forwards every message
//! on a channel; each call waits at most [`CALL_LIMIT`] for its reply. The
//! browser opens one page target and enables the `Runtime`, `Log` and `Page`
//! domains on it, and while it waits for replies it records every problem the
//! page shows on its console: uncaught exceptions, `console.error` and
//! `console.assert` calls, and browser log entries at level `error` (failed
//! loads, HTTP errors of fetches, Content-Security-Policy violations). The
//! page runs in real time, so timers and rates behave as in a user's browser.

use crate::util::TempDir;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Where Debian's `chromium` package installs the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Longest wait for the reply to one protocol command.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);

/// A headless Chromium with one page; closed (then killed if need be) when dropped.
pub struct Browser {
    child: Child,
    commands: File,
    messages: Receiver<Value>,
    session: String,
    next_id: u64,
    problems: Vec<String>,
    log: PathBuf,
    _profile: TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("pid", &self.child.id())
            .field("problems", &self.problems)
            .finish()
    }
}

/// A pipe as (read end, write end), both close-on-exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array it is given, which
    // has room for exactly two.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created by pipe2 and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Starts headless Chromium with a fresh profile and a `width` x `height` page.
    /// Panics when the browser is not installed, saying how to get it.
    pub fn launch(width: u32, height: u32) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} not found: browser tests need Debian's `chromium` package, which .ci/run installs"
        );
        let profile = TempDir::new();
        let log = profile.path().join("chromium.log");
        let (child_in, commands) = pipe();
        let (events, child_out) = pipe();
        let (fd_in, fd_out) = (child_in.as_raw_fd(), child_out.as_raw_fd());
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("create the chromium log"));
        // SAFETY: between fork and exec the closure only calls fcntl, dup2 and close,
        // which are async-signal-safe, on descriptors that are open in the child. It
        // first copies both pipe ends above 10 so that placing them on 3 and 4 cannot
        // clobber one with the other; dup2's copies are not close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                let high_in = libc::fcntl(fd_in, libc::F_DUPFD, 10);
                let high_out = libc::fcntl(fd_out, libc::F_DUPFD, 10);
                if high_in < 0
                    || high_out < 0
                    || libc::dup2(high_in, 3) < 0
                    || libc::dup2(high_out, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(high_in);
                libc::close(high_out);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        // The child has its copies; dropping ours lets EOF through when it exits.
        drop((child_in, child_out));
        let (tx, messages) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(File::from(events));
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&message) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                message.clear();
            }
        });
        let mut browser = Browser {
            child,
            commands: File::from(commands),
            messages,
            session: String::new(),
            next_id: 0,
            problems: Vec::new(),
            log,
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("attachToTarget returns a session")
            .to_string();
        for domain in ["Runtime", "Log", "Page"] {
            browser.call(&format!("{domain}.enable"), json!({}));
        }
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    /// Sends one command (to the page once attached) and returns its result;
    /// panics on a protocol error or after [`CALL_LIMIT`].
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = self.session.clone().into();
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("send {method} to chromium: {e}"));
        let deadline = Instant::now() + CALL_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = match self.messages.recv_timeout(left) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "chromium did not answer {method} within {CALL_LIMIT:?}; its log ends:\n{}",
                    self.log_tail()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "chromium exited while answering {method}; its log ends:\n{}",
                    self.log_tail()
                ),
            };
            if reply["id"] != id {
                self.observe(&reply);
                continue;
            }
            if let Some(error) = reply.get("error") {
                panic!("chromium refused {method}: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Records a console or log problem carried by an event.
    fn observe(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str().unwrap_or("") {
            "Runtime.exceptionThrown" => {
                let details = &params["exceptionDetails"];
                let what = details["exception"]["description"]
                    .as_str()
                    .or(details["text"].as_str())
                    .unwrap_or("exception");
                self.problems.push(format!(
                    "uncaught: {what} ({}:{})",
                    details["url"].as_str().unwrap_or("?"),
                    details["lineNumber"]
                ));
            }
            "Runtime.consoleAPICalled"
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                let args: Vec<String> = params["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| x.get("value").unwrap_or(&x["description"]).to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                self.problems.push(format!(
                    "console.{}: {}",
                    params["type"].as_str().unwrap_or("error"),
                    args.join(" ")
                ));
            }
            "Log.entryAdded" if params["entry"]["level"] == "error" => {
                let entry = &params["entry"];
                self.problems.push(format!(
                    "{} error: {} ({})",
                    entry["source"].as_str().unwrap_or("browser"),
                    entry["text"].as_str().unwrap_or(""),
                    entry["url"].as_str().unwrap_or("")
                ));
            }
            _ => {}
        }
    }

    /// Opens `url` in the page (returns once the navigation is committed).
    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        if let Some(error) = r.get("errorText") {
            panic!("navigating to {url} failed: {error}");
        }
    }

    /// The value of a JavaScript expression in the page (awaited when it is a promise);
    /// panics when it throws.
    pub fn evaluate(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(details) = r.get("exceptionDetails") {
            panic!("{expression} threw: {details}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` every 100 ms until `accept` holds for its value;
    /// panics with the last value after `limit`.
    pub fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        expression: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.evaluate(expression);
            if accept(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; `{expression}` is {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the whole page, beyond the window's height.
    pub fn screenshot_png(&mut self) -> Vec<u8> {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let r = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            }),
        );
        decode_base64(r["data"].as_str().expect("captureScreenshot returns data"))
    }

    /// The last lines of Chromium's own log (its stderr), for failure messages;
    /// its D-Bus complaints, normal in containers, are left out.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("dbus")).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Everything the page showed on its console as an error so far.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .commands
            .write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (with padding) to bytes; panics on other characters.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for quad in text.trim_end_matches('=').as_bytes().chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            bits |= value(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&bits.to_be_bytes()[1..quad.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("aGVsbG8="), b"hello");
        assert_eq!(decode_base64("aGVsbG8h"), b"hello!");
        assert_eq!(decode_base64("aGk="), b"hi");
        assert_eq!(decode_base64("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
        assert_eq!(decode_base64(""), b"");
    }
}
