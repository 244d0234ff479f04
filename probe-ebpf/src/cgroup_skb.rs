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
    exchange::{
        EXHOP_APP, EXHOP_APP_PROCESSING, EXHOP_APP_QUEUE, EXHOP_UPSTREAM, EXHOP_UPSTREAM_READ_WAIT,
        Exchange, KIND_REQUEST, KIND_TLS_HANDSHAKE, PHASE_NONE, PHASE_REQUEST, PHASE_RESPONSE,
        ROLE_CLIENT, ROLE_SERVER,
    },
    hist::{POINT_SOCKET_IN, POINT_SOCKET_OUT},
    stats::{self, LRU_EARLY_REQUESTS, LRU_EXCHANGES, LRU_FLOW_COOKIE, LRU_SYNS},
    tls::{TLS_LOST, TlsConn},
};

use crate::{
    datapath,
    headers::{self, Tcp},
    maps::{
        AGGREGATE_PENDING, EARLY_REQUESTS, EXCHANGE_EVENTS, EXCHANGE_HIST, EXCHANGE_HIST_KEY,
        EXCHANGES, FLOW_COOKIE, SCRATCH_IN, SCRATCH_OUT, SYNS, count, datapath_points,
        early_parked, early_parked_at, lru_insert, lru_remove, scratch, wake_flags,
    },
    ratelimit,
    tls::{self, TLS, TLS_EARLY},
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

impl Dir {
    fn slot(self) -> u32 {
        match self {
            Dir::In => SCRATCH_IN,
            Dir::Out => SCRATCH_OUT,
        }
    }
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
        if ifindex(&ctx) != LOOPBACK_IFINDEX && datapath_points() {
            datapath::pass(&tcp.pkt_key(), POINT_SOCKET_IN, 0, cgroup_of(&ctx), t);
        }
        let seg = Segment::of(&tcp, Dir::In);
        if seg.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
            stamp_syn(&ctx, &seg, t);
        } else if seg.payload > 0 && at_listener(&ctx) {
            // Called from here, not from `track`: the stack holds this, `track` or the
            // listener's path, not both with the record walk.
            park_early_request(&ctx, &tcp, &seg, t);
        } else {
            track(&ctx, &tcp, &seg, Dir::In, t);
        }
        flush_aggregate();
    }
    // Observe only: always let the packet through.
    1
}

#[cgroup_skb]
pub fn hp_skb_out(ctx: SkBuffContext) -> i32 {
    if let Ok(tcp) = headers::at_l3(&ctx.skb) {
        let t = now();
        if ifindex(&ctx) != LOOPBACK_IFINDEX && datapath_points() {
            datapath::pass(&tcp.pkt_key(), POINT_SOCKET_OUT, 0, cgroup_of(&ctx), t);
        }
        track(&ctx, &tcp, &Segment::of(&tcp, Dir::Out), Dir::Out, t);
        flush_aggregate();
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
        defer_aggregate(x);
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
            defer_aggregate(x);
            crate::log::debug!(
                "hp_skb_in" if (dir == Dir::In) else "hp_skb_out",
                "EXCHANGE_EVENTS ring full: exchange of cookie {} (cgroup {}) dropped",
                x.cookie,
                x.cgroup_id
            );
        }
    }
}

/// An exchange without a record: its socket hops go to the kernel's histograms, so the hop
/// series count it all the same (`probe_common::exchange::ExHistKey`). A function of its own,
/// called from three places, so the programs carry it once.
/// Keeps an exchange without a record for `flush_aggregate`. A run of the program ends at
/// most one exchange in practice; a second one in the same run is counted as lost to the
/// series (`exchange_hist_failed`).
fn defer_aggregate(x: &Exchange) {
    if x.kind != KIND_REQUEST || x.resp_first_ns == 0 {
        return;
    }
    let Some(slot) = AGGREGATE_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not migrate while running.
    let slot = unsafe { &mut *slot };
    if slot.phase != PHASE_NONE {
        count(stats::EXCHANGE_HIST_FAILED);
        return;
    }
    *slot = *x;
    slot.phase = PHASE_RESPONSE;
}

/// At the end of a run of the program, with the stack its calls used free again.
#[inline(always)]
fn flush_aggregate() {
    let Some(slot) = AGGREGATE_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `defer_aggregate`.
    let slot = unsafe { &mut *slot };
    if slot.phase != PHASE_NONE {
        aggregate(slot);
        slot.phase = PHASE_NONE;
    }
}

#[inline(never)]
fn aggregate(x: &Exchange) {
    count(stats::EXCHANGES_AGGREGATED);
    let Some(k) = EXCHANGE_HIST_KEY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not migrate while running.
    let k = unsafe { &mut *k };
    let server = x.role == ROLE_SERVER;
    k.cgroup_id = x.cgroup_id;
    k.remote_addr = if server { [0; 16] } else { x.flow.remote_addr };
    k.port = if server {
        x.flow.local_port
    } else {
        x.flow.remote_port
    };
    k.family = x.flow.family;
    k.hop = if server { EXHOP_APP } else { EXHOP_UPSTREAM };
    k._pad = [0; 3];
    let mut ok = datapath::observe_in(
        &EXCHANGE_HIST,
        k,
        x.resp_first_ns.saturating_sub(x.req_first_ns),
    );
    let read = x.first_read_ns;
    if server && x.req_first_ns <= read && read <= x.resp_first_ns && read != 0 {
        k.hop = EXHOP_APP_QUEUE;
        ok &= datapath::observe_in(&EXCHANGE_HIST, k, read - x.req_first_ns);
        k.hop = EXHOP_APP_PROCESSING;
        ok &= datapath::observe_in(&EXCHANGE_HIST, k, x.resp_first_ns - read);
    }
    if !server && read != 0 && read >= x.resp_first_ns {
        k.hop = EXHOP_UPSTREAM_READ_WAIT;
        ok &= datapath::observe_in(&EXCHANGE_HIST, k, read - x.resp_first_ns);
    }
    if !ok {
        count(stats::EXCHANGE_HIST_FAILED);
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
/// packet, which carries it on under the connection's own cookie. A ClientHello waits the same
/// way, its TLS state beside it in `TLS_EARLY`.
#[inline(never)]
fn park_early_request(ctx: &SkBuffContext, tcp: &Tcp, seg: &Segment, t: u64) {
    let Some(sc) = scratch(SCRATCH_IN) else {
        return;
    };
    let x = &mut sc.x;
    early_parked_at(t);
    // SAFETY: the value is copied out before the map changes.
    if let Some(parked) = unsafe { EARLY_REQUESTS.get(&seg.flow) } {
        *x = *parked;
        if x.tls != 0 {
            x.tls = follow_early(ctx, tcp, &seg.flow, None, t);
        } else {
            x.req_last_ns = t;
            x.req_bytes += seg.payload as u64;
        }
    } else {
        fill_exchange(x, ctx, seg, 0, ROLE_SERVER);
        if tls::detect(&ctx.skb, tcp, &mut sc.conn) {
            x.tls = follow_early(ctx, tcp, &seg.flow, Some(&mut sc.conn), t);
        } else {
            x.phase = PHASE_REQUEST;
            x.req_first_ns = t;
            x.req_last_ns = t;
            x.req_bytes = seg.payload as u64;
        }
    }
    if let Err(e) = lru_insert(&EARLY_REQUESTS, LRU_EARLY_REQUESTS, &seg.flow, x) {
        count(stats::EXCHANGE_INSERT_FAILED);
        crate::log::warning!(
            "hp_skb_in",
            "EARLY_REQUESTS insert failed (err {}): a request to cgroup {} arriving at its listener is lost",
            e,
            x.cgroup_id
        );
    }
}

/// Follows a parked ClientHello's records (a new one's in `fresh`); returns the connection's
/// TLS bits, with `TLS_LOST` when its state is gone.
fn follow_early(
    ctx: &SkBuffContext,
    tcp: &Tcp,
    flow: &FlowKey,
    fresh: Option<&mut TlsConn>,
    t: u64,
) -> u8 {
    let conn = match fresh {
        Some(c) => {
            tls::walk(&ctx.skb, tcp, tls::index(true), c, t);
            if TLS_EARLY.insert(flow, &*c, 0).is_err() {
                tls::lose(c);
            }
            return c.flags;
        }
        None => match TLS_EARLY.get_ptr_mut(flow) {
            // SAFETY: points into the map value, valid for this run.
            Some(c) => unsafe { &mut *c },
            None => return TLS_LOST,
        },
    };
    tls::walk(&ctx.skb, tcp, tls::index(true), conn, t);
    conn.flags
}

/// The request a listener saw for this flow, now under the connection's cookie: taken on by
/// the connection's first packet of any kind (usually its ACK of that request, sent before the
/// process can read it), so that the read hooks find the exchange.
#[inline(never)]
fn adopt_early_request(seg: &Segment, cookie: u64, dir: Dir) -> Option<*mut Exchange> {
    let sc = scratch(dir.slot())?;
    let x = &mut sc.x;
    // SAFETY: the value is copied out before the map changes.
    *x = *unsafe { EARLY_REQUESTS.get(&seg.flow) }?;
    lru_remove(&EARLY_REQUESTS, LRU_EARLY_REQUESTS, &seg.flow);
    x.cookie = cookie;
    if x.tls != 0 && x.tls & TLS_LOST == 0 {
        let moved = match TLS_EARLY.get_ptr_mut(&seg.flow) {
            // SAFETY: a map value handed straight back to the kernel to copy.
            Some(conn) => TLS.insert(&cookie, unsafe { &*conn }, 0).is_ok(),
            None => false,
        };
        if !moved {
            x.tls |= TLS_LOST;
            count(stats::TLS_LOST);
        }
        let _ = TLS_EARLY.remove(&seg.flow);
    }
    if !start_exchange(x, dir) {
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

/// A socket's exchange before its first request, written into `x`: `role` from the direction
/// of its first payload.
fn fill_exchange(x: &mut Exchange, ctx: &SkBuffContext, seg: &Segment, cookie: u64, role: u8) {
    x.req_first_ns = 0;
    x.req_last_ns = 0;
    x.resp_first_ns = 0;
    x.resp_last_ns = 0;
    x.req_bytes = 0;
    x.resp_bytes = 0;
    x.first_read_ns = 0;
    // SAFETY: the skb pointer is the program's context.
    x.cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    x.cookie = cookie;
    x.flow = seg.flow;
    x.role = role;
    x.phase = PHASE_NONE;
    x.kind = KIND_REQUEST;
    x.tls = 0;
    x._pad = [0; 4];
}

/// Starts tracking a socket at its first payload (which the caller then counts): a TLS one
/// also gets its record state. Out of line, as the other rare paths, which build their structs
/// in `SCRATCH`: inlined, they would take the stack the record walk needs. Returns null when
/// the map refused the socket (counted): a raw pointer, as BPF functions take five registers
/// and an `Option` would be returned through a sixth.
#[inline(never)]
fn begin(ctx: &SkBuffContext, tcp: &Tcp, seg: &Segment, cookie: u64, dir: Dir) -> *mut Exchange {
    let Some(sc) = scratch(dir.slot()) else {
        return core::ptr::null_mut();
    };
    let role = if dir == Dir::In {
        ROLE_SERVER
    } else {
        ROLE_CLIENT
    };
    let x = &mut sc.x;
    fill_exchange(x, ctx, seg, cookie, role);
    if tls::detect(&ctx.skb, tcp, &mut sc.conn) {
        x.tls = sc.conn.flags;
        if TLS.insert(&cookie, &sc.conn, 0).is_err() {
            x.tls |= TLS_LOST;
            count(stats::TLS_LOST);
        }
    }
    if !start_exchange(x, dir) {
        return core::ptr::null_mut();
    }
    EXCHANGES
        .get_ptr_mut(&cookie)
        .unwrap_or(core::ptr::null_mut())
}

/// Reports a completed handshake as an exchange of its own kind. Out of line: its copy of the
/// exchange would not fit the caller's stack beside the record walk's.
#[inline(never)]
fn emit_handshake(x: &Exchange, conn: &TlsConn, dir: Dir) {
    let mut hs = *x;
    hs.kind = KIND_TLS_HANDSHAKE;
    hs.phase = PHASE_RESPONSE;
    hs.req_first_ns = conn.client_first_ns;
    hs.req_last_ns = conn.client_last_ns;
    hs.resp_first_ns = conn.server_first_ns;
    hs.resp_last_ns = conn.server_last_ns;
    hs.req_bytes = conn.client_bytes as u64;
    hs.resp_bytes = conn.server_bytes as u64;
    hs.first_read_ns = 0;
    emit(&hs, dir);
}

/// The bytes of this segment the exchange rule counts: on a TLS connection, its application
/// data records only. A completed handshake is reported here, as an exchange of its own kind.
fn counted_payload(
    ctx: &SkBuffContext,
    tcp: &Tcp,
    x: &mut Exchange,
    request_dir: bool,
    dir: Dir,
    t: u64,
) -> u32 {
    if x.tls == 0 {
        return tcp.payload;
    }
    if x.tls & TLS_LOST != 0 {
        return 0;
    }
    let Some(conn) = TLS.get_ptr_mut(&x.cookie) else {
        // Evicted: what follows cannot be told apart any more.
        x.tls |= TLS_LOST;
        count(stats::TLS_LOST);
        return 0;
    };
    // SAFETY: points into the map value, valid for this run.
    let conn = unsafe { &mut *conn };
    let app = tls::walk(&ctx.skb, tcp, tls::index(request_dir), conn, t);
    x.tls = conn.flags;
    if conn.complete != 0 {
        conn.complete = 0;
        emit_handshake(x, conn, dir);
    }
    app
}

fn track(ctx: &SkBuffContext, tcp: &Tcp, seg: &Segment, dir: Dir, t: u64) {
    let closing = seg.flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0;
    // A bare ACK (or a SYN-ACK) changes no exchange: below, all it could do is take on a
    // request a listener parked. About half of a page load's segments are such; with no
    // request parked lately they skip the cookie, the exchange lookup and, on a socket
    // without an exchange, the listener check and the parked lookup.
    if seg.payload == 0 && !closing && !early_parked(t) {
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
    let found = match found {
        Some(x) => Some(x),
        None if seg.payload > 0 && !closing => {
            Some(begin(ctx, tcp, seg, cookie, dir)).filter(|x| !x.is_null())
        }
        None => None,
    };
    if let Some(x) = found {
        // SAFETY: points into the map value, valid for this run. Ingress and egress of one
        // socket can race on two CPUs; a lost update costs one timestamp, never memory.
        let x = unsafe { &mut *x };
        if seg.payload > 0 {
            let request_dir = if x.role == ROLE_SERVER {
                Dir::In
            } else {
                Dir::Out
            };
            let payload = counted_payload(ctx, tcp, x, dir == request_dir, dir, t);
            if payload == 0 {
                // Handshake records, tickets, alerts, a retransmission: no request, no response.
            } else if dir == request_dir {
                if x.phase != PHASE_REQUEST {
                    if x.phase == PHASE_RESPONSE {
                        // A new request: the previous exchange is complete.
                        emit(x, dir);
                    }
                    x.req_first_ns = t;
                    x.req_bytes = 0;
                    x.resp_first_ns = 0;
                    x.resp_last_ns = 0;
                    x.resp_bytes = 0;
                    x.first_read_ns = 0;
                    x.phase = PHASE_REQUEST;
                }
                x.req_last_ns = t;
                x.req_bytes += payload as u64;
            } else if x.phase != PHASE_NONE {
                if x.phase == PHASE_REQUEST {
                    x.resp_first_ns = t;
                    x.phase = PHASE_RESPONSE;
                }
                x.resp_last_ns = t;
                x.resp_bytes += payload as u64;
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
            let Some(sc) = scratch(dir.slot()) else {
                return;
            };
            let done = &mut sc.x;
            *done = *x;
            if lru_remove(&EXCHANGES, LRU_EXCHANGES, &cookie) {
                if done.phase == PHASE_RESPONSE && done.tls & TLS_LOST == 0 {
                    emit(done, dir);
                }
                if done.tls != 0 {
                    let _ = TLS.remove(&cookie);
                }
            }
            if done.role == ROLE_SERVER {
                lru_remove(&FLOW_COOKIE, LRU_FLOW_COOKIE, &done.flow);
            }
        }
    }
}
