//! Matching one packet at several observation points despite NAT, and the per-CPU histograms
//! of the hops between them.
//!
//! kube-proxy's DNAT and masquerade change addresses and ports between the node's uplink and a
//! pod's veth; TCP sequence and acknowledgement numbers, payload length and flags do not. A
//! packet is keyed by those, and an LRU map remembers where and when it was last seen.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuHashMap};
use probe_common::{
    hist::{
        HOP_POD_DELIVERY, HOP_POD_SEND, Hist, HistKey, POINT_NODE_IN, POINT_NODE_OUT, POINT_POD_IN,
        POINT_POD_OUT, POINT_SOCKET_IN, POINT_SOCKET_OUT, PktKey, PktSeen, bucket, hop_between,
    },
    stats::{self, LRU_PKT_SEEN},
};

use crate::maps::{HIST, HIST_ZERO, PKT_SEEN, count, lru_remove};

fn observe(hop: u32, ifindex: u32, cgroup_id: u64, ns: u64) {
    let k = HistKey {
        hop,
        ifindex,
        cgroup_id,
    };
    let _ = observe_in(&HIST, &k, ns);
}

/// Adds `ns` to this CPU's histogram `k` of `map`, creating it zeroed if it is new; false
/// when the map had no room for a new key.
#[inline(always)]
pub fn observe_in<K>(map: &PerCpuHashMap<K, Hist>, k: &K, ns: u64) -> bool {
    let h = match map.get_ptr_mut(k) {
        Some(h) => h,
        None => {
            // A zeroed value from a map: 4 KiB does not fit on the BPF stack.
            let Some(zero) = HIST_ZERO.get_ptr(0) else {
                return false;
            };
            // SAFETY: a valid map value pointer.
            let _ = map.insert(k, unsafe { &*zero }, BPF_NOEXIST as u64);
            match map.get_ptr_mut(k) {
                Some(h) => h,
                None => return false,
            }
        }
    };
    let b = bucket(ns);
    // SAFETY: per-CPU value of this CPU; programs do not migrate while running.
    if let Some(c) = unsafe { (*h).counts.get_mut(b) } {
        *c += 1;
    }
    true
}

/// Records that the packet `k` passed `point` at `now` (at `ifindex`, by a socket of
/// `cgroup_id`), and the hop since the point where it was seen before.
pub fn pass(k: &PktKey, point: u32, ifindex: u32, cgroup_id: u64, now: u64) {
    let here = PktSeen {
        last_ns: now,
        cgroup_id,
        ifindex,
        point,
    };
    let Some(seen) = PKT_SEEN.get_ptr_mut(k) else {
        if point == POINT_POD_IN {
            count(stats::POD_IN_UNMATCHED);
        }
        // Only points where a packet's path through the node can begin open an entry.
        if matches!(point, POINT_NODE_IN | POINT_SOCKET_OUT | POINT_POD_OUT) {
            if PKT_SEEN.insert(k, &here, BPF_NOEXIST as u64).is_ok() {
                count(stats::lru_inserted(LRU_PKT_SEEN));
            }
        }
        return;
    };
    // SAFETY: map value pointer, valid for this run.
    let seen = unsafe { &mut *seen };
    let last_point = seen.point;
    if point == POINT_POD_IN && last_point != POINT_POD_IN {
        count(stats::POD_IN_MATCHED);
    }
    if let Some((hop, key_is_here)) = hop_between(last_point, point) {
        let (ifx, cg) = match hop {
            HOP_POD_DELIVERY => (seen.ifindex, cgroup_id),
            HOP_POD_SEND => (ifindex, seen.cgroup_id),
            _ if key_is_here => (ifindex, 0),
            _ => (seen.ifindex, 0),
        };
        observe(hop, ifx, cg, now.saturating_sub(seen.last_ns));
    } else if last_point == point {
        // A retransmission or a second sighting at the same point: the first one counts.
        return;
    }
    if matches!(point, POINT_SOCKET_IN | POINT_NODE_OUT) {
        // The end of the packet's path through the node (or of its loop inside a pod).
        lru_remove(&PKT_SEEN, LRU_PKT_SEEN, k);
        return;
    }
    *seen = here;
}
