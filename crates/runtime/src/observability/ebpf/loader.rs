//! Loading the embedded probe object with aya and reading its maps.
//!
//! The object is `include_bytes!`'d from the path `build.rs` puts in
//! `HYPERGATE_EBPF_OBJECT` (by default `ebpf/probe/target/.../hypergate-probe`, as
//! built by `cargo xtask build-ebpf`). Order in [`load`]: check BTF, load the object
//! and its programs (the privilege check), set the sample period, enter the cgroup,
//! attach `sock_ops` there, attach the `tp_btf` programs. Any failure drops what was
//! loaded, which detaches it.

use super::aggregate::{Aggregates, ProbeHealth};
use super::cgroup;
use super::control::KernelSource;
use super::ProbeError;
use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{BtfTracePoint, CgroupAttachMode, SockOps};
use aya::{Btf, Ebpf, EbpfLoader};
use hypergate_ebpf_common::{
    maps, programs, Event, PeerCounters, PeerKey, SETTING_RTT_SAMPLE_PERIOD_NS, STAT_EVENTS_LOST,
    STAT_TRACK_FAILURES,
};
use std::time::Duration;

/// The probe object, built by `cargo xtask build-ebpf` (see `build.rs`).
static PROBE_OBJECT: &[u8] = include_bytes!(env!("HYPERGATE_EBPF_OBJECT"));

/// The `tp_btf` programs and their tracepoints.
const TRACEPOINTS: [(&str, &str); 4] = [
    (programs::RETRANSMIT, "tcp_retransmit_skb"),
    (programs::SEND_RESET, "tcp_send_reset"),
    (programs::RECEIVE_RESET, "tcp_receive_reset"),
    (programs::SET_STATE, "inet_sock_set_state"),
];

/// The loaded probe: keeps programs attached and reads the maps.
pub(super) struct AyaSource {
    /// Owns the programs and their links; dropping it detaches everything.
    _ebpf: Ebpf,
    events: RingBuf<MapData>,
    counters: PerCpuHashMap<MapData, PeerKey, PeerCounters>,
    stats: PerCpuArray<MapData, u64>,
}

fn is_permission(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return true;
            }
        }
        let text = err.to_string();
        if text.contains("Operation not permitted") {
            return true;
        }
        cur = err.source();
    }
    false
}

fn kernel_error(what: &str, e: impl std::error::Error + 'static) -> ProbeError {
    let mut detail = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    if is_permission(&e) {
        ProbeError::Permission {
            what: what.to_string(),
            detail,
        }
    } else {
        ProbeError::Kernel {
            what: what.to_string(),
            detail,
        }
    }
}

/// Lifts RLIMIT_MEMLOCK for kernels that still charge BPF memory to it (< 5.11).
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; failure is harmless (newer
    // kernels account BPF memory to the cgroup instead).
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or_else(|| ProbeError::Kernel {
        what: format!("find map {name}"),
        detail: "missing from the probe object (stale build? run `cargo xtask build-ebpf`)".into(),
    })
}

/// Loads and attaches everything; see the module docs for the order.
pub(super) fn load(
    cgroup_path: Option<&str>,
    sample_period: Duration,
) -> Result<AyaSource, ProbeError> {
    let btf = Btf::from_sys_fs()
        .map_err(|e| ProbeError::NoBtf(format!("/sys/kernel/btf/vmlinux: {e}")))?;
    raise_memlock();
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .load(PROBE_OBJECT)
        .map_err(|e| kernel_error("load the probe's maps", e))?;

    let sock_ops: &mut SockOps = ebpf
        .program_mut(programs::SOCK_OPS)
        .ok_or_else(|| ProbeError::Kernel {
            what: "find the sock_ops program".into(),
            detail: "missing from the probe object".into(),
        })?
        .try_into()
        .map_err(|e| kernel_error("use the sock_ops program", e))?;
    sock_ops
        .load()
        .map_err(|e| kernel_error("load the sock_ops program", e))?;
    for (name, tracepoint) in TRACEPOINTS {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| ProbeError::Kernel {
                what: format!("find program {name}"),
                detail: "missing from the probe object".into(),
            })?
            .try_into()
            .map_err(|e| kernel_error(&format!("use program {name}"), e))?;
        program
            .load(tracepoint, &btf)
            .map_err(|e| kernel_error(&format!("load tp_btf/{tracepoint}"), e))?;
    }

    let mut settings: Array<MapData, u64> =
        Array::try_from(take_map(&mut ebpf, maps::SETTINGS)?)
            .map_err(|e| kernel_error("open the settings map", e))?;
    let period_ns = u64::try_from(sample_period.as_nanos()).unwrap_or(u64::MAX);
    settings
        .set(SETTING_RTT_SAMPLE_PERIOD_NS, period_ns, 0)
        .map_err(|e| kernel_error("write the settings map", e))?;

    let (cgroup_file, cgroup_dir) = cgroup::enter(cgroup_path)?;
    let sock_ops: &mut SockOps = ebpf
        .program_mut(programs::SOCK_OPS)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| ProbeError::Kernel {
            what: "find the sock_ops program".into(),
            detail: "missing from the probe object".into(),
        })?;
    // A bpf_link (kernel >= 5.7) never blocks other programs on the cgroup, and
    // link_create rejects the legacy ALLOW_MULTI flag: the default mode is right.
    sock_ops
        .attach(&cgroup_file, CgroupAttachMode::Single)
        .map_err(|e| kernel_error(&format!("attach sock_ops to {}", cgroup_dir.display()), e))?;
    for (name, tracepoint) in TRACEPOINTS {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| ProbeError::Kernel {
                what: format!("find program {name}"),
                detail: "missing from the probe object".into(),
            })?;
        program
            .attach()
            .map_err(|e| kernel_error(&format!("attach tp_btf/{tracepoint}"), e))?;
    }

    let events = RingBuf::try_from(take_map(&mut ebpf, maps::EVENTS)?)
        .map_err(|e| kernel_error("open the events ring buffer", e))?;
    let counters = PerCpuHashMap::try_from(take_map(&mut ebpf, maps::COUNTERS)?)
        .map_err(|e| kernel_error("open the counters map", e))?;
    let stats = PerCpuArray::try_from(take_map(&mut ebpf, maps::PROBE_STATS)?)
        .map_err(|e| kernel_error("open the probe stats map", e))?;
    tracing::info!(
        cgroup = %cgroup_dir.display(),
        sample_period = ?sample_period,
        "eBPF TCP probe attached (sock_ops on the cgroup, tp_btf: retransmits, resets, state changes)"
    );
    Ok(AyaSource {
        _ebpf: ebpf,
        events,
        counters,
        stats,
    })
}

impl AyaSource {
    fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum())
    }
}

impl KernelSource for AyaSource {
    fn drain(&mut self, agg: &mut Aggregates) {
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<Event>() {
                // SAFETY: the probe writes whole `Event`s (repr(C), plain integers) into
                // the ring buffer and the length was checked; the read is unaligned-safe.
                let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                agg.record(&event);
            }
        }
        for entry in self.counters.iter().flatten() {
            let (key, per_cpu) = entry;
            let mut sum = PeerCounters::default();
            for c in per_cpu.iter() {
                sum.add(c);
            }
            agg.set_counters(key, sum);
        }
        agg.set_health(ProbeHealth {
            events_lost: self.stat(STAT_EVENTS_LOST),
            untracked: self.stat(STAT_TRACK_FAILURES),
        });
    }
}
