//! Log-linear latency histograms kept per CPU in the kernel.
//!
//! 32 linear sub-buckets per power of two (relative bucket width ≤ 1/32, so at least two
//! significant digits) over nanosecond values from 0 to 2^36 ns (68 s). The same bucket
//! function runs in the eBPF programs and in the unit tests here.

use core::mem::size_of;

pub const SUB_BITS: u32 = 5;
pub const SUB: u64 = 1 << SUB_BITS;
/// Values from 2^MAX_EXP ns up land in the last bucket.
pub const MAX_EXP: u32 = 36;
pub const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 2) * SUB as u32) as usize;

/// Which hop a histogram measures.
pub const HOP_DATAPATH_IN: u32 = 1;
pub const HOP_DATAPATH_OUT: u32 = 2;
pub const HOP_POD_DELIVERY: u32 = 3;
/// From a socket's send to the packet leaving its pod (the pod's own rules on the way out).
pub const HOP_POD_SEND: u32 = 4;

/// floor(log2(v)) for v > 0, without a loop the verifier would have to unroll.
#[inline(always)]
pub fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >> 32 != 0 {
        v >>= 32;
        r += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        r += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        r += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        r += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        r += 2;
    }
    if v >> 1 != 0 {
        r += 1;
    }
    r
}

#[inline(always)]
pub fn bucket(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let e = log2(ns);
    if e > MAX_EXP {
        return BUCKETS - 1;
    }
    let mantissa = (ns >> (e - SUB_BITS)) & (SUB - 1);
    ((e - SUB_BITS + 1) as u64 * SUB + mantissa) as usize
}

/// The smallest value that falls in bucket `i`.
pub fn bucket_low(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = i / SUB + u64::from(SUB_BITS) - 1;
    let m = i % SUB;
    (SUB + m) << (e - u64::from(SUB_BITS))
}

/// The middle of bucket `i`, which userspace reads each of its values as: within 1/64 of any of
/// them.
pub fn bucket_middle(i: usize) -> u64 {
    let low = bucket_low(i);
    let next = if i + 1 < BUCKETS {
        bucket_low(i + 1)
    } else {
        low + 1
    };
    low + (next - low) / 2
}

/// Histogram key: a hop at an interface (datapath) or a cgroup (pod delivery).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    pub hop: u32,
    pub ifindex: u32,
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<HistKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Hist {
    pub counts: [u32; BUCKETS],
}
const _: () = assert!(size_of::<Hist>() == BUCKETS * 4);

/// A packet as NAT leaves it: addresses and ports change, sequence numbers do not.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PktKey {
    pub seq: u32,
    pub ack: u32,
    /// Payload length: tells a data segment from the pure ACK that shares its numbers.
    pub len: u16,
    pub flags: u8,
    /// Explicit so the struct has no implicit padding.
    pub _pad: u8,
}
const _: () = assert!(size_of::<PktKey>() == 12);

/// Where and when a packet was last seen.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PktSeen {
    pub last_ns: u64,
    /// The sending socket's cgroup, carried from a socket to the pod's veth.
    pub cgroup_id: u64,
    pub ifindex: u32,
    /// The observation point (`POINT_*`).
    pub point: u32,
}
const _: () = assert!(size_of::<PktSeen>() == 24);

/// Observation points, in the order a packet passes them.
/// Arrived at the node's uplink (TC ingress).
pub const POINT_NODE_IN: u32 = 1;
/// Left the node towards a pod: TC egress on the pod's host-side veth.
pub const POINT_POD_IN: u32 = 2;
/// Delivered to a socket (cgroup_skb ingress).
pub const POINT_SOCKET_IN: u32 = 3;
/// Sent by a socket (cgroup_skb egress).
pub const POINT_SOCKET_OUT: u32 = 4;
/// Left a pod: TC ingress on its host-side veth.
pub const POINT_POD_OUT: u32 = 5;
/// Left the node by the uplink (TC egress).
pub const POINT_NODE_OUT: u32 = 6;

/// The hop between two consecutive points, and whether the key is the later point's interface
/// (`true`) or the earlier one's; `None` for pairs that are no hop.
pub fn hop_between(from: u32, to: u32) -> Option<(u32, bool)> {
    match (from, to) {
        (POINT_NODE_IN | POINT_POD_OUT, POINT_POD_IN) => Some((HOP_DATAPATH_IN, true)),
        (POINT_POD_IN, POINT_SOCKET_IN) => Some((HOP_POD_DELIVERY, false)),
        (POINT_SOCKET_OUT, POINT_POD_OUT) => Some((HOP_POD_SEND, true)),
        (POINT_POD_OUT, POINT_NODE_OUT) => Some((HOP_DATAPATH_OUT, false)),
        _ => None,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) plain data without implicit padding (asserted above).
    unsafe impl aya::Pod for super::HistKey {}
    unsafe impl aya::Pod for super::Hist {}
    unsafe impl aya::Pod for super::PktKey {}
    unsafe impl aya::Pod for super::PktSeen {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [0u64, 1, 31, 32, 33, 63, 64, 1000, 1_000_000, 60_000_000_000] {
            let b = bucket(v);
            assert!(b >= last, "{v}");
            last = b;
            let low = bucket_low(b);
            assert!(low <= v, "{v}: low {low}");
            if b + 1 < BUCKETS {
                assert!(bucket_low(b + 1) > v, "{v}");
            }
            // Two significant digits: the bucket is narrower than 1/32 of its values.
            if v >= SUB {
                assert!((v - low) * SUB <= v, "{v}");
            }
        }
    }

    #[test]
    fn every_bucket_maps_back_to_itself() {
        for i in 0..BUCKETS {
            assert_eq!(bucket(bucket_low(i)), i, "{i}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn hops_follow_the_path_through_the_node() {
        assert_eq!(
            hop_between(POINT_NODE_IN, POINT_POD_IN),
            Some((HOP_DATAPATH_IN, true))
        );
        assert_eq!(
            hop_between(POINT_POD_OUT, POINT_POD_IN),
            Some((HOP_DATAPATH_IN, true))
        );
        assert_eq!(
            hop_between(POINT_POD_IN, POINT_SOCKET_IN),
            Some((HOP_POD_DELIVERY, false))
        );
        assert_eq!(
            hop_between(POINT_SOCKET_OUT, POINT_POD_OUT),
            Some((HOP_POD_SEND, true))
        );
        assert_eq!(
            hop_between(POINT_POD_OUT, POINT_NODE_OUT),
            Some((HOP_DATAPATH_OUT, false))
        );
        // Loopback inside a pod, and a second sighting at the same point, are no hop.
        assert_eq!(hop_between(POINT_SOCKET_OUT, POINT_SOCKET_IN), None);
        assert_eq!(hop_between(POINT_NODE_IN, POINT_NODE_IN), None);
    }

    #[test]
    fn log2_matches_leading_zeros() {
        for v in [1u64, 2, 3, 255, 256, 1 << 40, u64::MAX] {
            assert_eq!(log2(v), 63 - v.leading_zeros());
        }
    }
}
