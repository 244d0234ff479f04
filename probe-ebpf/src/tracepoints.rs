//! `sock:inet_sock_set_state`: handshake latency and connection lifetime, counted into the
//! socket histograms (`SOCK_HIST`) where they happen: a ring record each, decoded and
//! recorded by hopprobe, was 16 of a mesh page load's 42 records and the wake-ups of a ring of
//! their own (`cargo xtask bench-probe`, 2026-12-05).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use probe_common::{
    conn::{
        AF_INET, AF_INET6, ConnState, FLAG_START_FROM_SYN, FlowKey, PeerKey, SIDE_ACTIVE,
        SIDE_PASSIVE, TCP_RESETS_RECEIVED, TCP_RESETS_SENT, TCP_RETRANSMITS,
    },
    exchange::{
        Exchange, PHASE_REQUEST, PHASE_RESPONSE, READ_HOOK_RECV_LENGTH, READ_HOOK_SYSCALLS,
        ROLE_SERVER,
    },
    layout::{
        Field,
        sock::{inet_sock_set_state as set_state, sock_recv_length as recv},
        tcp::{tcp_rcv_space_adjust, tcp_receive_reset, tcp_retransmit_skb, tcp_send_reset},
    },
    sockops::{
        FlowSock, METRIC_FAILED_CONNECT, METRIC_HANDSHAKE, METRIC_HANDSHAKE_FROM_SYN_RECV,
        METRIC_LIFETIME, SockHistKey, unit_ns,
    },
    stats::{self, LRU_CONNS, LRU_FLOW_SOCK, LRU_PEER_FLOW, LRU_SK_FLOW, LRU_SYNS},
};

use crate::{
    datapath::observe_in,
    maps::{
        CONNS, EXCHANGES, FLOW_COOKIE, FLOW_SOCK, PEER_FLOW, READ_HOOK, READS, SK_FLOW, SOCK_HIST,
        SYNS, TCP_COUNTERS, count, layout, lru_insert, lru_remove,
    },
};

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn hp_sock_set_state(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_set_state(&ctx) {
        // A TCP socket is AF_INET or AF_INET6 (err 0 says it was neither) and its fields are
        // readable: either failing means the offsets read from tracefs do not fit this event.
        crate::log::warning!(
            "hp_sock_set_state",
            "inet_sock_set_state: a TCP event's fields did not parse (err {}): does the tracepoint layout match this kernel?",
            e
        );
    }
    0
}

/// Reads `field` of a tracepoint record at the offset the shared table
/// (`probe_common::layout`) gives, as the type the table gives: a load from the context at a
/// constant offset, which the verifier allows for tracepoint programs, instead of a
/// `bpf_probe_read_kernel` call per field (15–25 % of the tracepoint programs' time in perf,
/// `cargo xtask bench-probe`).
///
/// # Safety
/// The offset must have been checked against the tracepoint's format (userspace does so before
/// attaching); every table offset is a multiple of its field's size, as the verifier requires
/// of context loads.
#[inline(always)]
pub unsafe fn read_field<T>(ctx: &TracePointContext, field: Field<T>) -> Result<T, i32> {
    // SAFETY: the caller's; the load stays in the record the context points to.
    Ok(unsafe { load_ctx(ctx, field.at()) })
}

/// A `T` at constant offset `at` of the context, in loads of the field's natural size: a
/// 16-byte address as two 8-byte loads. Volatile so that LLVM neither merges nor splits them
/// into sizes the verifier refuses on a context.
///
/// # Safety
/// `at` must be a multiple of `T`'s size (of 8 for 16 bytes) inside the record.
#[inline(always)]
unsafe fn load_ctx<T>(ctx: &TracePointContext, at: usize) -> T {
    const { assert!(matches!(core::mem::size_of::<T>(), 1 | 2 | 4 | 8 | 16)) };
    let base = ctx.as_ptr() as *const u8;
    // SAFETY: the caller's; `transmute_copy` reads exactly `size_of::<T>()` bytes of what was
    // loaded, which has that size.
    unsafe {
        match core::mem::size_of::<T>() {
            1 => core::mem::transmute_copy(&core::ptr::read_volatile(base.add(at))),
            2 => core::mem::transmute_copy(&core::ptr::read_volatile(base.add(at) as *const u16)),
            4 => core::mem::transmute_copy(&core::ptr::read_volatile(base.add(at) as *const u32)),
            8 => core::mem::transmute_copy(&core::ptr::read_volatile(base.add(at) as *const u64)),
            _ => {
                let words: [u64; 2] = [
                    core::ptr::read_volatile(base.add(at) as *const u64),
                    core::ptr::read_volatile(base.add(at + 8) as *const u64),
                ];
                core::mem::transmute_copy(&words)
            }
        }
    }
}

/// Reads `field` at `offset`, the kernel's offset for it (written from tracefs), as the type the
/// table gives: a context load where the kernel's offset is the table's (6.1 through 6.18), a
/// bounded helper read elsewhere.
///
/// # Safety
/// As [`read_field`].
#[inline(always)]
unsafe fn read_followed<T>(
    ctx: &TracePointContext,
    field: Field<T>,
    offset: u16,
) -> Result<T, i32> {
    if offset == field.offset {
        // SAFETY: the caller's.
        return unsafe { read_field(ctx, field) };
    }
    // SAFETY: the caller's.
    unsafe { ctx.read_at(offset as usize) }
}

/// The socket as the tracepoint describes it.
struct Sock {
    id: u64,
    flow: FlowKey,
}

fn read_sock(ctx: &TracePointContext) -> Result<Sock, i32> {
    let l = layout();
    // SAFETY: offsets come from the tracepoint's format; reads are bounds-checked by the helper.
    unsafe {
        let family = read_followed(ctx, set_state::FAMILY, l.family)?;
        let mut flow = FlowKey {
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: read_followed(ctx, set_state::SPORT, l.sport)?,
            remote_port: read_followed(ctx, set_state::DPORT, l.dport)?,
            family,
            _pad: 0,
        };
        if family == AF_INET6 {
            flow.local_addr = read_followed(ctx, set_state::SADDR_V6, l.saddr_v6)?;
            flow.remote_addr = read_followed(ctx, set_state::DADDR_V6, l.daddr_v6)?;
            flow.unmap_v4();
        } else if family == AF_INET {
            let s = read_followed(ctx, set_state::SADDR, l.saddr)?;
            let d = read_followed(ctx, set_state::DADDR, l.daddr)?;
            flow.local_addr[..4].copy_from_slice(&s);
            flow.remote_addr[..4].copy_from_slice(&d);
        } else {
            return Err(0);
        }
        Ok(Sock {
            id: read_followed(ctx, set_state::SKADDR, l.skaddr)?,
            flow,
        })
    }
}

fn try_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout();
    // SAFETY: as in `read_sock`.
    let (protocol, old, new) = unsafe {
        (
            read_followed(ctx, set_state::PROTOCOL, l.protocol)?,
            read_followed(ctx, set_state::OLDSTATE, l.oldstate)?,
            read_followed(ctx, set_state::NEWSTATE, l.newstate)?,
        )
    };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    match new {
        TCP_SYN_SENT => {
            let sock = read_sock(ctx)?;
            // connect() runs in the caller's task, so the current cgroup is the socket's.
            let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
            track(sock.id, now(), cgroup_id, SIDE_ACTIVE, 0);
        }
        TCP_SYN_RECV => {
            // The child socket is created when the final ACK arrives, in softirq context, so
            // the current task says nothing about the owner; the cgroup_skb program stamped the
            // first SYN with the listener's cgroup.
            let sock = read_sock(ctx)?;
            let t = now();
            let (start, cgroup_id, flags) = match unsafe { SYNS.get(&sock.flow) } {
                Some(syn) => (syn.ts_ns, syn.cgroup_id, FLAG_START_FROM_SYN),
                None => (t, 0, 0),
            };
            lru_remove(&SYNS, LRU_SYNS, &sock.flow);
            track(sock.id, start, cgroup_id, SIDE_PASSIVE, flags);
        }
        TCP_ESTABLISHED => {
            let sock = read_sock(ctx)?;
            let Some(state) = CONNS.get_ptr_mut(&sock.id) else {
                return Ok(());
            };
            // SAFETY: the pointer is into the map value and valid for this program run.
            let state = unsafe { &mut *state };
            if state.established_ns != 0 {
                return Ok(());
            }
            let t = now();
            state.established_ns = t;
            let _ = lru_insert(&SK_FLOW, LRU_SK_FLOW, &sock.id, &sock.flow);
            if state.side == SIDE_PASSIVE && state.flags & FLAG_START_FROM_SYN == 0 {
                // On 6.1 and 6.12 (seen in `cargo xtask vm-test`; 6.18 differs) the
                // LISTEN -> SYN_RECV event still carries the listener's addresses (remote port
                // 0), so the SYN stamp can only be found by this event's flow.
                // SAFETY: the value is copied out before the map changes.
                if let Some(syn) = unsafe { SYNS.get(&sock.flow) }.copied() {
                    state.start_ns = syn.ts_ns;
                    state.cgroup_id = syn.cgroup_id;
                    state.flags |= FLAG_START_FROM_SYN;
                    lru_remove(&SYNS, LRU_SYNS, &sock.flow);
                }
            }
            remember_owner(&sock.flow, state);
            let metric = if state.side == SIDE_PASSIVE && state.flags & FLAG_START_FROM_SYN == 0 {
                METRIC_HANDSHAKE_FROM_SYN_RECV
            } else {
                METRIC_HANDSHAKE
            };
            measure(&sock.flow, state, metric, t.saturating_sub(state.start_ns));
        }
        TCP_CLOSE => {
            let sock = read_sock(ctx)?;
            match unsafe { CONNS.get(&sock.id) } {
                Some(state) => {
                    let state = *state;
                    let t = now();
                    if state.established_ns != 0 {
                        measure(
                            &sock.flow,
                            &state,
                            METRIC_LIFETIME,
                            t.saturating_sub(state.established_ns),
                        );
                    } else if state.side == SIDE_ACTIVE {
                        measure(
                            &sock.flow,
                            &state,
                            METRIC_FAILED_CONNECT,
                            t.saturating_sub(state.start_ns),
                        );
                    }
                    lru_remove(&CONNS, LRU_CONNS, &sock.id);
                    lru_remove(&SK_FLOW, LRU_SK_FLOW, &sock.id);
                    if state.established_ns != 0 {
                        lru_remove(&FLOW_SOCK, LRU_FLOW_SOCK, &sock.flow);
                        if state.side == SIDE_PASSIVE && accepts_read_flows() {
                            lru_remove(&PEER_FLOW, LRU_PEER_FLOW, &PeerKey::remote_of(&sock.flow));
                        }
                    }
                }
                None if old != TCP_LISTEN && old != TCP_CLOSE && old != TCP_SYN_SENT => {
                    count(stats::UNTRACKED_CLOSE);
                    crate::log::debug!(
                        "hp_sock_set_state",
                        "socket {:x} closed from state {} without being seen open (opened before hopprobe attached, or evicted from CONNS)",
                        sock.id,
                        old
                    );
                }
                None => {}
            }
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

fn track(id: u64, start_ns: u64, cgroup_id: u64, side: u8, flags: u8) {
    let state = ConnState {
        start_ns,
        established_ns: 0,
        cgroup_id,
        side,
        flags,
        _pad: [0; 6],
    };
    if let Err(e) = lru_insert(&CONNS, LRU_CONNS, &id, &state) {
        count(stats::CONN_INSERT_FAILED);
        crate::log::warning!(
            "hp_sock_set_state",
            "CONNS insert failed (err {}): socket {:x} of cgroup {} (side {}) not tracked",
            e,
            id,
            cgroup_id,
            side
        );
    }
}

/// Tells `sock_ops` (softirq context, no owner in sight) whose socket a flow is.
fn remember_owner(flow: &FlowKey, state: &ConnState) {
    let owner = FlowSock {
        cgroup_id: state.cgroup_id,
        port: service_port(flow, state),
        side: state.side,
        _pad: [0; 5],
    };
    let _ = lru_insert(&FLOW_SOCK, LRU_FLOW_SOCK, flow, &owner);
    if state.side == SIDE_PASSIVE && accepts_read_flows() {
        let _ = lru_insert(&PEER_FLOW, LRU_PEER_FLOW, &PeerKey::remote_of(flow), flow);
    }
}

/// Whether `accept`'s program reads `PEER_FLOW`: only the syscall way of seeing reads does;
/// with `sock_recv_length` an insert and a delete per passive socket would be spent for
/// nothing. Userspace writes `READ_HOOK` once, right after attaching; a socket opened before
/// then has no entry to delete either.
#[inline(always)]
fn accepts_read_flows() -> bool {
    READ_HOOK.get(0).copied() == Some(READ_HOOK_SYSCALLS)
}

/// The port that names a socket's service: the remote port of an active socket, the local
/// port of a passive one (never the ephemeral one).
#[inline(always)]
fn service_port(flow: &FlowKey, state: &ConnState) -> u16 {
    if state.side == SIDE_ACTIVE {
        flow.remote_port
    } else {
        flow.local_port
    }
}

/// Counts a finished measurement in its socket histogram: per owner, side and service port,
/// as `sock_ops` keys its RTT samples, in the metric's unit.
fn measure(flow: &FlowKey, state: &ConnState, metric: u8, ns: u64) {
    let key = SockHistKey {
        cgroup_id: state.cgroup_id,
        port: service_port(flow, state),
        side: state.side,
        metric,
        _pad: 0,
    };
    if observe_in(&SOCK_HIST, &key, ns / unit_ns(metric)) {
        count(stats::CONN_MEASURED);
    } else {
        count(stats::SOCK_HIST_FAILED);
        crate::log::debug!(
            "hp_sock_set_state",
            "SOCK_HIST full: measurement {} of cgroup {} not counted",
            metric,
            state.cgroup_id
        );
    }
}

const MSG_PEEK: i32 = 2;

/// A process read from a socket: on a server socket with a request waiting, the request has
/// left the queue and the app starts on it.
#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn hp_sock_recv(ctx: TracePointContext) -> u32 {
    let _ = try_recv(&ctx);
    0
}

fn try_recv(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets checked against the tracepoint's format by userspace.
    let (sk, protocol, ret, flags) = unsafe {
        (
            read_field(ctx, recv::SK)?,
            read_field(ctx, recv::PROTOCOL)?,
            read_field(ctx, recv::RET)?,
            read_field(ctx, recv::FLAGS)?,
        )
    };
    if protocol != IPPROTO_TCP || ret <= 0 || flags & MSG_PEEK != 0 {
        return Ok(());
    }
    // SAFETY: the value is copied out at once.
    if let Some(flow) = unsafe { SK_FLOW.get(&sk) }.copied() {
        mark_first_read(&flow);
    }
    Ok(())
}

/// The process read from the server socket of `flow`: with a request waiting, the request
/// has left the queue and the app starts on it.
#[inline(always)]
pub fn mark_first_read(flow: &FlowKey) {
    // SAFETY: the value is copied out at once.
    let Some(cookie) = unsafe { FLOW_COOKIE.get(flow) }.copied() else {
        return;
    };
    if let Some(x) = EXCHANGES.get_ptr_mut(&cookie) {
        // SAFETY: map value pointer, valid for this run.
        mark_read(unsafe { &mut *x });
    }
}

/// The first read of what the socket is waiting for: a server's of its request, a client's of
/// its answer.
#[inline(always)]
fn mark_read(x: &mut Exchange) {
    let waiting = if x.role == ROLE_SERVER {
        PHASE_REQUEST
    } else {
        PHASE_RESPONSE
    };
    if x.phase == waiting && x.first_read_ns == 0 {
        x.first_read_ns = now();
    }
}

/// `tcp_recvmsg` copied data to the process. It runs in the reading task, inside `recvmsg`,
/// and carries the socket cookie, which keys the exchange directly, so it times:
/// - every client socket's first read of its answer (the caller's wake-up after a call). The
///   flow-keyed hooks cannot: behind an OUTPUT REDIRECT (a sidecar's) the socket's own
///   addresses, which `sock_recv_length` knows it by, are not the packets' ones, which
///   `FLOW_COOKIE` is keyed by;
/// - the server sockets the primary hook cannot name. `hp_sock_recv` (through `SK_FLOW`) and
///   the syscall fallback (through `accept`) learn a socket when it becomes ESTABLISHED or is
///   accepted, so a connection opened before hopprobe attached — a proxy's kept-alive pool to
///   its app, made by the first request — kept its `app` hop whole, and so did, with the
///   syscall fallback, every fd a process dup'ed. The server reads the primary hook will see
///   are left to it, so each read is timed by one hook.
#[tracepoint(category = "tcp", name = "tcp_rcv_space_adjust")]
pub fn hp_tcp_rcv_space(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets checked against the format by userspace; the helper bounds the reads.
    let (Ok(sk), Ok(cookie)) = (
        unsafe { read_field(&ctx, tcp_rcv_space_adjust::SKADDR) },
        unsafe { read_field(&ctx, tcp_rcv_space_adjust::SOCK_COOKIE) },
    ) else {
        return 0;
    };
    let Some(x) = EXCHANGES.get_ptr_mut(&cookie) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this run.
    let x = unsafe { &mut *x };
    if x.role == ROLE_SERVER {
        let primary_sees_it = match READ_HOOK.get(0).copied() {
            Some(READ_HOOK_RECV_LENGTH) => unsafe { SK_FLOW.get(&sk) }.is_some(),
            // The read's entry found the fd among the accepted ones; its exit marks the read.
            Some(READ_HOOK_SYSCALLS) => unsafe { READS.get(&bpf_get_current_pid_tgid()) }.is_some(),
            _ => false,
        };
        if primary_sees_it {
            return 0;
        }
    }
    mark_read(x);
    0
}

fn count_tcp_event(ctx: &TracePointContext, skaddr: Field<u64>, index: usize) {
    // SAFETY: offset checked against the format by userspace; the helper bounds the read.
    let Ok(skaddr) = (unsafe { read_field(ctx, skaddr) }) else {
        return;
    };
    // Softirq and timer context: the socket's owner comes from when it was opened.
    let cgroup = match unsafe { CONNS.get(&skaddr) } {
        Some(c) => c.cgroup_id,
        None => 0,
    };
    let slot = match TCP_COUNTERS.get_ptr_mut(&cgroup) {
        Some(s) => s,
        None => {
            let _ = TCP_COUNTERS.insert(&cgroup, &[0; 3], 0);
            match TCP_COUNTERS.get_ptr_mut(&cgroup) {
                Some(s) => s,
                None => return,
            }
        }
    };
    // SAFETY: this CPU's value.
    if let Some(c) = unsafe { (*slot).get_mut(index) } {
        *c += 1;
    }
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn hp_tcp_retransmit(ctx: TracePointContext) -> u32 {
    count_tcp_event(&ctx, tcp_retransmit_skb::SKADDR, TCP_RETRANSMITS);
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn hp_tcp_send_reset(ctx: TracePointContext) -> u32 {
    count_tcp_event(&ctx, tcp_send_reset::SKADDR, TCP_RESETS_SENT);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn hp_tcp_receive_reset(ctx: TracePointContext) -> u32 {
    count_tcp_event(&ctx, tcp_receive_reset::SKADDR, TCP_RESETS_RECEIVED);
    0
}
