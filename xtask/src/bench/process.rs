//! Child processes that cannot outlive the benchmark, and the scratch directory.
//!
//! Every process the benchmark starts (upstream, proxies, wrk) is a [`Guarded`]:
//! - it runs in its own process group, so stopping it also stops the workers it
//!   forks (nginx), and a terminal's Ctrl-C reaches only this process, which then
//!   stops everything in order;
//! - it is bound to its CPU set before `exec` (like `taskset -c`), and asks the
//!   kernel to SIGKILL it should this process die without cleaning up;
//! - dropping the guard sends SIGTERM to the group, waits briefly, then SIGKILLs it,
//!   so children die on success, on error (`?` unwinding) and on Ctrl-C alike.
//!
//! Ctrl-C, SIGTERM and SIGHUP only raise a flag ([`Interrupt`]) that the waiting
//! loops poll; a second Ctrl-C exits at once.

use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

/// How often the waiting loops look at the child and the interrupt flag.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Set once the user asked the benchmark to stop.
#[derive(Debug, Clone)]
pub struct Interrupt {
    raised: Arc<AtomicBool>,
}

impl Interrupt {
    /// Routes SIGINT, SIGTERM and SIGHUP into the flag; a second SIGINT exits.
    pub fn install() -> anyhow::Result<Self> {
        let raised = Arc::new(AtomicBool::new(false));
        for signal in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            // Order matters: the shutdown check sees the flag as it was before
            // this delivery, so only a repeated signal exits immediately.
            signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&raised))?;
            signal_hook::flag::register(signal, Arc::clone(&raised))?;
        }
        Ok(Self { raised })
    }

    /// Fails if the user asked to stop.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.raised.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Sleeps for `duration`, waking early (with an error) on interrupt.
    pub fn sleep(&self, duration: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + duration;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }
}

/// Where a child's output goes.
#[derive(Debug)]
pub struct Output {
    /// File for stdout.
    pub stdout: PathBuf,
    /// File for stderr (may be the same as stdout).
    pub stderr: PathBuf,
}

impl Output {
    /// Both streams into one file.
    pub fn combined(path: PathBuf) -> Self {
        Self {
            stdout: path.clone(),
            stderr: path,
        }
    }
}

/// A running child process that is stopped when the guard drops.
#[derive(Debug)]
pub struct Guarded {
    name: String,
    child: std::process::Child,
    output: Output,
    exited: Option<ExitStatus>,
}

impl Guarded {
    /// Starts `command` as `name`, bound to `cpus` if given, with output to files.
    pub fn spawn(
        name: &str,
        mut command: Command,
        cpus: Option<&[usize]>,
        output: Output,
    ) -> anyhow::Result<Self> {
        let stdout = File::create(&output.stdout)
            .with_context(|| format!("creating {}", output.stdout.display()))?;
        let stderr = if output.stderr == output.stdout {
            stdout.try_clone()?
        } else {
            File::create(&output.stderr)
                .with_context(|| format!("creating {}", output.stderr.display()))?
        };
        let mask = cpus.map(cpu_mask).transpose()?;
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe calls are allowed: it makes two plain syscalls (prctl,
        // sched_setaffinity) on data prepared before the fork, takes no locks and
        // allocates nothing (`last_os_error` only reads errno).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(mask) = &mask {
                    let size = std::mem::size_of::<libc::cpu_set_t>();
                    if libc::sched_setaffinity(0, size, mask) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            output,
            exited: None,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of its output, if the child has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.poll_exit()? {
            bail!(
                "{} exited ({status}); its output ends with:\n{}",
                self.name,
                self.output_tail()
            );
        }
        Ok(())
    }

    /// Waits until the child exits or `until` passes (`None`), failing on interrupt.
    pub fn wait_for(
        &mut self,
        until: Instant,
        interrupt: &Interrupt,
    ) -> anyhow::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.poll_exit()? {
                return Ok(Some(status));
            }
            interrupt.check()?;
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            thread::sleep(POLL_INTERVAL.min(until - now));
        }
    }

    /// The last lines the child wrote to stderr (or the combined log).
    pub fn output_tail(&self) -> String {
        tail_of_file(&self.output.stderr, 2048)
    }

    fn poll_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("checking on {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Stops the child and everything in its process group.
    fn stop(&mut self) {
        if self.exited.is_some() {
            // Already reaped (it finished, like wrk): its id may belong to someone else.
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        let signal_group = |signal| {
            // SAFETY: kill(2) on our own child's process group (created with
            // process_group(0), so its id is the child's pid); no memory is involved.
            unsafe { libc::kill(-pid, signal) == 0 }
        };
        if signal_group(libc::SIGTERM) {
            let deadline = Instant::now() + STOP_GRACE;
            loop {
                // Reap the leader as soon as it exits: a zombie still counts as a
                // group member, and signal 0 only asks whether any member is left.
                let _ = self.child.try_wait();
                if !signal_group(0) {
                    break;
                }
                if Instant::now() >= deadline {
                    signal_group(libc::SIGKILL);
                    break;
                }
                thread::sleep(POLL_INTERVAL);
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `limit` bytes of a text file, or a note that it could not be read.
pub fn tail_of_file(path: &Path, limit: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(limit)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|error| format!("(cannot read {}: {error})", path.display()))
}

fn cpu_mask(cpus: &[usize]) -> anyhow::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array, for which all-zero is the empty set.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            bail!("CPU {cpu} is beyond what a cpu_set_t can hold");
        }
        // SAFETY: `cpu` was checked to be inside the set's bounds just above.
        unsafe { libc::CPU_SET(cpu, &mut mask) };
    }
    Ok(mask)
}

/// The CPUs this process may run on, in ascending order.
pub fn available_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: all-zero is a valid (empty) cpu_set_t.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the kernel writes at most `size` bytes into `mask`, which is that big.
    if unsafe { libc::sched_getaffinity(0, size, &mut mask) } != 0 {
        return Err(io::Error::last_os_error()).context("sched_getaffinity");
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: every index is below CPU_SETSIZE, the set's size.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &mask) })
        .collect();
    if cpus.is_empty() {
        return Err(anyhow!("this process may run on no CPU at all"));
    }
    Ok(cpus)
}

/// A directory for configs, logs and pid files, deleted when the run succeeds.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn create() -> anyhow::Result<Self> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let path =
            std::env::temp_dir().join(format!("hypergate-bench-{}-{stamp}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: true })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the run as clean: the directory is removed when dropped.
    pub fn discard_on_drop(&mut self) {
        self.keep = false;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "bench: configs and logs kept in {} for inspection",
                self.path.display()
            );
        } else if let Err(error) = fs::remove_dir_all(&self.path) {
            eprintln!("bench: could not remove {}: {error}", self.path.display());
        }
    }
}
