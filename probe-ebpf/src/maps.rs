//! Maps and globals shared by the programs.

use aya_ebpf::{
    bindings::{
        BPF_EXIST, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP,
        BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use probe_common::{
    conn::{ConnState, FlowKey, PeerKey, SynSeen, TcpCounters},
    exchange::{ExHistKey, Exchange},
    hist::{Hist, HistKey, PktKey, PktSeen},
    layout::SetStateLayout,
    ratelimit::RateLimit,
    sockops::{FlowSock, SockHistKey},
    stats,
};

/// Written by userspace before load from the tracefs format file.
#[unsafe(no_mangle)]
pub static SET_STATE_LAYOUT: SetStateLayout = SetStateLayout::DEFAULT;

/// Written by userspace before load from `--records-rate` and `--records-burst`.
#[unsafe(no_mangle)]
pub static RECORDS_LIMIT: RateLimit = RateLimit::UNLIMITED;

/// Per CPU: the rate limit's theoretical arrival time (see `probe_common::ratelimit`).
#[map]
pub static RECORDS_TAT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Flow → owner and service port of its socket, for `sock_ops` (see `probe_common::sockops`).
#[map]
pub static FLOW_SOCK: LruHashMap<FlowKey, FlowSock> = LruHashMap::with_max_entries(65536, 0);

/// Passive sockets' flows by remote address, for `accept` (syscall fallback of the reads).
#[map]
pub static PEER_FLOW: LruHashMap<PeerKey, FlowKey> = LruHashMap::with_max_entries(65536, 0);

/// `(tgid << 32) | fd` of an accepted socket → its flow.
#[map]
pub static FD_FLOW: LruHashMap<u64, FlowKey> = LruHashMap::with_max_entries(65536, 0);

/// Per thread, between a syscall's entry and exit: `accept`'s address buffer.
#[map]
pub static ACCEPT_ADDR: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Per thread, between a read's entry and exit: the flow of the socket it reads.
#[map]
pub static READS: LruHashMap<u64, FlowKey> = LruHashMap::with_max_entries(16384, 0);

/// Which read hook runs besides `tcp_rcv_space_adjust` (`probe_common::exchange::READ_HOOK_*`);
/// written by userspace after attaching.
#[map]
pub static READ_HOOK: Array<u32> = Array::with_max_entries(1, 0);
/// Socket histograms per CPU (smoothed RTT, handshakes, lifetimes), per cgroup, side and
/// service port; sized by userspace (`MapSizes::sock_hist_keys`).
#[map]
pub static SOCK_HIST: PerCpuHashMap<SockHistKey, Hist> =
    PerCpuHashMap::with_max_entries(2048, BPF_F_NO_PREALLOC);

#[map]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static SYNS: LruHashMap<FlowKey, SynSeen> = LruHashMap::with_max_entries(16384, 0);

/// In-progress exchange per socket cookie.
#[map]
pub static EXCHANGES: LruHashMap<u64, Exchange> = LruHashMap::with_max_entries(65536, 0);

/// Flow → the request a listener saw, until the new connection's own packets carry it on
/// (see `cgroup_skb::at_listener`). Such requests are rare (a lost or overtaken handshake ACK),
/// so the map is small.
#[map]
pub static EARLY_REQUESTS: LruHashMap<FlowKey, Exchange> = LruHashMap::with_max_entries(4096, 0);

/// When a listener last parked a request in `EARLY_REQUESTS` (`bpf_ktime_get_ns`; 0: never).
/// A connection takes its request on with its first packet, within a round trip of the park;
/// while none was parked in the last [`EARLY_WINDOW_NS`], a segment with neither payload nor
/// FIN or RST has nothing to do at a socket (`cgroup_skb::track`) and skips the socket's
/// cookie and exchange lookups. A plain 8-byte store and load: no count that a race or an LRU
/// eviction could leave wrong.
#[map]
pub static EARLY_PARKED_NS: Array<u64> = Array::with_max_entries(1, 0);

/// How long after a park every segment looks for a parked request again: a request not
/// taken on by then (its connection sent nothing for a second) is taken on by its
/// connection's next payload or FIN instead.
pub const EARLY_WINDOW_NS: u64 = 1_000_000_000;

/// Notes that a request was parked at `now`.
#[inline(always)]
pub fn early_parked_at(now: u64) {
    if let Some(p) = EARLY_PARKED_NS.get_ptr_mut(0) {
        // SAFETY: a valid, aligned map value for the program's run; an aligned 8-byte store
        // is whole on every CPU BPF runs on.
        unsafe { core::ptr::write_volatile(p, now) };
    }
}

/// Whether a request may be waiting in `EARLY_REQUESTS` at `now`.
#[inline(always)]
pub fn early_parked(now: u64) -> bool {
    EARLY_PARKED_NS
        .get(0)
        .is_none_or(|&at| at != 0 && now.saturating_sub(at) < EARLY_WINDOW_NS)
}

/// Socket address → its flow, from the tracepoint, so that `sock_recv_length` (which only
/// knows the address) finds the socket's exchange.
#[map]
pub static SK_FLOW: LruHashMap<u64, FlowKey> = LruHashMap::with_max_entries(65536, 0);

/// Flow → socket cookie of server-side exchanges, from cgroup_skb.
#[map]
pub static FLOW_COOKIE: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static EXCHANGE_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Where each packet was last seen, keyed by what NAT does not change.
#[map]
pub static PKT_SEEN: LruHashMap<PktKey, PktSeen> = LruHashMap::with_max_entries(65536, 0);

/// Hop histograms per CPU; allocated as hops appear (4 KiB per key and CPU).
#[map]
pub static HIST: PerCpuHashMap<HistKey, Hist> =
    PerCpuHashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// The socket hops of exchanges whose record was not sent (`cgroup_skb::aggregate`); 4 KiB
/// per key and CPU, allocated as series appear.
#[map]
pub static EXCHANGE_HIST: PerCpuHashMap<ExHistKey, Hist> =
    PerCpuHashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Where `aggregate` builds its key, off the stack.
#[map]
pub static EXCHANGE_HIST_KEY: PerCpuArray<ExHistKey> = PerCpuArray::with_max_entries(1, 0);

/// An exchange without a record, waiting for the end of the program's run to go to
/// `EXCHANGE_HIST` (`phase` != `PHASE_NONE` while it waits): deep in the program's calls,
/// where it is made, the verifier's 512 bytes for the deepest chain of calls are spent.
#[map]
pub static AGGREGATE_PENDING: PerCpuArray<Exchange> = PerCpuArray::with_max_entries(1, 0);

/// One zeroed histogram to initialise new keys from.
#[map]
pub static HIST_ZERO: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

/// Retransmits and resets per cgroup (0: not a socket hopprobe saw open).
#[map]
pub static TCP_COUNTERS: PerCpuHashMap<u64, TcpCounters> = PerCpuHashMap::with_max_entries(4096, 0);

/// Room for the structs the socket programs' rarer paths build (a new exchange, its TLS state,
/// a closing exchange's copy): the 512-byte stack cannot hold them beside the TLS record walk.
#[repr(C)]
pub struct Scratch {
    pub x: Exchange,
    pub conn: probe_common::tls::TlsConn,
    pub tc: probe_common::tcflow::TcExchange,
}

/// One slot per context a program can run in on a CPU: the socket egress program runs in its
/// sender's context, which receive softirqs (the ingress and TC programs) can interrupt.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(3, 0);
pub const SCRATCH_IN: u32 = 0;
pub const SCRATCH_OUT: u32 = 1;
pub const SCRATCH_TC: u32 = 2;

/// This CPU's scratch `slot`; programs do not migrate CPU while they run, and each context has
/// its own slot.
#[inline(always)]
pub fn scratch(slot: u32) -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU slot, valid for the program's run, used by one context at a time.
    SCRATCH.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not migrate CPU while running.
        unsafe { *slot += 1 };
    }
}

/// Non-zero: wake the reader for every record (`hopprobe run --ring-wakeup each`).
#[unsafe(no_mangle)]
pub static RING_WAKE_EACH: u32 = 0;

/// Zero: no TC program will watch a veth or the uplink (`--no-datapath`, or no datapath found to
/// attach to at start), so a packet's sighting at a socket could never end a hop, and the
/// socket programs skip `PKT_SEEN` (a lookup and an insert or delete per packet: `hp_skb_out`
/// 497 → 382 ns per run in the lab, docs/overhead.md).
#[unsafe(no_mangle)]
pub static DATAPATH_POINTS: u32 = 1;

/// Whether the socket programs record their packets' sightings (see `DATAPATH_POINTS`).
#[inline(always)]
pub fn datapath_points() -> bool {
    // SAFETY: the static is valid for reads; volatile keeps the compiler from using the default.
    unsafe { core::ptr::read_volatile(&DATAPATH_POINTS) != 0 }
}

/// The flags to submit a record to `ring` with. The kernel's default wakes the reader for
/// each record whenever it has caught up, which under light load is every record: an
/// `irq_work` and a wake-up on the CPU of the traced request, whose time they lengthen
/// (`cargo xtask bench-probe` compares). By default hopprobe drains its rings on a short
/// timer instead, and a ring an eighth full wakes it at once, so a burst cannot fill the
/// ring before the timer fires.
#[inline(always)]
pub fn wake_flags(ring: &RingBuf) -> u64 {
    // SAFETY: the static is valid for reads; volatile keeps the compiler from using the default.
    if unsafe { core::ptr::read_volatile(&RING_WAKE_EACH) } != 0 {
        0
    } else if ring.query(BPF_RB_AVAIL_DATA.into()) >= ring.query(BPF_RB_RING_SIZE.into()) / 8 {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// Reads a global that userspace may have rewritten; a plain read would be constant-folded.
#[inline(always)]
pub fn layout() -> SetStateLayout {
    // SAFETY: the static is valid for reads; volatile keeps the compiler from using the default.
    unsafe { core::ptr::read_volatile(&SET_STATE_LAYOUT) }
}

const EEXIST: i32 = 17;

/// Inserts into an LRU map, counting a new key in `stats::lru_inserted(which)`; a key already
/// present is updated and not counted. With `lru_remove` this lets userspace tell the kernel's
/// silent evictions apart (inserted − deleted − still present).
#[inline(always)]
pub fn lru_insert<K, V>(map: &LruHashMap<K, V>, which: u32, k: &K, v: &V) -> Result<(), i32> {
    match map.insert(k, v, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(stats::lru_inserted(which));
            Ok(())
        }
        Err(e) if e == -EEXIST => map.insert(k, v, BPF_EXIST as u64),
        Err(e) => Err(e),
    }
}

/// Deletes from an LRU map; true (and counted) when the key was there.
#[inline(always)]
pub fn lru_remove<K, V>(map: &LruHashMap<K, V>, which: u32, k: &K) -> bool {
    let removed = map.remove(k).is_ok();
    if removed {
        count(stats::lru_deleted(which));
    }
    removed
}

/// Reads a global that userspace may have rewritten (see `layout`).
#[inline(always)]
pub fn records_limit() -> RateLimit {
    // SAFETY: as in `layout`.
    unsafe { core::ptr::read_volatile(&RECORDS_LIMIT) }
}
