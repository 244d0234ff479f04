//! Per-connection exchanges at the TC points (node uplink, pods' host-side veths), streamed to
//! userspace so that a request can be followed from the uplink (the load generator's 4-tuple)
//! to the pod's socket (the 4-tuple after kube-proxy's NAT) through the client's initial
//! sequence number, which NAT does not rewrite; and so that each request's times at the uplink
//! and the pod's veth are known, not only the hop histograms.
//!
//! Kept apart from the packet-sighting histograms (`datapath.rs`): a connection enters the map
//! only when its SYN passes a TC point, and leaves it at the first FIN or RST.

use crate::maps::wake_flags;
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::sk_buff::SkBuff,
};
use probe_common::tcflow::{TC_STAT_COUNT, TC_STAT_DROPS, TC_STAT_SENT, TcExchange, TcFlowKey};

/// Connections in progress per interface; sized by `--max-sockets`.
#[map]
pub static TC_FLOWS: LruHashMap<TcFlowKey, TcExchange> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static TC_FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

#[map]
pub static TC_FLOW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TC_STAT_COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

struct Segment {
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    seq: u32,
    len: u32,
    flags: u8,
    ip_version: u32,
}

fn count(index: u32) {
    if let Some(slot) = TC_FLOW_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not migrate CPU while running.
        unsafe { *slot += 1 };
    }
}

fn parse(skb: &SkBuff) -> Result<Segment, i64> {
    let proto = u16::from_be(skb.load::<u16>(12)?);
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (tcp, ip_payload, ip_version) = match proto {
        ETH_P_IP => {
            let l3 = ETH_HLEN;
            let first = skb.load::<u8>(l3)?;
            let ihl = (first & 0x0f) as usize * 4;
            if skb.load::<u8>(l3 + 9)? != IPPROTO_TCP || ihl < 20 {
                return Err(0);
            }
            let s = skb.load::<[u8; 4]>(l3 + 12)?;
            let d = skb.load::<[u8; 4]>(l3 + 16)?;
            src[..4].copy_from_slice(&s);
            dst[..4].copy_from_slice(&d);
            let total = u16::from_be(skb.load::<u16>(l3 + 2)?) as usize;
            (l3 + ihl, total.saturating_sub(ihl), 4)
        }
        ETH_P_IPV6 => {
            let l3 = ETH_HLEN;
            if skb.load::<u8>(l3 + 6)? != IPPROTO_TCP {
                return Err(0);
            }
            src = skb.load::<[u8; 16]>(l3 + 8)?;
            dst = skb.load::<[u8; 16]>(l3 + 24)?;
            (l3 + 40, u16::from_be(skb.load::<u16>(l3 + 4)?) as usize, 6)
        }
        _ => return Err(0),
    };
    let doff = (skb.load::<u8>(tcp + 12)? >> 4) as usize * 4;
    Ok(Segment {
        src,
        dst,
        sport: u16::from_be(skb.load::<u16>(tcp)?),
        dport: u16::from_be(skb.load::<u16>(tcp + 2)?),
        seq: u32::from_be(skb.load::<u32>(tcp + 4)?),
        len: ip_payload.saturating_sub(doff) as u32,
        flags: skb.load::<u8>(tcp + 13)?,
        ip_version,
    })
}

fn emit(x: &TcExchange) {
    if x.req_first_ns == 0 {
        return;
    }
    if TC_FLOW_EVENTS
        .output::<TcExchange>(x, wake_flags(&TC_FLOW_EVENTS))
        .is_ok()
    {
        count(TC_STAT_SENT);
    } else {
        count(TC_STAT_DROPS);
    }
}

/// True when the payload `[seq, seq + len)` reaches beyond `end` (sequence arithmetic), i.e.
/// it is not a retransmission of what was already seen.
fn advances(seq: u32, len: u32, end: u32) -> bool {
    (seq.wrapping_add(len).wrapping_sub(end) as i32) > 0
}

/// Follows the connection of the packet in `skb` at interface `ifindex`, TC point `point`.
pub fn track(skb: &SkBuff, point: u32, ifindex: u32) {
    let Ok(s) = parse(skb) else {
        return;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let forward = TcFlowKey {
        client_addr: s.src,
        server_addr: s.dst,
        ifindex,
        client_port: s.sport,
        server_port: s.dport,
    };
    if s.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        let fresh = TcExchange {
            key: forward,
            point,
            isn: s.seq,
            index: 0,
            req_seq_end: s.seq.wrapping_add(1),
            resp_seq_end: 0,
            ip_version: s.ip_version,
            syn_ns: now,
            synack_ns: 0,
            req_first_ns: 0,
            req_last_ns: 0,
            resp_first_ns: 0,
            resp_last_ns: 0,
            req_bytes: 0,
            resp_bytes: 0,
        };
        // A retransmitted SYN keeps the first one's time.
        let _ = TC_FLOWS.insert(&forward, &fresh, BPF_NOEXIST as u64);
        return;
    }
    let closing = s.flags & (TCP_FIN | TCP_RST) != 0;
    if let Some(x) = TC_FLOWS.get_ptr_mut(&forward) {
        // SAFETY: map value pointer, valid for this run.
        let x = unsafe { &mut *x };
        if s.len > 0 && advances(s.seq, s.len, x.req_seq_end) {
            if x.resp_first_ns != 0 {
                // Request bytes after a response: the previous exchange is complete.
                emit(x);
                x.index += 1;
                x.req_first_ns = 0;
                x.resp_first_ns = 0;
                x.resp_last_ns = 0;
                x.req_bytes = 0;
                x.resp_bytes = 0;
            }
            if x.req_first_ns == 0 {
                x.req_first_ns = now;
            }
            x.req_last_ns = now;
            x.req_bytes += u64::from(s.len);
            x.req_seq_end = s.seq.wrapping_add(s.len);
        }
        if closing {
            emit(x);
            let _ = TC_FLOWS.remove(&forward);
        }
        return;
    }
    let reverse = TcFlowKey {
        client_addr: s.dst,
        server_addr: s.src,
        ifindex,
        client_port: s.dport,
        server_port: s.sport,
    };
    let Some(x) = TC_FLOWS.get_ptr_mut(&reverse) else {
        return;
    };
    // SAFETY: map value pointer, valid for this run.
    let x = unsafe { &mut *x };
    if s.flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK) {
        x.resp_seq_end = s.seq.wrapping_add(1);
        if x.synack_ns == 0 {
            x.synack_ns = now;
        }
        return;
    }
    if s.len > 0 && x.req_first_ns != 0 && advances(s.seq, s.len, x.resp_seq_end) {
        if x.resp_first_ns == 0 {
            x.resp_first_ns = now;
        }
        x.resp_last_ns = now;
        x.resp_bytes += u64::from(s.len);
        x.resp_seq_end = s.seq.wrapping_add(s.len);
    }
    if closing {
        emit(x);
        let _ = TC_FLOWS.remove(&reverse);
    }
}
