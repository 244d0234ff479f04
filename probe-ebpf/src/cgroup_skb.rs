//! `cgroup_skb` ingress and egress on the cgroup v2 root: every packet delivered to or sent by
//! a socket of any container, attributed to the socket's cgroup.
//!
//! - Ingress stamps the first SYN of each passive connection: the `sock:inet_sock_set_state`
//!   SYN_RECV transition only fires once the final ACK is in, so it cannot see the start of a
//!   passive handshake, while the listener's ingress filter runs for the SYN itself.
//! - Both directions track request/response exchanges per socket (see
//!   `probe_common::exchange`) from the payload's timing alone.

use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use probe_common::{
    conn::{AF_INET, AF_INET6, FlowKey, SynSeen},
    exchange::{Exchange, PHASE_REQUEST, PHASE_RESPONSE, ROLE_CLIENT, ROLE_SERVER},
    hist::{POINT_SOCKET_IN, POINT_SOCKET_OUT},
    stats::{self, LRU_EXCHANGES, LRU_FLOW_COOKIE, LRU_SYNS},
};

use crate::{
    datapath,
    maps::{
        EXCHANGE_EVENTS, EXCHANGES, FLOW_COOKIE, SYNS, count, lru_insert, lru_remove, wake_flags,
    },
    ratelimit,
};

const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
/// An older stamp for the same flow belongs to an earlier connection, not a SYN retransmit
/// (Linux retransmits SYNs after 1, 3, 7 s...).
const SYN_STALE_NS: u64 = 30_000_000_000;

/// A TCP segment as the socket sees it.
struct Segment {
    /// Local = this host's socket, whichever the direction.
    flow: FlowKey,
    flags: u8,
    payload: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

fn cgroup_of(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the skb pointer is the program's context.
    unsafe { bpf_skb_cgroup_id(ctx.skb.skb) }
}

#[cgroup_skb]
pub fn hp_skb_in(ctx: SkBuffContext) -> i32 {
    if let Ok(k) = datapath::key(&ctx.skb, 0) {
        datapath::pass(&k, POINT_SOCKET_IN, 0, cgroup_of(&ctx));
    }
    if let Ok(seg) = parse(&ctx, Dir::In) {
        if seg.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
            stamp_syn(&ctx, &seg);
        } else {
            track(&ctx, &seg, Dir::In);
        }
    }
    // Observe only: always let the packet through.
    1
}

#[cgroup_skb]
pub fn hp_skb_out(ctx: SkBuffContext) -> i32 {
    if let Ok(k) = datapath::key(&ctx.skb, 0) {
        datapath::pass(&k, POINT_SOCKET_OUT, 0, cgroup_of(&ctx));
    }
    if let Ok(seg) = parse(&ctx, Dir::Out) {
        track(&ctx, &seg, Dir::Out);
    }
    1
}

fn parse(ctx: &SkBuffContext, dir: Dir) -> Result<Segment, i64> {
    // cgroup_skb sees the packet from its network header. Loads are fixed-size: load_bytes
    // clamps its length to the packet, which the verifier rejects as a possibly zero-sized read.
    let first = ctx.load::<u8>(0)?;
    let mut flow = FlowKey {
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: 0,
        remote_port: 0,
        family: 0,
        _pad: 0,
    };
    let (src, dst): ([u8; 16], [u8; 16]);
    let (tcp_off, ip_payload) = match first >> 4 {
        4 => {
            let ihl = (first & 0x0f) as u32 * 4;
            if ctx.load::<u8>(9)? != IPPROTO_TCP || ihl < 20 {
                return Err(0);
            }
            flow.family = AF_INET;
            let s: [u8; 4] = ctx.load(12)?;
            let d: [u8; 4] = ctx.load(16)?;
            let mut s16 = [0u8; 16];
            let mut d16 = [0u8; 16];
            s16[..4].copy_from_slice(&s);
            d16[..4].copy_from_slice(&d);
            (src, dst) = (s16, d16);
            let total = u16::from_be(ctx.load::<u16>(2)?) as u32;
            (ihl, total.saturating_sub(ihl))
        }
        6 => {
            // Extension headers before TCP are rare; such packets are not tracked.
            if ctx.load::<u8>(6)? != IPPROTO_TCP {
                return Err(0);
            }
            flow.family = AF_INET6;
            (src, dst) = (ctx.load(8)?, ctx.load(24)?);
            (40, u16::from_be(ctx.load::<u16>(4)?) as u32)
        }
        _ => return Err(0),
    };
    let sport = u16::from_be(ctx.load::<u16>(tcp_off as usize)?);
    let dport = u16::from_be(ctx.load::<u16>(tcp_off as usize + 2)?);
    let doff = (ctx.load::<u8>(tcp_off as usize + 12)? >> 4) as u32 * 4;
    let flags = ctx.load::<u8>(tcp_off as usize + 13)?;
    if dir == Dir::In {
        (flow.local_addr, flow.remote_addr) = (dst, src);
        (flow.local_port, flow.remote_port) = (dport, sport);
    } else {
        (flow.local_addr, flow.remote_addr) = (src, dst);
        (flow.local_port, flow.remote_port) = (sport, dport);
    }
    Ok(Segment {
        flow,
        flags,
        // An egress skb may be a TSO super-segment; its IP length still says how much payload.
        payload: ip_payload.saturating_sub(doff),
    })
}

fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

fn stamp_syn(ctx: &SkBuffContext, seg: &Segment) {
    let t = now();
    if let Some(seen) = unsafe { SYNS.get(&seg.flow) } {
        if t.saturating_sub(seen.ts_ns) < SYN_STALE_NS {
            // A retransmitted SYN: the handshake started with the first one.
            return;
        }
    }
    // SAFETY: the skb pointer is the program's context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let seen = SynSeen {
        ts_ns: t,
        cgroup_id,
    };
    if lru_insert(&SYNS, LRU_SYNS, &seg.flow, &seen).is_err() {
        count(stats::SYN_INSERT_FAILED);
    }
}

fn emit(x: &Exchange) {
    count(stats::EXCHANGES_PRODUCED);
    if !ratelimit::admit() {
        count(stats::EXCHANGES_RATE_LIMITED);
        return;
    }
    match EXCHANGE_EVENTS.reserve::<Exchange>(0) {
        Some(mut entry) => {
            entry.write(*x);
            entry.submit(wake_flags(&EXCHANGE_EVENTS));
            count(stats::EXCHANGES_SENT);
        }
        None => count(stats::EXCHANGE_DROPS),
    }
}

fn track(ctx: &SkBuffContext, seg: &Segment, dir: Dir) {
    // SAFETY: the skb pointer is the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    let closing = seg.flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0;
    let t = now();
    match EXCHANGES.get_ptr_mut(&cookie) {
        Some(x) => {
            // SAFETY: points into the map value, valid for this run. Ingress and egress of one
            // socket can race on two CPUs; a lost update costs one timestamp, never memory.
            let x = unsafe { &mut *x };
            if seg.payload > 0 {
                let request_dir = if x.role == ROLE_SERVER {
                    Dir::In
                } else {
                    Dir::Out
                };
                if dir == request_dir {
                    if x.phase == PHASE_RESPONSE {
                        // A new request: the previous exchange is complete.
                        emit(x);
                        x.req_first_ns = t;
                        x.req_bytes = 0;
                        x.resp_first_ns = 0;
                        x.resp_last_ns = 0;
                        x.resp_bytes = 0;
                        x.first_read_ns = 0;
                        x.phase = PHASE_REQUEST;
                    }
                    x.req_last_ns = t;
                    x.req_bytes += seg.payload as u64;
                } else {
                    if x.phase == PHASE_REQUEST {
                        x.resp_first_ns = t;
                        x.phase = PHASE_RESPONSE;
                    }
                    x.resp_last_ns = t;
                    x.resp_bytes += seg.payload as u64;
                }
            }
            // The server answered and closed (HTTP/1.1 `Connection: close`) before the caller
            // read the answer: the exchange stays until the caller's own FIN (or a RST), so the
            // read hooks can still time the caller's wake-up to it (`first_read_ns`).
            let answered_unread = x.role == ROLE_CLIENT
                && x.phase == PHASE_RESPONSE
                && x.first_read_ns == 0
                && dir == Dir::In
                && seg.flags & TCP_FLAG_RST == 0;
            if closing && !answered_unread {
                // Ingress and egress may both see the close (a FIN each way) at once: only the
                // one whose delete succeeds reports the exchange.
                let done = *x;
                if lru_remove(&EXCHANGES, LRU_EXCHANGES, &cookie) && done.phase == PHASE_RESPONSE {
                    emit(&done);
                }
                if done.role == ROLE_SERVER {
                    lru_remove(&FLOW_COOKIE, LRU_FLOW_COOKIE, &done.flow);
                }
            }
        }
        None if seg.payload > 0 && !closing => {
            let x = Exchange {
                req_first_ns: t,
                req_last_ns: t,
                resp_first_ns: 0,
                resp_last_ns: 0,
                req_bytes: seg.payload as u64,
                resp_bytes: 0,
                first_read_ns: 0,
                // SAFETY: the skb pointer is the program's context.
                cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.skb.skb) },
                cookie,
                flow: seg.flow,
                role: if dir == Dir::In {
                    ROLE_SERVER
                } else {
                    ROLE_CLIENT
                },
                phase: PHASE_REQUEST,
                _pad: [0; 6],
            };
            if lru_insert(&EXCHANGES, LRU_EXCHANGES, &cookie, &x).is_err() {
                count(stats::EXCHANGE_INSERT_FAILED);
            } else if x.role == ROLE_SERVER {
                let _ = lru_insert(&FLOW_COOKIE, LRU_FLOW_COOKIE, &x.flow, &cookie);
            }
        }
        None => {}
    }
}
