//! Placing the gateway in a cgroup v2 of its own, so that `sock_ops` attached
//! there sees the gateway's sockets and no one else's.
//!
//! Unless a cgroup is configured, the gateway creates `hypergate-<pid>` under the
//! cgroup v2 it runs in and moves the whole process (all threads) into it. Empty
//! `hypergate-*` siblings left by earlier runs are removed first (`rmdir` only
//! succeeds on a cgroup without processes, so a running gateway's is never touched).
//! Sockets keep the cgroup they were created in: this must run before any socket
//! the probe should see is opened.

#![allow(
    clippy::disallowed_methods,
    reason = "the probe's cgroup is set up at start-up, before any shard serves"
)]

use super::ProbeError;
use std::fs::File;
use std::path::{Path, PathBuf};

/// `statfs` magic of a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn cgroup_error(path: &Path, reason: impl Into<String>) -> ProbeError {
    ProbeError::Cgroup {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` or, on hybrid
/// systems, `/sys/fs/cgroup/unified`).
fn cgroup2_mount() -> Result<PathBuf, ProbeError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| cgroup_error(Path::new("/proc/self/mountinfo"), e.to_string()))?;
    mountinfo
        .lines()
        .find_map(|line| {
            // `... mount_point options [optional fields] - fstype source super_options`
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| {
            cgroup_error(
                Path::new("/proc/self/mountinfo"),
                "no cgroup2 filesystem is mounted",
            )
        })
}

/// This process's cgroup v2 path, relative to the mount (`0::/a/b` -> `a/b`).
fn current_cgroup() -> Result<PathBuf, ProbeError> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| cgroup_error(Path::new("/proc/self/cgroup"), e.to_string()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
        .ok_or_else(|| {
            cgroup_error(
                Path::new("/proc/self/cgroup"),
                "the process has no cgroup v2 entry",
            )
        })
}

fn is_cgroup2(path: &Path) -> Result<bool, ProbeError> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| cgroup_error(path, "path contains a NUL byte"))?;
    // SAFETY: an all-zero statfs is a valid value for the kernel to fill in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `st` a valid, writable statfs.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(cgroup_error(
            path,
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok(st.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// Removes empty `hypergate-*` cgroups next to where ours goes.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("hypergate-")
        {
            // Fails (EBUSY) while processes are in it: only dead gateways' go.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Moves this process into the configured cgroup, or into a new one of its own, and
/// returns it opened (for attaching) with its path.
pub(super) fn enter(configured: Option<&str>) -> Result<(File, PathBuf), ProbeError> {
    let dir = match configured {
        Some(p) => {
            let path = PathBuf::from(p);
            if !path.is_dir() {
                return Err(cgroup_error(
                    &path,
                    "does not exist (create it, or leave `cgroup` unset)",
                ));
            }
            if !is_cgroup2(&path)? {
                return Err(cgroup_error(&path, "is not on a cgroup v2 filesystem"));
            }
            path
        }
        None => {
            let mount = cgroup2_mount()?;
            let parent = mount.join(current_cgroup()?);
            if !is_cgroup2(&parent)? {
                return Err(cgroup_error(&parent, "is not on a cgroup v2 filesystem"));
            }
            remove_stale(&parent);
            let dir = parent.join(format!("hypergate-{}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(cgroup_error(&dir, format!("cannot create: {e}"))),
            }
            dir
        }
    };
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).map_err(|e| {
        cgroup_error(
            &dir,
            format!("cannot move the process in (cgroup.procs): {e}"),
        )
    })?;
    let file = File::open(&dir).map_err(|e| cgroup_error(&dir, format!("cannot open: {e}")))?;
    Ok((file, dir))
}
