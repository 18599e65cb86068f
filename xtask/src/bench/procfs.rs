//! CPU time and memory of a process tree, read from `/proc`.
//!
//! A proxy may be one process with threads (Hypergate, HAProxy) or a master with
//! worker processes (nginx), so a sample covers the process and all its
//! descendants:
//! - CPU: `utime + stime` (fields 14 and 15 of `/proc/PID/stat`, which already sum
//!   all of a process's threads), in clock ticks of `sysconf(_SC_CLK_TCK)`. The
//!   benchmark samples before and after a run and divides the difference by the
//!   requests completed.
//! - Memory: `VmHWM` (peak resident set over the process's *lifetime*) and `VmRSS`
//!   (resident now) from `/proc/PID/status`, in KiB, summed over the tree.
//!
//! The whole machine's busy CPU time comes from the aggregate `cpu` line of
//! `/proc/stat` ([`machine_busy_ticks`]). It includes work no process is
//! charged for, such as eBPF programs run from softirq or from another
//! process's system call, and everything else running (load generator,
//! upstream, unrelated jobs).

use std::fs;

use anyhow::{bail, Context as _};

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Sum of the processes' peak resident set sizes, in KiB.
    pub peak_rss_kb: u64,
    /// Sum of the processes' current resident set sizes, in KiB.
    pub rss_kb: u64,
}

/// Reads CPU time and memory of `pid` and all its descendants.
pub fn sample_tree(pid: u32) -> anyhow::Result<Sample> {
    let mut total = Sample {
        cpu_ticks: 0,
        peak_rss_kb: 0,
        rss_kb: 0,
    };
    for member in tree(pid)? {
        // A worker may exit between listing and reading; only the root must exist.
        let stat = match fs::read_to_string(format!("/proc/{member}/stat")) {
            Ok(stat) => stat,
            Err(_) if member != pid => continue,
            Err(error) => return Err(error).with_context(|| format!("reading /proc/{pid}/stat")),
        };
        total.cpu_ticks += parse_stat(&stat)?.cpu_ticks;
        if let Ok(status) = fs::read_to_string(format!("/proc/{member}/status")) {
            total.peak_rss_kb += status_kb(&status, "VmHWM:").unwrap_or(0);
            total.rss_kb += status_kb(&status, "VmRSS:").unwrap_or(0);
        }
    }
    Ok(total)
}

/// Busy CPU time of the whole machine since boot, in clock ticks: the sum of
/// user, nice, system, irq and softirq on `/proc/stat`'s `cpu` line (all CPUs).
/// Idle, iowait and steal are left out; guest time is already inside user and
/// nice.
pub fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_busy(&stat)
}

/// The busy ticks of `/proc/stat`'s aggregate `cpu` line.
fn parse_machine_busy(stat: &str) -> anyhow::Result<u64> {
    let fields: Vec<u64> = stat
        .lines()
        .find_map(|line| line.strip_prefix("cpu "))
        .context("no `cpu` line in /proc/stat")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("a field of /proc/stat's `cpu` line")?;
    // user nice system idle iowait irq softirq steal guest guest_nice
    let [user, nice, system, _idle, _iowait, irq, softirq, ..] = fields[..] else {
        bail!("/proc/stat's `cpu` line has fewer than 7 fields");
    };
    Ok(user + nice + system + irq + softirq)
}

/// Clock ticks per second, for converting `cpu_ticks`.
pub fn ticks_per_second() -> anyhow::Result<u64> {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    match u64::try_from(ticks) {
        Ok(ticks) if ticks > 0 => Ok(ticks),
        _ => bail!("sysconf(_SC_CLK_TCK) failed"),
    }
}

/// What `/proc/PID/stat` says that the benchmark needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    parent: u32,
    cpu_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and may
/// contain spaces or parentheses, so fields are counted after the *last* `)`.
fn parse_stat(stat: &str) -> anyhow::Result<Stat> {
    let after_name = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .context("no command name in /proc/PID/stat")?;
    // Field 3 (state) is the first after the name, so field N is at index N - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> anyhow::Result<u64> {
        fields
            .get(number - 3)
            .context("/proc/PID/stat is too short")?
            .parse()
            .with_context(|| format!("field {number} of /proc/PID/stat"))
    };
    Ok(Stat {
        parent: u32::try_from(field(4)?).context("parent pid")?,
        cpu_ticks: field(14)? + field(15)?,
    })
}

/// The value of a `Name:   1234 kB` line of `/proc/PID/status`.
fn status_kb(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `root` and every process descending from it.
fn tree(root: u32) -> anyhow::Result<Vec<u32>> {
    let mut parents = Vec::new();
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let Some(pid) = entry
            .ok()
            .and_then(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Ok(stat) = parse_stat(&stat) {
                parents.push((pid, stat.parent));
            }
        }
    }
    let mut members = vec![root];
    let mut index = 0;
    while index < members.len() {
        let parent = members[index];
        members.extend(
            parents
                .iter()
                .filter(|&&(_, of)| of == parent)
                .map(|&(pid, _)| pid),
        );
        index += 1;
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_names() {
        let stat = "4242 (ngi) nx: (worker)) S 4241 4241 4241 0 -1 4194624 100 0 0 0 \
                    250 75 0 0 20 0 1 0 12345 1000 200 18446744073709551615";
        let parsed = parse_stat(stat).expect("parses");
        assert_eq!(parsed.parent, 4241);
        assert_eq!(parsed.cpu_ticks, 325);
    }

    #[test]
    fn reads_status_sizes() {
        let status = "Name:\tnginx\nVmHWM:\t   12345 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_kb(status, "VmHWM:"), Some(12345));
        assert_eq!(status_kb(status, "VmRSS:"), Some(2048));
        assert_eq!(status_kb(status, "VmSwap:"), None);
    }

    #[test]
    fn machine_busy_time_leaves_idle_iowait_and_steal_out() {
        let stat = "cpu  100 2 30 5000 40 5 6 70 8 0\ncpu0 50 1 15 2500 20 2 3 35 4 0\nintr 1\n";
        assert_eq!(parse_machine_busy(stat).expect("parses"), 143);
        assert!(parse_machine_busy("cpu0 1 2 3\n").is_err());
        assert!(parse_machine_busy("cpu  1 2 3 4\n").is_err());
        let before = machine_busy_ticks().expect("/proc/stat is readable");
        assert!(machine_busy_ticks().expect("readable") >= before);
    }

    #[test]
    fn samples_this_process() {
        let sample = sample_tree(std::process::id()).expect("own process is readable");
        assert!(sample.peak_rss_kb >= sample.rss_kb);
        assert!(sample.rss_kb > 0);
        assert!(ticks_per_second().expect("sysconf works") > 0);
    }
}
