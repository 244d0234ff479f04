//! Indexes of the per-CPU counters the programs keep so that nothing is lost silently.

/// An event could not be reserved in the ring buffer (userspace too slow or buffer too small).
pub const RINGBUF_DROPS: u32 = 0;
/// A socket could not be tracked because the connection map rejected the insert.
pub const CONN_INSERT_FAILED: u32 = 1;
/// A SYN could not be stamped because the SYN map rejected the insert.
pub const SYN_INSERT_FAILED: u32 = 2;
/// Events written to the ring buffer.
pub const EVENTS_SENT: u32 = 3;
/// Sockets that closed without the probe having seen them open (opened before it attached, or
/// evicted from the LRU map).
pub const UNTRACKED_CLOSE: u32 = 4;

/// An exchange record could not be reserved in its ring buffer.
pub const EXCHANGE_DROPS: u32 = 5;
/// A socket's exchange could not be tracked because the map rejected the insert.
pub const EXCHANGE_INSERT_FAILED: u32 = 6;
/// Exchange records written.
pub const EXCHANGES_SENT: u32 = 7;

/// Packets reaching a pod's veth that were seen before (at the uplink or another pod's veth):
/// matched across NAT.
pub const POD_IN_MATCHED: u32 = 8;
/// Packets reaching a pod's veth without an earlier sighting (started on the node itself, or
/// the earlier point is not attached, or NAT changed what the key is made of).
pub const POD_IN_UNMATCHED: u32 = 9;

pub const COUNT: u32 = 10;

pub const NAMES: [&str; COUNT as usize] = [
    "ringbuf_drops",
    "conn_insert_failed",
    "syn_insert_failed",
    "events_sent",
    "untracked_close",
    "exchange_drops",
    "exchange_insert_failed",
    "exchanges_sent",
    "pod_in_matched",
    "pod_in_unmatched",
];
