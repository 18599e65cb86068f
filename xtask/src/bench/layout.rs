//! Which CPUs the load generator, the upstream and the proxy get.
//!
//! - `pinned` (the headline): the CPUs this process may use are split into a
//!   generator quarter (at least one), an upstream quarter (at least one) and the
//!   rest for the proxy. With fewer than three CPUs the proxy shares the upstream's
//!   last CPU; on a 2-CPU machine that is: generator on CPU 0, upstream and proxy on
//!   CPU 1. Every process is bound to its set, and each gets one worker per CPU.
//! - `unpinned`: nothing is bound, and each of the three gets one worker per
//!   available CPU, as an untuned deployment would.

use std::fmt;

/// Where one participant runs and how many workers it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// CPUs to bind to; `None` leaves scheduling to the kernel.
    pub cpus: Option<Vec<usize>>,
    /// Worker threads or processes to start.
    pub workers: usize,
}

impl Placement {
    fn pinned(cpus: &[usize]) -> Self {
        Self {
            cpus: Some(cpus.to_vec()),
            workers: cpus.len(),
        }
    }

    fn unpinned(workers: usize) -> Self {
        Self {
            cpus: None,
            workers,
        }
    }

    /// The CPU list in `taskset -c` syntax, or `any`.
    pub fn describe(&self) -> String {
        match &self.cpus {
            Some(cpus) => cpus
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            None => "any".to_owned(),
        }
    }
}

/// The two ways of placing the participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    /// Separate CPU sets, bound.
    Pinned,
    /// No binding at all.
    Unpinned,
}

impl fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pinned => "pinned",
            Self::Unpinned => "unpinned",
        })
    }
}

/// A complete placement of generator, upstream and proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Which layout this is.
    pub kind: LayoutKind,
    /// The load generator (wrk threads).
    pub generator: Placement,
    /// The mock upstream.
    pub upstream: Placement,
    /// The proxy under test.
    pub proxy: Placement,
}

impl Layout {
    /// The layout of `kind` over the CPUs in `available` (which must not be empty).
    pub fn new(kind: LayoutKind, available: &[usize]) -> Self {
        match kind {
            LayoutKind::Unpinned => {
                let workers = available.len().max(1);
                Self {
                    kind,
                    generator: Placement::unpinned(workers),
                    upstream: Placement::unpinned(workers),
                    proxy: Placement::unpinned(workers),
                }
            }
            LayoutKind::Pinned => {
                let count = available.len();
                let quarter = (count / 4).max(1);
                let (generator, rest) = available.split_at(quarter.min(count.saturating_sub(1)));
                let (generator, rest) = if generator.is_empty() {
                    // A single CPU: everyone shares it.
                    (rest, rest)
                } else {
                    (generator, rest)
                };
                let (upstream, proxy) = if rest.len() > quarter {
                    rest.split_at(quarter)
                } else {
                    // Too few CPUs for three sets: the proxy shares the upstream's last.
                    (rest, &rest[rest.len() - 1..])
                };
                Self {
                    kind,
                    generator: Placement::pinned(generator),
                    upstream: Placement::pinned(upstream),
                    proxy: Placement::pinned(proxy),
                }
            }
        }
    }

    /// One line saying where everything runs.
    pub fn describe(&self) -> String {
        format!(
            "{}: generator CPUs {} ({} threads), upstream CPUs {} ({} threads), proxy CPUs {} ({} workers)",
            self.kind,
            self.generator.describe(),
            self.generator.workers,
            self.upstream.describe(),
            self.upstream.workers,
            self.proxy.describe(),
            self.proxy.workers
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(layout: &Placement) -> Vec<usize> {
        layout.cpus.clone().unwrap_or_default()
    }

    #[test]
    fn two_cpus_share_the_second_between_upstream_and_proxy() {
        let layout = Layout::new(LayoutKind::Pinned, &[0, 1]);
        assert_eq!(cpus(&layout.generator), [0]);
        assert_eq!(cpus(&layout.upstream), [1]);
        assert_eq!(cpus(&layout.proxy), [1]);
        assert_eq!(layout.proxy.workers, 1);
    }

    #[test]
    fn many_cpus_split_in_quarters() {
        let available: Vec<usize> = (0..16).collect();
        let layout = Layout::new(LayoutKind::Pinned, &available);
        assert_eq!(cpus(&layout.generator), [0, 1, 2, 3]);
        assert_eq!(cpus(&layout.upstream), [4, 5, 6, 7]);
        assert_eq!(cpus(&layout.proxy), (8..16).collect::<Vec<_>>());
        assert_eq!(layout.proxy.workers, 8);
    }

    #[test]
    fn three_and_one_cpus() {
        let layout = Layout::new(LayoutKind::Pinned, &[2, 5, 7]);
        assert_eq!(cpus(&layout.generator), [2]);
        assert_eq!(cpus(&layout.upstream), [5]);
        assert_eq!(cpus(&layout.proxy), [7]);
        let layout = Layout::new(LayoutKind::Pinned, &[3]);
        assert_eq!(cpus(&layout.generator), [3]);
        assert_eq!(cpus(&layout.upstream), [3]);
        assert_eq!(cpus(&layout.proxy), [3]);
    }

    #[test]
    fn unpinned_gives_everyone_every_cpu() {
        let layout = Layout::new(LayoutKind::Unpinned, &[0, 1]);
        assert_eq!(layout.proxy, Placement::unpinned(2));
        assert_eq!(layout.generator, Placement::unpinned(2));
    }
}
