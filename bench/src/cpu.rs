//! CPU lists (`"1"`, `"0-3,6"`) and pinning threads to CPUs.
//!
//! The benchmark separates the load generator, the proxy and the upstream onto
//! different CPUs; the tools take a `--cpu-list` in the same syntax as
//! `taskset -c` and pin their i-th thread to the i-th CPU (wrapping around).

use thiserror::Error;

/// Why a CPU list could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuListError {
    /// An item is neither a number nor a `low-high` range.
    #[error("invalid CPU list item {0:?} (expected e.g. \"1\" or \"0-3,6\")")]
    InvalidItem(String),
    /// A range whose end is below its start.
    #[error("CPU range {0:?} ends before it starts")]
    ReversedRange(String),
    /// The list names no CPU at all.
    #[error("the CPU list is empty")]
    Empty,
}

/// Parses a `taskset -c` style list (`"0-2,5"`) into CPU ids, in the given order.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, CpuListError> {
    let mut cpus = Vec::new();
    for item in list
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let invalid = || CpuListError::InvalidItem(item.to_owned());
        match item.split_once('-') {
            Some((low, high)) => {
                let low: usize = low.trim().parse().map_err(|_| invalid())?;
                let high: usize = high.trim().parse().map_err(|_| invalid())?;
                if high < low {
                    return Err(CpuListError::ReversedRange(item.to_owned()));
                }
                cpus.extend(low..=high);
            }
            None => cpus.push(item.parse().map_err(|_| invalid())?),
        }
    }
    if cpus.is_empty() {
        return Err(CpuListError::Empty);
    }
    Ok(cpus)
}

/// Pins the calling thread to `cpu`; returns false if the OS refused.
pub fn pin_current_thread(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

/// The CPU that thread number `thread` should be pinned to, if a list was given.
pub fn cpu_for_thread(cpus: Option<&[usize]>, thread: usize) -> Option<usize> {
    cpus.filter(|cpus| !cpus.is_empty())
        .map(|cpus| cpus[thread % cpus.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_cpus_and_ranges() {
        assert_eq!(parse_cpu_list("1"), Ok(vec![1]));
        assert_eq!(parse_cpu_list("0-2,5"), Ok(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list(" 3 , 1 "), Ok(vec![3, 1]));
    }

    #[test]
    fn rejects_bad_lists() {
        assert_eq!(parse_cpu_list(""), Err(CpuListError::Empty));
        assert_eq!(
            parse_cpu_list("a"),
            Err(CpuListError::InvalidItem("a".into()))
        );
        assert_eq!(
            parse_cpu_list("3-1"),
            Err(CpuListError::ReversedRange("3-1".into()))
        );
    }

    #[test]
    fn threads_wrap_around_the_list() {
        let cpus = [4, 5];
        assert_eq!(cpu_for_thread(Some(&cpus), 0), Some(4));
        assert_eq!(cpu_for_thread(Some(&cpus), 3), Some(5));
        assert_eq!(cpu_for_thread(None, 3), None);
    }
}
