//! The socket histograms: per-CPU log-linear histograms (the same buckets as `hist`) per
//! cgroup, side and service port of the smoothed RTT (`sock_ops`) and of the connections'
//! handshakes and lifetimes (`inet_sock_set_state`).

use core::mem::size_of;

/// The socket's smoothed RTT (`srtt_us` of `bpf_sock_ops`), sampled at each RTT update.
pub const METRIC_SRTT: u8 = 1;
/// The handshake (`inet_sock_set_state`): SYN_SENT → ESTABLISHED on the connecting side, the
/// listener's first SYN → ESTABLISHED on the accepting side.
pub const METRIC_HANDSHAKE: u8 = 2;
/// A passive handshake timed from SYN_RECV, no SYN stamp found: it misses the round trip.
/// Kept apart so the series can say how many (`timed_from_syn_recv`).
pub const METRIC_HANDSHAKE_FROM_SYN_RECV: u8 = 3;
/// ESTABLISHED → CLOSE.
pub const METRIC_LIFETIME: u8 = 4;
/// SYN_SENT → CLOSE without ever being established (refused, timed out, reset).
pub const METRIC_FAILED_CONNECT: u8 = 5;

/// The unit, in nanoseconds, a metric's histogram counts in. Lifetimes and failed connects are
/// counted in microseconds: the buckets end at 2^36 units, 68.7 s in nanoseconds (short of a
/// pooled connection's life or of a connect that waits out the SYN retries), 19 hours in
/// microseconds.
pub const fn unit_ns(metric: u8) -> u64 {
    match metric {
        METRIC_LIFETIME | METRIC_FAILED_CONNECT => 1_000,
        _ => 1,
    }
}

/// Who owns a flow's socket and which port names its service; written by the
/// `inet_sock_set_state` tracepoint at ESTABLISHED (where the owner is known), read by
/// `sock_ops`, whose callbacks run in softirq context where the current task says nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSock {
    pub cgroup_id: u64,
    /// The remote port of an active (connecting) socket, the local port of a passive one.
    pub port: u16,
    /// `conn::SIDE_ACTIVE` or `conn::SIDE_PASSIVE`.
    pub side: u8,
    /// Explicit so the struct has no implicit padding.
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<FlowSock>() == 16);

/// A socket histogram: metric, cgroup, side and service port (0: owner unknown, a socket
/// established before hopprobe attached).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockHistKey {
    pub cgroup_id: u64,
    pub port: u16,
    pub side: u8,
    pub metric: u8,
    /// Explicit so the struct has no implicit padding (hash keys compare all bytes).
    pub _pad: u32,
}
const _: () = assert!(size_of::<SockHistKey>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) plain data without implicit padding (asserted above).
    unsafe impl aya::Pod for super::FlowSock {}
    unsafe impl aya::Pod for super::SockHistKey {}
}
