//! `cgroup_skb` ingress and egress on the cgroup v2 root: every packet delivered to or sent by
//! a socket of any container, attributed to the socket's cgroup.
//!
//! - Ingress stamps the first SYN of each passive connection: the `sock:inet_sock_set_state`
//!   SYN_RECV transition only fires once the final ACK is in, so it cannot see the start of a
//!   passive handshake, while the listener's ingress filter runs for the SYN itself.
//! - Both directions track request/response exchanges per socket (see
//!   `probe_common::exchange`) from the payload's timing alone.

use aya_ebpf::{
    bindings::BPF_TCP_LISTEN,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_fullsock, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use probe_common::{
    conn::{FlowKey, SynSeen},
    exchange::{Exchange, PHASE_REQUEST, PHASE_RESPONSE, ROLE_CLIENT, ROLE_SERVER},
    hist::{POINT_SOCKET_IN, POINT_SOCKET_OUT},
    stats::{self, LRU_EARLY_REQUESTS, LRU_EXCHANGES, LRU_FLOW_COOKIE, LRU_SYNS},
};

use crate::{
    datapath,
    headers::{self, Tcp},
    maps::{
        EARLY_REQUESTS, EXCHANGE_EVENTS, EXCHANGES, FLOW_COOKIE, SYNS, count, lru_insert,
        lru_remove, wake_flags,
    },
    ratelimit,
};

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

/// Every network namespace's loopback device has this index. Packets on it never reach a
/// veth or the uplink, so they take no part in the datapath hops.
const LOOPBACK_IFINDEX: u32 = 1;

fn ifindex(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the context's skb pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[cgroup_skb]
pub fn hp_skb_in(ctx: SkBuffContext) -> i32 {
    if let Ok(tcp) = headers::at_l3(&ctx.skb) {
        let t = now();
        if ifindex(&ctx) != LOOPBACK_IFINDEX {
            datapath::pass(&tcp.pkt_key(), POINT_SOCKET_IN, 0, cgroup_of(&ctx), t);
        }
        let seg = Segment::of(&tcp, Dir::In);
        if seg.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
            stamp_syn(&ctx, &seg, t);
        } else {
            track(&ctx, &seg, Dir::In, t);
        }
    }
    // Observe only: always let the packet through.
    1
}

#[cgroup_skb]
pub fn hp_skb_out(ctx: SkBuffContext) -> i32 {
    if let Ok(tcp) = headers::at_l3(&ctx.skb) {
        let t = now();
        if ifindex(&ctx) != LOOPBACK_IFINDEX {
            datapath::pass(&tcp.pkt_key(), POINT_SOCKET_OUT, 0, cgroup_of(&ctx), t);
        }
        track(&ctx, &Segment::of(&tcp, Dir::Out), Dir::Out, t);
    }
    1
}

impl Segment {
    /// The packet's segment as the socket sees it: local is the receiver's end for `Dir::In`,
    /// the sender's for `Dir::Out`.
    fn of(t: &Tcp, dir: Dir) -> Self {
        let (local, remote) = match dir {
            Dir::In => ((t.dst, t.dport), (t.src, t.sport)),
            Dir::Out => ((t.src, t.sport), (t.dst, t.dport)),
        };
        Segment {
            flow: FlowKey {
                local_addr: local.0,
                remote_addr: remote.0,
                local_port: local.1,
                remote_port: remote.1,
                family: t.family,
                _pad: 0,
            },
            flags: t.flags,
            payload: t.payload,
        }
    }
}

fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

fn stamp_syn(ctx: &SkBuffContext, seg: &Segment, t: u64) {
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
    if let Err(e) = lru_insert(&SYNS, LRU_SYNS, &seg.flow, &seen) {
        count(stats::SYN_INSERT_FAILED);
        crate::log::warning!(
            "hp_skb_in",
            "SYNS insert failed (err {}): a SYN to cgroup {} not stamped, its handshake starts at SYN_RECV",
            e,
            cgroup_id
        );
    }
}

fn emit(x: &Exchange, dir: Dir) {
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
        None => {
            count(stats::EXCHANGE_DROPS);
            crate::log::debug!(
                "hp_skb_in" if (dir == Dir::In) else "hp_skb_out",
                "EXCHANGE_EVENTS ring full: exchange of cookie {} (cgroup {}) dropped",
                x.cookie,
                x.cgroup_id
            );
        }
    }
}

/// Whether the packet is filtered for a listening socket. A data segment that arrives while its
/// connection is still a request socket — the handshake's last ACK lost, or overtaken by the
/// data on another CPU's backlog — completes the handshake in the listener's context, and this
/// program runs with the listener, whose cookie is not the new connection's.
fn at_listener(ctx: &SkBuffContext) -> bool {
    // SAFETY: the context's skb pointer is valid for the run; `sk` may be null, and
    // `bpf_sk_fullsock` returns null for a socket that is not a full one.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return false;
        }
        let full = bpf_sk_fullsock(sk);
        !full.is_null() && (*full).state == BPF_TCP_LISTEN
    }
}

/// A request that arrived at a listener waits here, by flow, for the new connection's first
/// packet, which carries it on under the connection's own cookie.
fn park_early_request(ctx: &SkBuffContext, seg: &Segment, t: u64) {
    // SAFETY: the value is copied out before the map changes.
    let x = match unsafe { EARLY_REQUESTS.get(&seg.flow) } {
        Some(x) => {
            let mut x = *x;
            x.req_last_ns = t;
            x.req_bytes += seg.payload as u64;
            x
        }
        None => new_exchange(ctx, seg, 0, ROLE_SERVER, t),
    };
    if let Err(e) = lru_insert(&EARLY_REQUESTS, LRU_EARLY_REQUESTS, &seg.flow, &x) {
        count(stats::EXCHANGE_INSERT_FAILED);
        crate::log::warning!(
            "hp_skb_in",
            "EARLY_REQUESTS insert failed (err {}): a request to cgroup {} arriving at its listener is lost",
            e,
            x.cgroup_id
        );
    }
}

/// The request a listener saw for this flow, now under the connection's cookie: taken on by
/// the connection's first packet of any kind (usually its ACK of that request, sent before the
/// process can read it), so that the read hooks find the exchange.
fn adopt_early_request(seg: &Segment, cookie: u64, dir: Dir) -> Option<*mut Exchange> {
    // SAFETY: the value is copied out before the map changes.
    let mut x = unsafe { EARLY_REQUESTS.get(&seg.flow) }.copied()?;
    lru_remove(&EARLY_REQUESTS, LRU_EARLY_REQUESTS, &seg.flow);
    x.cookie = cookie;
    if !start_exchange(&x, dir) {
        return None;
    }
    EXCHANGES.get_ptr_mut(&cookie)
}

/// Tracks `x` under its cookie (a server's also under its flow, for the read hooks); false
/// when the map refused it, which is counted.
fn start_exchange(x: &Exchange, dir: Dir) -> bool {
    if let Err(e) = lru_insert(&EXCHANGES, LRU_EXCHANGES, &x.cookie, x) {
        count(stats::EXCHANGE_INSERT_FAILED);
        crate::log::warning!(
            "hp_skb_in" if (dir == Dir::In) else "hp_skb_out",
            "EXCHANGES insert failed (err {}): socket cookie {} of cgroup {} (role {}) not tracked",
            e,
            x.cookie,
            x.cgroup_id,
            x.role
        );
        return false;
    }
    if x.role == ROLE_SERVER {
        let _ = lru_insert(&FLOW_COOKIE, LRU_FLOW_COOKIE, &x.flow, &x.cookie);
    }
    true
}

/// A request's first segment, as an exchange in its request phase.
fn new_exchange(ctx: &SkBuffContext, seg: &Segment, cookie: u64, role: u8, t: u64) -> Exchange {
    Exchange {
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
        role,
        phase: PHASE_REQUEST,
        _pad: [0; 6],
    }
}

fn track(ctx: &SkBuffContext, seg: &Segment, dir: Dir, t: u64) {
    let closing = seg.flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0;
    if dir == Dir::In && seg.payload > 0 && at_listener(ctx) {
        park_early_request(ctx, seg, t);
        return;
    }
    // SAFETY: the skb pointer is the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    let found = match EXCHANGES.get_ptr_mut(&cookie) {
        Some(x) => Some(x),
        // Not the listener's own packets (a racing handshake ACK): the cookie must be the
        // connection's.
        None if !at_listener(ctx) => adopt_early_request(seg, cookie, dir),
        None => None,
    };
    match found {
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
                        emit(x, dir);
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
                    emit(&done, dir);
                }
                if done.role == ROLE_SERVER {
                    lru_remove(&FLOW_COOKIE, LRU_FLOW_COOKIE, &done.flow);
                }
            }
        }
        None if seg.payload > 0 && !closing => {
            let role = if dir == Dir::In {
                ROLE_SERVER
            } else {
                ROLE_CLIENT
            };
            start_exchange(&new_exchange(ctx, seg, cookie, role, t), dir);
        }
        None => {}
    }
}
