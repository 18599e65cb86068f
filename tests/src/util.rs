//! Small test utilities: polling with a deadline, temporary directories, free ports.
//!
//! Tests synchronise by polling a condition until a deadline ([`wait_until`])
//! instead of sleeping for a guessed time, so a slow machine makes a test slower,
//! not flaky, and a real bug makes it fail with a message instead of hanging.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default limit for one socket read or write in the harness.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `condition` every 10 ms until it holds; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory.
    pub fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "hypergate-tests-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An address on 127.0.0.1 where nothing listens: bound to an ephemeral port, then closed.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    l.local_addr().expect("local addr")
}

/// Asserts two byte strings are equal, reporting lengths and the first
/// differing offset instead of dumping both.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |b: &[u8]| {
        String::from_utf8_lossy(&b[first.min(b.len())..(first + 40).min(b.len())]).into_owned()
    };
    panic!(
        "{what}: {} bytes received, {} expected; first difference at offset {first}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}
