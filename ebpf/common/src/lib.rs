//! Types shared by Hypergate's eBPF probe (`ebpf/probe`) and its loader
//! (`gateway/src/observability/ebpf`): map keys, map values and ring-buffer events.
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of padding the compiler could
//! add on its own (explicit `_pad` fields), so the kernel and user space agree on
//! every byte. The crate is `no_std` for the probe; the `user` feature adds the
//! `aya::Pod` impls the loader needs to read and write these types in maps.
//!
//! How the probe uses them:
//! 1. `sock_ops` (attached to the gateway's cgroup) creates a [`ConnState`] per
//!    connection in the `CONNS` map, keyed by socket cookie, and counts into the
//!    per-CPU [`PeerCounters`] of the connection's [`PeerKey`].
//! 2. The `tp_btf` programs look a socket's cookie up in `CONNS` (that is the
//!    filter: only the gateway's own sockets are there) and count retransmits,
//!    resets and who began the close against its key.
//! 3. Latency samples (handshake, periodic smoothed RTT, RTT and lifetime at close)
//!    go to user space as [`Event`]s on a ring buffer: at most one per connection
//!    per sample period, never one per ACK.
#![no_std]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

/// `PeerKey::side` of a connection accepted on one of the gateway's sockets (a client).
pub const SIDE_DOWNSTREAM: u8 = 0;
/// `PeerKey::side` of a connection the gateway opened (an upstream endpoint).
pub const SIDE_UPSTREAM: u8 = 1;

/// `AF_INET`, as found in `bpf_sock_ops.family`.
pub const FAMILY_INET: u8 = 2;
/// `AF_INET6`, as found in `bpf_sock_ops.family`.
pub const FAMILY_INET6: u8 = 10;

/// What the user side aggregates by: one downstream listener port, or one upstream
/// endpoint address. Mapping these to listener, cluster and endpoint names is done
/// in user space, so a reload only swaps a table there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    /// [`SIDE_DOWNSTREAM`] or [`SIDE_UPSTREAM`].
    pub side: u8,
    /// [`FAMILY_INET`] or [`FAMILY_INET6`].
    pub family: u8,
    /// Host byte order: the local port for downstream, the remote port for upstream.
    pub port: u16,
    /// Always zero.
    pub _pad: u32,
    /// Upstream: the remote address, as the kernel stores it (network byte order;
    /// IPv4 in `addr[0]`). Downstream: zero (the listener is found by port).
    pub addr: [u32; 4],
}

/// Cumulative counters for one [`PeerKey`], one copy per CPU (summed in user space).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Connections that reached ESTABLISHED.
    pub opened: u64,
    /// Established connections that reached CLOSE.
    pub closed: u64,
    /// Upstream connects that reached CLOSE without being established
    /// (refused, timed out, cancelled).
    pub connect_failures: u64,
    /// Segments retransmitted (`tcp_retransmit_skb`), SYNs included.
    pub retransmits: u64,
    /// RSTs the gateway's sockets sent (`tcp_send_reset`).
    pub resets_sent: u64,
    /// RSTs the gateway's sockets received (`tcp_receive_reset`).
    pub resets_received: u64,
    /// Bytes the gateway sent that the peer acknowledged.
    pub bytes_acked: u64,
    /// Bytes the gateway received.
    pub bytes_received: u64,
    /// Established connections the gateway began to close (ESTABLISHED -> FIN_WAIT1).
    pub closes_by_gateway: u64,
    /// Established connections the peer began to close (ESTABLISHED -> CLOSE_WAIT).
    pub closes_by_peer: u64,
}

impl PeerCounters {
    /// Adds every counter of `other` (summing per-CPU copies, merging keys).
    pub fn add(&mut self, other: &PeerCounters) {
        self.opened += other.opened;
        self.closed += other.closed;
        self.connect_failures += other.connect_failures;
        self.retransmits += other.retransmits;
        self.resets_sent += other.resets_sent;
        self.resets_received += other.resets_received;
        self.bytes_acked += other.bytes_acked;
        self.bytes_received += other.bytes_received;
        self.closes_by_gateway += other.closes_by_gateway;
        self.closes_by_peer += other.closes_by_peer;
    }
}

/// Per-connection state in the `CONNS` map, keyed by socket cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// Where this connection is counted.
    pub key: PeerKey,
    /// When the handshake started (`bpf_ktime_get_ns`): `connect()` for upstream,
    /// SYN received for downstream; 0 when unknown.
    pub start_ns: u64,
    /// When the connection reached ESTABLISHED; 0 while connecting.
    pub established_ns: u64,
    /// When the last periodic RTT sample was sent.
    pub last_sample_ns: u64,
    /// `bytes_acked` already added to [`PeerCounters`].
    pub bytes_acked_counted: u64,
    /// `bytes_received` already added to [`PeerCounters`].
    pub bytes_received_counted: u64,
}

/// The four-tuple of a connection still in the SYN queue: links the SYN's arrival
/// time (seen on the request socket) to the child socket when it is established.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SynKey {
    /// [`FAMILY_INET`] or [`FAMILY_INET6`].
    pub family: u8,
    /// Always zero.
    pub _pad: u8,
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// Always zero.
    pub _pad2: u16,
    /// Local address, network byte order.
    pub local_addr: [u32; 4],
    /// Remote address, network byte order.
    pub remote_addr: [u32; 4],
}

/// [`Event::kind`]: handshake completed; `value` = handshake time in nanoseconds.
pub const EVENT_HANDSHAKE: u32 = 1;
/// [`Event::kind`]: periodic sample of a live connection; `value` = smoothed RTT in µs.
pub const EVENT_RTT_SAMPLE: u32 = 2;
/// [`Event::kind`]: an established connection closed; `value` = lifetime in
/// nanoseconds, `value2` = smoothed RTT at close in µs (0: no sample).
pub const EVENT_CLOSE: u32 = 3;

/// A latency sample sent to user space on the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Where it is counted.
    pub key: PeerKey,
    /// One of the `EVENT_*` constants.
    pub kind: u32,
    /// Always zero.
    pub _pad: u32,
    /// Meaning depends on `kind`.
    pub value: u64,
    /// Meaning depends on `kind`.
    pub value2: u64,
}

/// Index in the `SETTINGS` array: minimum nanoseconds between two periodic RTT
/// samples of one connection.
pub const SETTING_RTT_SAMPLE_PERIOD_NS: u32 = 0;
/// Number of entries in the `SETTINGS` array.
pub const SETTINGS_LEN: u32 = 1;

/// Index in the per-CPU `PROBE_STATS` array: events dropped because the ring buffer was full.
pub const STAT_EVENTS_LOST: u32 = 0;
/// Index in the per-CPU `PROBE_STATS` array: connections not tracked because a map
/// insert failed.
pub const STAT_TRACK_FAILURES: u32 = 1;
/// Number of entries in the `PROBE_STATS` array.
pub const PROBE_STATS_LEN: u32 = 2;

/// Names of the maps, as the loader looks them up in the object.
pub mod maps {
    /// `LRU_HASH<u64 cookie, ConnState>`: the gateway's live connections.
    pub const CONNS: &str = "CONNS";
    /// `LRU_HASH<u64 cookie, PeerKey>`: recently closed connections, so that an RST
    /// sent right after close (abortive close) is still counted.
    pub const CLOSED: &str = "CLOSED";
    /// `LRU_HASH<SynKey, u64 ns>`: SYN arrival times of pending downstream handshakes.
    pub const SYN_TIMES: &str = "SYN_TIMES";
    /// `PERCPU_HASH<PeerKey, PeerCounters>`.
    pub const COUNTERS: &str = "COUNTERS";
    /// `RINGBUF` of [`crate::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// `ARRAY<u64>` of settings, see `SETTING_*`.
    pub const SETTINGS: &str = "SETTINGS";
    /// `PERCPU_ARRAY<u64>` of probe health counters, see `STAT_*`.
    pub const PROBE_STATS: &str = "PROBE_STATS";
}

/// Names of the programs in the object.
pub mod programs {
    /// The `sock_ops` program attached to the gateway's cgroup.
    pub const SOCK_OPS: &str = "hypergate_sock_ops";
    /// `tp_btf/tcp_retransmit_skb`.
    pub const RETRANSMIT: &str = "hypergate_tcp_retransmit";
    /// `tp_btf/tcp_send_reset`.
    pub const SEND_RESET: &str = "hypergate_tcp_send_reset";
    /// `tp_btf/tcp_receive_reset`.
    pub const RECEIVE_RESET: &str = "hypergate_tcp_receive_reset";
    /// `tp_btf/inet_sock_set_state`.
    pub const SET_STATE: &str = "hypergate_inet_sock_set_state";
}

#[cfg(feature = "user")]
mod user {
    use super::{ConnState, Event, PeerCounters, PeerKey, SynKey};

    // SAFETY: plain #[repr(C)] data with explicit padding fields; any bit pattern is valid.
    unsafe impl aya::Pod for PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SynKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Event {}
}
