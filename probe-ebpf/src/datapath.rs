//! Matching one packet at several observation points despite NAT, and the per-CPU histograms
//! of the hops between them.
//!
//! kube-proxy's DNAT and masquerade change addresses and ports between the node's uplink and a
//! pod's veth; TCP sequence and acknowledgement numbers, payload length and flags do not. A
//! packet is keyed by those, and an LRU map remembers where and when it was last seen.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, maps::PerCpuHashMap,
    programs::sk_buff::SkBuff,
};
use probe_common::{
    hist::{
        HOP_POD_DELIVERY, HOP_POD_SEND, Hist, HistKey, POINT_NODE_IN, POINT_NODE_OUT, POINT_POD_IN,
        POINT_POD_OUT, POINT_SOCKET_IN, POINT_SOCKET_OUT, PktKey, PktSeen, bucket, hop_between,
    },
    stats::{self, LRU_PKT_SEEN},
};

use crate::maps::{HIST, HIST_ZERO, PKT_SEEN, count, lru_remove};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;

/// The NAT-invariant key of a TCP packet whose IP header starts at `l3`.
pub fn key(skb: &SkBuff, l3: usize) -> Result<PktKey, i64> {
    let first = skb.load::<u8>(l3)?;
    let (tcp, ip_payload) = match first >> 4 {
        4 => {
            let ihl = (first & 0x0f) as usize * 4;
            if skb.load::<u8>(l3 + 9)? != IPPROTO_TCP || ihl < 20 {
                return Err(0);
            }
            let total = u16::from_be(skb.load::<u16>(l3 + 2)?) as usize;
            (l3 + ihl, total.saturating_sub(ihl))
        }
        6 => {
            if skb.load::<u8>(l3 + 6)? != IPPROTO_TCP {
                return Err(0);
            }
            (l3 + 40, u16::from_be(skb.load::<u16>(l3 + 4)?) as usize)
        }
        _ => return Err(0),
    };
    let doff = (skb.load::<u8>(tcp + 12)? >> 4) as usize * 4;
    Ok(PktKey {
        seq: skb.load::<u32>(tcp + 4)?,
        ack: skb.load::<u32>(tcp + 8)?,
        len: ip_payload.saturating_sub(doff) as u16,
        flags: skb.load::<u8>(tcp + 13)?,
        _pad: 0,
    })
}

/// The key of a packet seen by TC, which starts at the Ethernet header.
pub fn key_l2(skb: &SkBuff) -> Result<PktKey, i64> {
    let proto = u16::from_be(skb.load::<u16>(12)?);
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return Err(0);
    }
    key(skb, ETH_HLEN)
}

fn observe(hop: u32, ifindex: u32, cgroup_id: u64, ns: u64) {
    let k = HistKey {
        hop,
        ifindex,
        cgroup_id,
    };
    observe_in(&HIST, &k, ns);
}

/// Adds `ns` to this CPU's histogram `k` of `map`, creating it zeroed if it is new.
#[inline(always)]
pub fn observe_in<K>(map: &PerCpuHashMap<K, Hist>, k: &K, ns: u64) {
    let h = match map.get_ptr_mut(k) {
        Some(h) => h,
        None => {
            // A zeroed value from a map: 4 KiB does not fit on the BPF stack.
            let Some(zero) = HIST_ZERO.get_ptr(0) else {
                return;
            };
            // SAFETY: a valid map value pointer.
            let _ = map.insert(k, unsafe { &*zero }, BPF_NOEXIST as u64);
            match map.get_ptr_mut(k) {
                Some(h) => h,
                None => return,
            }
        }
    };
    let b = bucket(ns);
    // SAFETY: per-CPU value of this CPU; programs do not migrate while running.
    if let Some(c) = unsafe { (*h).counts.get_mut(b) } {
        *c += 1;
    }
}

/// Records that the packet `k` passed `point` (at `ifindex`, by a socket of `cgroup_id`), and
/// the hop since the point where it was seen before.
pub fn pass(k: &PktKey, point: u32, ifindex: u32, cgroup_id: u64) {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
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
