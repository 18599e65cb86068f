//! Hypergate's kernel TCP probe: per-connection state and per-peer counters for the
//! gateway's own sockets, aggregated in the kernel.
//!
//! Programs (names in `hypergate_ebpf_common::programs`):
//! 1. `sock_ops`, attached to the gateway's cgroup v2, so it only ever sees the
//!    gateway's sockets. It records a SYN's arrival (request socket, `TIMEOUT_INIT`),
//!    an upstream `connect()` (`TCP_CONNECT_CB`), creates the connection's
//!    [`ConnState`] at `ACTIVE_/PASSIVE_ESTABLISHED` (sending the handshake time),
//!    sends at most one smoothed-RTT sample per connection per sample period from
//!    the per-ACK `RTT_CB`, and at `STATE_CB -> CLOSE` sends lifetime and final RTT
//!    and counts bytes.
//! 2. `tp_btf` programs on `tcp_retransmit_skb`, `tcp_send_reset`,
//!    `tcp_receive_reset` and `inet_sock_set_state` see every TCP socket on the
//!    host; each looks the socket's cookie up in `CONNS` (filled only by step 1)
//!    and ignores sockets that are not there.
//!
//! Counters are per-CPU map values updated with atomic adds (a softirq can run a
//! program on the same CPU while a process-context one is mid-update). Latency
//! samples go to user space on a ring buffer; a full ring is counted, never waited on.
//!
//! Entry points are thin: each calls a `try_*` function and ignores its error,
//! because a probe must never change what the kernel does with the connection.
#![no_std]
#![no_main]
// `atomic_xadd`: see `add`.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::bindings::{
    BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB,
    BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TIMEOUT_INIT, BPF_TCP_CLOSE, BPF_TCP_CLOSE_WAIT,
    BPF_TCP_ESTABLISHED, BPF_TCP_FIN_WAIT1,
};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::helpers::generated::bpf_get_socket_cookie;
use aya_ebpf::macros::{btf_tracepoint, map, sock_ops};
use aya_ebpf::maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf};
use aya_ebpf::programs::{BtfTracePointContext, SockOpsContext};
use core::ffi::c_void;
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use hypergate_ebpf_common::{
    ConnState, Event, PeerCounters, PeerKey, SynKey, EVENT_CLOSE, EVENT_HANDSHAKE,
    EVENT_RTT_SAMPLE, FAMILY_INET, FAMILY_INET6, PROBE_STATS_LEN, SETTINGS_LEN,
    SETTING_RTT_SAMPLE_PERIOD_NS, SIDE_DOWNSTREAM, SIDE_UPSTREAM, STAT_EVENTS_LOST,
    STAT_TRACK_FAILURES,
};

/// Live connections of the gateway, by socket cookie. LRU so that a socket whose
/// close was never seen cannot fill the map for good.
#[map]
static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65_536, 0);

/// Recently closed connections (an abortive close sends its RST after CLOSE).
#[map]
static CLOSED: LruHashMap<u64, PeerKey> = LruHashMap::with_max_entries(16_384, 0);

/// SYN arrival times of downstream handshakes in progress.
#[map]
static SYN_TIMES: LruHashMap<SynKey, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Cumulative counters per peer (listener port or upstream endpoint).
#[map]
static COUNTERS: PerCpuHashMap<PeerKey, PeerCounters> = PerCpuHashMap::with_max_entries(4_096, 0);

/// Latency samples for user space.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Settings written by the loader, see `SETTING_*`.
#[map]
static SETTINGS: Array<u64> = Array::with_max_entries(SETTINGS_LEN, 0);

/// The probe's own health counters, see `STAT_*`.
#[map]
static PROBE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_STATS_LEN, 0);

/// `sock_ops` return value that leaves the kernel's behaviour unchanged.
const SOCK_OPS_OK: u32 = 1;

#[sock_ops]
pub fn hypergate_sock_ops(ctx: SockOpsContext) -> u32 {
    let _ = try_sock_ops(&ctx);
    SOCK_OPS_OK
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn hypergate_tcp_retransmit(ctx: BtfTracePointContext) -> i32 {
    let _ = try_count_live(&ctx, |c| &mut c.retransmits);
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn hypergate_tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    let _ = try_count_reset(&ctx, true);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn hypergate_tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let _ = try_count_reset(&ctx, false);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn hypergate_inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let _ = try_set_state(&ctx);
    0
}

/// Nanoseconds since boot (`CLOCK_MONOTONIC`).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Adds `n` to a counter that another program on this CPU may update concurrently.
#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    // The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` does not
    // exist there; the intrinsic lowers to the BPF atomic add instruction.
    // SAFETY: `counter` is a valid, aligned u64 (a field of a map value).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

fn bump_stat(index: u32) {
    if let Some(p) = PROBE_STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup.
        add(unsafe { &mut *p }, 1);
    }
}

/// Runs `f` on this CPU's counters of `key`, creating them on first use.
#[inline(always)]
fn with_counters(key: &PeerKey, f: impl FnOnce(&mut PeerCounters)) {
    let mut p = COUNTERS.get_ptr_mut(key);
    if p.is_none() {
        // BPF_NOEXIST: two CPUs racing to create the entry must not wipe each other.
        let _ = COUNTERS.insert(key, PeerCounters::default(), 1);
        p = COUNTERS.get_ptr_mut(key);
    }
    match p {
        // SAFETY: the pointer comes from a successful map lookup; the value is this
        // CPU's copy and every field is only updated with atomic adds.
        Some(p) => f(unsafe { &mut *p }),
        None => bump_stat(STAT_TRACK_FAILURES),
    }
}

fn emit(key: &PeerKey, kind: u32, value: u64, value2: u64) {
    let event = Event {
        key: *key,
        kind,
        _pad: 0,
        value,
        value2,
    };
    if EVENTS.output::<Event>(&event, 0).is_err() {
        bump_stat(STAT_EVENTS_LOST);
    }
}

fn cookie_of_ops(ctx: &SockOpsContext) -> u64 {
    // SAFETY: a sock_ops context is a valid argument for bpf_get_socket_cookie.
    unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) }
}

fn family_of(ctx: &SockOpsContext) -> Option<u8> {
    match ctx.family() {
        2 => Some(FAMILY_INET),
        10 => Some(FAMILY_INET6),
        _ => None,
    }
}

/// Reads an IPv6 address field of the context one word at a time: the verifier only
/// accepts context loads at a constant offset from the unmodified context pointer,
/// and copying the array whole makes LLVM advance the pointer first.
fn read_ip6(words: *const [u32; 4]) -> [u32; 4] {
    let w = words as *const u32;
    // SAFETY: `words` points at a `[u32; 4]` inside the sock_ops context.
    unsafe {
        [
            core::ptr::read_volatile(w),
            core::ptr::read_volatile(w.add(1)),
            core::ptr::read_volatile(w.add(2)),
            core::ptr::read_volatile(w.add(3)),
        ]
    }
}

fn remote_addr(ctx: &SockOpsContext, family: u8) -> [u32; 4] {
    if family == FAMILY_INET {
        [ctx.remote_ip4(), 0, 0, 0]
    } else {
        // SAFETY: taking the address of a field of the context the kernel handed us.
        read_ip6(unsafe { core::ptr::addr_of!((*ctx.ops).remote_ip6) })
    }
}

fn local_addr(ctx: &SockOpsContext, family: u8) -> [u32; 4] {
    if family == FAMILY_INET {
        [ctx.local_ip4(), 0, 0, 0]
    } else {
        // SAFETY: as in `remote_addr`.
        read_ip6(unsafe { core::ptr::addr_of!((*ctx.ops).local_ip6) })
    }
}

/// `remote_port` holds the network-order port in its upper 16 bits on little endian.
fn remote_port(ctx: &SockOpsContext) -> u16 {
    u32::from_be(ctx.remote_port()) as u16
}

fn syn_key(ctx: &SockOpsContext, family: u8) -> SynKey {
    SynKey {
        family,
        _pad: 0,
        local_port: ctx.local_port() as u16,
        remote_port: remote_port(ctx),
        _pad2: 0,
        local_addr: local_addr(ctx, family),
        remote_addr: remote_addr(ctx, family),
    }
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), i64> {
    match ctx.op() {
        BPF_SOCK_OPS_TIMEOUT_INIT => on_syn_received(ctx),
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(ctx, SIDE_UPSTREAM),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_established(ctx, SIDE_DOWNSTREAM),
        BPF_SOCK_OPS_RTT_CB => on_rtt(ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_close(ctx),
        _ => Ok(()),
    }
}

/// `TIMEOUT_INIT` runs for the request socket when a SYN reaches one of the
/// gateway's listeners (and for full sockets on `connect()`, ignored here).
fn on_syn_received(ctx: &SockOpsContext) -> Result<(), i64> {
    // SAFETY: reading a field of the sock_ops context the kernel handed us.
    if unsafe { (*ctx.ops).is_fullsock } != 0 {
        return Ok(());
    }
    let family = family_of(ctx).ok_or(0)?;
    SYN_TIMES
        .insert(syn_key(ctx, family), now_ns(), 0)
        .map_err(i64::from)
}

fn on_connect(ctx: &SockOpsContext) -> Result<(), i64> {
    let family = family_of(ctx).ok_or(0)?;
    let state = ConnState {
        key: PeerKey {
            side: SIDE_UPSTREAM,
            family,
            port: remote_port(ctx),
            _pad: 0,
            addr: remote_addr(ctx, family),
        },
        start_ns: now_ns(),
        ..ConnState::default()
    };
    if CONNS.insert(cookie_of_ops(ctx), state, 0).is_err() {
        bump_stat(STAT_TRACK_FAILURES);
        return Ok(());
    }
    // STATE_CB: see the close of a connect that never completes.
    ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .map_err(i64::from)
}

fn on_established(ctx: &SockOpsContext, side: u8) -> Result<(), i64> {
    let family = family_of(ctx).ok_or(0)?;
    let cookie = cookie_of_ops(ctx);
    let now = now_ns();
    let mut state = match CONNS.get_ptr(cookie) {
        // SAFETY: the pointer comes from a successful lookup; copied out at once.
        Some(p) => unsafe { *p },
        None => ConnState::default(),
    };
    if side == SIDE_DOWNSTREAM {
        state.key = PeerKey {
            side,
            family,
            port: ctx.local_port() as u16,
            _pad: 0,
            addr: [0; 4],
        };
        let syn = syn_key(ctx, family);
        // SAFETY: the pointer comes from a successful lookup; read at once.
        state.start_ns = SYN_TIMES.get_ptr(syn).map_or(0, |p| unsafe { *p });
        let _ = SYN_TIMES.remove(syn);
    } else if state.start_ns == 0 {
        // Connected before the probe attached: count it, without a handshake time.
        state.key = PeerKey {
            side,
            family,
            port: remote_port(ctx),
            _pad: 0,
            addr: remote_addr(ctx, family),
        };
    }
    state.established_ns = now;
    state.last_sample_ns = now;
    if CONNS.insert(cookie, state, 0).is_err() {
        bump_stat(STAT_TRACK_FAILURES);
        return Ok(());
    }
    with_counters(&state.key, |c| add(&mut c.opened, 1));
    if state.start_ns != 0 && now > state.start_ns {
        emit(&state.key, EVENT_HANDSHAKE, now - state.start_ns, 0);
    }
    let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG;
    ctx.set_cb_flags(flags as i32).map_err(i64::from)
}

/// Adds the bytes acked/received since the last call to the peer's counters.
fn count_bytes(ctx: &SockOpsContext, state: &mut ConnState) {
    // SAFETY: reading fields of the sock_ops context the kernel handed us.
    let (acked, received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
    let d_acked = acked.saturating_sub(state.bytes_acked_counted);
    let d_received = received.saturating_sub(state.bytes_received_counted);
    state.bytes_acked_counted = acked;
    state.bytes_received_counted = received;
    if d_acked != 0 || d_received != 0 {
        with_counters(&state.key, |c| {
            add(&mut c.bytes_acked, d_acked);
            add(&mut c.bytes_received, d_received);
        });
    }
}

/// Smoothed RTT in µs (the kernel keeps it shifted left by 3).
fn srtt_us(ctx: &SockOpsContext) -> u64 {
    // SAFETY: reading a field of the sock_ops context the kernel handed us.
    u64::from(unsafe { (*ctx.ops).srtt_us }) >> 3
}

/// The RTT callback only looks for a due sample on every this-many received
/// segments (a power of two): most ACKs then cost two loads and a branch.
const RTT_CHECK_EVERY_SEGMENTS: u32 = 32;

/// Runs on every RTT measurement (every ACK of new data): cheap unless a sample is due.
fn on_rtt(ctx: &SockOpsContext) -> Result<(), i64> {
    // SAFETY: reading a field of the sock_ops context the kernel handed us.
    let segments_in = unsafe { (*ctx.ops).segs_in };
    if segments_in & (RTT_CHECK_EVERY_SEGMENTS - 1) != 0 {
        return Ok(());
    }
    let period = SETTINGS
        .get(SETTING_RTT_SAMPLE_PERIOD_NS)
        .copied()
        .unwrap_or(0);
    if period == 0 {
        return Ok(());
    }
    let Some(p) = CONNS.get_ptr_mut(cookie_of_ops(ctx)) else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful lookup; callbacks of one socket
    // run under its lock, so nothing else writes this entry meanwhile.
    let state = unsafe { &mut *p };
    let now = now_ns();
    if now.saturating_sub(state.last_sample_ns) < period {
        return Ok(());
    }
    state.last_sample_ns = now;
    count_bytes(ctx, state);
    let rtt = srtt_us(ctx);
    if rtt != 0 {
        emit(&state.key, EVENT_RTT_SAMPLE, rtt, 0);
    }
    Ok(())
}

fn on_close(ctx: &SockOpsContext) -> Result<(), i64> {
    let cookie = cookie_of_ops(ctx);
    let Some(p) = CONNS.get_ptr_mut(cookie) else {
        return Ok(());
    };
    // SAFETY: as in `on_rtt`.
    let state = unsafe { &mut *p };
    if state.established_ns == 0 {
        with_counters(&state.key, |c| add(&mut c.connect_failures, 1));
    } else {
        count_bytes(ctx, state);
        with_counters(&state.key, |c| add(&mut c.closed, 1));
        let lifetime = now_ns().saturating_sub(state.established_ns);
        emit(&state.key, EVENT_CLOSE, lifetime, srtt_us(ctx));
    }
    let key = state.key;
    let _ = CLOSED.insert(cookie, key, 0);
    let _ = CONNS.remove(cookie);
    Ok(())
}

/// The socket cookie of a tracepoint's `struct sock *` argument (0: no socket).
fn cookie_of_arg(ctx: &BtfTracePointContext, n: usize) -> u64 {
    let sk: *mut c_void = ctx.arg(n);
    if sk.is_null() {
        return 0;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *`, non-null.
    unsafe { bpf_get_socket_cookie(sk) }
}

fn live_key(cookie: u64) -> Option<PeerKey> {
    // SAFETY: the pointer comes from a successful lookup; the key is copied out at once.
    CONNS.get_ptr(cookie).map(|p| unsafe { (*p).key })
}

fn try_count_live(
    ctx: &BtfTracePointContext,
    field: fn(&mut PeerCounters) -> &mut u64,
) -> Result<(), i64> {
    let cookie = cookie_of_arg(ctx, 0);
    if cookie == 0 {
        return Ok(());
    }
    let key = live_key(cookie).ok_or(0)?;
    with_counters(&key, |c| add(field(c), 1));
    Ok(())
}

fn try_count_reset(ctx: &BtfTracePointContext, sent: bool) -> Result<(), i64> {
    let cookie = cookie_of_arg(ctx, 0);
    if cookie == 0 {
        return Ok(());
    }
    let key = match live_key(cookie) {
        Some(k) => k,
        // SAFETY: the pointer comes from a successful lookup; copied out at once.
        None => CLOSED.get_ptr(cookie).map(|p| unsafe { *p }).ok_or(0)?,
    };
    with_counters(&key, |c| {
        if sent {
            add(&mut c.resets_sent, 1)
        } else {
            add(&mut c.resets_received, 1)
        }
    });
    Ok(())
}

/// Who began the close: our FIN first (FIN_WAIT1) or the peer's (CLOSE_WAIT).
fn try_set_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if old != BPF_TCP_ESTABLISHED as i32 {
        return Ok(());
    }
    let by_gateway = match new as u32 {
        BPF_TCP_FIN_WAIT1 => true,
        BPF_TCP_CLOSE_WAIT => false,
        _ => return Ok(()),
    };
    let cookie = cookie_of_arg(ctx, 0);
    if cookie == 0 {
        return Ok(());
    }
    let key = live_key(cookie).ok_or(0)?;
    with_counters(&key, |c| {
        if by_gateway {
            add(&mut c.closes_by_gateway, 1)
        } else {
            add(&mut c.closes_by_peer, 1)
        }
    });
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
