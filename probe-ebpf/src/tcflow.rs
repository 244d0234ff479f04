//! Per-connection exchanges at the TC points (node uplink, pods' host-side veths), streamed to
//! userspace so that a request can be followed from the uplink (the load generator's 4-tuple)
//! to the pod's socket (the 4-tuple after kube-proxy's NAT) through the client's initial
//! sequence number, which NAT does not rewrite; and so that each request's times at the uplink
//! and the pod's veth are known, not only the hop histograms.
//!
//! Kept apart from the packet-sighting histograms (`datapath.rs`): a connection enters the map
//! only when its SYN passes a TC point, and leaves it at the first FIN or RST.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::sk_buff::SkBuff,
};
use probe_common::{
    conn::AF_INET6,
    tcflow::{TC_STAT_COUNT, TC_STAT_DROPS, TC_STAT_SENT, TcExchange, TcFlowKey},
    tls::{C2S, S2C, TLS_LOST, TlsConn},
};

use crate::{
    headers::Tcp,
    maps::{SCRATCH_TC, scratch, wake_flags},
    tls,
};

/// TLS state of the connections in `TC_FLOWS` whose first payload was TLS.
#[map]
pub static TC_TLS: LruHashMap<TcFlowKey, TlsConn> = LruHashMap::with_max_entries(65536, 0);

/// Connections in progress per interface; sized by `--max-sockets`.
#[map]
pub static TC_FLOWS: LruHashMap<TcFlowKey, TcExchange> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static TC_FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

#[map]
pub static TC_FLOW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TC_STAT_COUNT, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

fn count(index: u32) {
    if let Some(slot) = TC_FLOW_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not migrate CPU while running.
        unsafe { *slot += 1 };
    }
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
        // The four TC programs share this path; the record names the connection by its
        // interface and the point its SYN passed.
        crate::log::debug!(
            "hp_tc",
            "TC_FLOW_EVENTS ring full: exchange {} of the connection whose SYN passed point {} of interface {} dropped",
            x.index,
            x.point,
            x.key.ifindex
        );
    }
}

/// True when the payload `[seq, seq + len)` reaches beyond `end` (sequence arithmetic), i.e.
/// it is not a retransmission of what was already seen.
fn advances(seq: u32, len: u32, end: u32) -> bool {
    (seq.wrapping_add(len).wrapping_sub(end) as i32) > 0
}

/// The bytes of this segment the exchange rule counts: on a TLS connection, its application
/// data records only (see `tls`). The first payload of a connection decides whether it is TLS.
/// Out of line: the TC programs' stack holds the headers, this and the record walk, not more.
#[inline(never)]
fn counted(skb: &SkBuff, tcp: &Tcp, x: &mut TcExchange, dir: usize, now: u64) -> u32 {
    let key = &x.key;
    if dir == C2S && x.index == 0 && x.req_bytes == 0 && x.tls == 0 && x.resp_bytes == 0 {
        if let Some(sc) = scratch(SCRATCH_TC)
            && tls::detect(skb, tcp, &mut sc.conn)
        {
            x.tls = sc.conn.flags as u32;
            if TC_TLS.insert(key, &sc.conn, 0).is_err() {
                x.tls |= TLS_LOST as u32;
            }
        }
    }
    if x.tls == 0 {
        return tcp.payload;
    }
    if x.tls & TLS_LOST as u32 != 0 {
        return 0;
    }
    let Some(conn) = TC_TLS.get_ptr_mut(key) else {
        x.tls |= TLS_LOST as u32;
        return 0;
    };
    // SAFETY: map value pointer, valid for this run.
    let conn = unsafe { &mut *conn };
    let app = tls::walk(skb, tcp, dir, conn, now);
    x.tls = conn.flags as u32;
    if conn.complete != 0 {
        conn.complete = 0;
        x.tls_client_first_ns = conn.client_first_ns;
        x.tls_client_last_ns = conn.client_last_ns;
        x.tls_server_first_ns = conn.server_first_ns;
        x.tls_server_last_ns = conn.server_last_ns;
    }
    app
}

/// Follows the connection of the packet `tcp` at interface `ifindex`, TC point `point`, seen
/// at `now`.
pub fn track(skb: &SkBuff, tcp: &Tcp, point: u32, ifindex: u32, now: u64) {
    let seq = u32::from_be(tcp.seq_be);
    let forward = TcFlowKey {
        client_addr: tcp.src,
        server_addr: tcp.dst,
        ifindex,
        client_port: tcp.sport,
        server_port: tcp.dport,
    };
    if tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // Built in the scratch: on the stack it would not leave room for the record walk.
        let Some(sc) = scratch(SCRATCH_TC) else {
            return;
        };
        let fresh = &mut sc.tc;
        fresh.key = forward;
        fresh.point = point;
        fresh.isn = seq;
        fresh.index = 0;
        fresh.req_seq_end = seq.wrapping_add(1);
        fresh.resp_seq_end = 0;
        fresh.ip_version = if tcp.family == AF_INET6 { 6 } else { 4 };
        fresh.syn_ns = now;
        fresh.synack_ns = 0;
        fresh.req_first_ns = 0;
        fresh.req_last_ns = 0;
        fresh.resp_first_ns = 0;
        fresh.resp_last_ns = 0;
        fresh.req_bytes = 0;
        fresh.resp_bytes = 0;
        fresh.tls = 0;
        fresh._pad = 0;
        fresh.tls_client_first_ns = 0;
        fresh.tls_client_last_ns = 0;
        fresh.tls_server_first_ns = 0;
        fresh.tls_server_last_ns = 0;
        // A retransmitted SYN keeps the first one's time.
        let _ = TC_FLOWS.insert(&forward, fresh, BPF_NOEXIST as u64);
        return;
    }
    let closing = tcp.flags & (TCP_FIN | TCP_RST) != 0;
    if let Some(x) = TC_FLOWS.get_ptr_mut(&forward) {
        // SAFETY: map value pointer, valid for this run.
        let x = unsafe { &mut *x };
        let payload = if tcp.payload > 0 && advances(seq, tcp.payload, x.req_seq_end) {
            x.req_seq_end = seq.wrapping_add(tcp.payload);
            counted(skb, tcp, x, C2S, now)
        } else {
            0
        };
        if payload > 0 {
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
            x.req_bytes += u64::from(payload);
        }
        if closing {
            emit(x);
            forget(x, &forward);
        }
        return;
    }
    let reverse = TcFlowKey {
        client_addr: tcp.dst,
        server_addr: tcp.src,
        ifindex,
        client_port: tcp.dport,
        server_port: tcp.sport,
    };
    let Some(x) = TC_FLOWS.get_ptr_mut(&reverse) else {
        return;
    };
    // SAFETY: map value pointer, valid for this run.
    let x = unsafe { &mut *x };
    if tcp.flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK) {
        x.resp_seq_end = seq.wrapping_add(1);
        if x.synack_ns == 0 {
            x.synack_ns = now;
        }
        return;
    }
    // A TLS server's handshake flight comes before any request: it is followed all the same.
    let payload = if tcp.payload > 0
        && (x.req_first_ns != 0 || x.tls != 0)
        && advances(seq, tcp.payload, x.resp_seq_end)
    {
        x.resp_seq_end = seq.wrapping_add(tcp.payload);
        counted(skb, tcp, x, S2C, now)
    } else {
        0
    };
    if payload > 0 && x.req_first_ns != 0 {
        if x.resp_first_ns == 0 {
            x.resp_first_ns = now;
        }
        x.resp_last_ns = now;
        x.resp_bytes += u64::from(payload);
    }
    if closing {
        emit(x);
        forget(x, &reverse);
    }
}

fn forget(x: &TcExchange, key: &TcFlowKey) {
    if x.tls != 0 {
        let _ = TC_TLS.remove(key);
    }
    let _ = TC_FLOWS.remove(key);
}
