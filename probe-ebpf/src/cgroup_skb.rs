//! `cgroup_skb` ingress on the cgroup v2 root: stamps the first SYN of each passive connection.
//!
//! The `sock:inet_sock_set_state` SYN_RECV transition only fires once the final ACK is in, so
//! it cannot see the start of a passive handshake. The listener's ingress filter runs for the
//! SYN itself, with the listener as the skb's socket, which also gives the owner's cgroup.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use probe_common::{
    conn::{AF_INET, AF_INET6, FlowKey, SynSeen},
    stats,
};

use crate::maps::{SYNS, count};

const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// An older stamp for the same flow belongs to an earlier connection, not a SYN retransmit
/// (Linux retransmits SYNs after 1, 3, 7 s...).
const SYN_STALE_NS: u64 = 30_000_000_000;

#[cgroup_skb]
pub fn hp_syn_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_syn_ingress(&ctx);
    // Observe only: always let the packet through.
    1
}

fn try_syn_ingress(ctx: &SkBuffContext) -> Result<(), i64> {
    // cgroup_skb sees the packet from its network header.
    let version = ctx.load::<u8>(0)? >> 4;
    let mut flow = FlowKey {
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: 0,
        remote_port: 0,
        family: 0,
        _pad: 0,
    };
    let tcp_off = if version == 4 {
        let ihl = (ctx.load::<u8>(0)? & 0x0f) as usize * 4;
        if ctx.load::<u8>(9)? != IPPROTO_TCP || ihl < 20 {
            return Ok(());
        }
        flow.family = AF_INET;
        // Fixed-size loads: load_bytes clamps its length to the packet, which the verifier
        // rejects as a possibly zero-sized read.
        let remote: [u8; 4] = ctx.load(12)?;
        let local: [u8; 4] = ctx.load(16)?;
        flow.remote_addr[..4].copy_from_slice(&remote);
        flow.local_addr[..4].copy_from_slice(&local);
        ihl
    } else if version == 6 {
        // Extension headers before TCP are rare on a SYN; such packets are not stamped.
        if ctx.load::<u8>(6)? != IPPROTO_TCP {
            return Ok(());
        }
        flow.family = AF_INET6;
        flow.remote_addr = ctx.load(8)?;
        flow.local_addr = ctx.load(24)?;
        40
    } else {
        return Ok(());
    };
    let flags = ctx.load::<u8>(tcp_off + 13)?;
    if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
        return Ok(());
    }
    flow.remote_port = u16::from_be(ctx.load::<u16>(tcp_off)?);
    flow.local_port = u16::from_be(ctx.load::<u16>(tcp_off + 2)?);

    // SAFETY: no preconditions.
    let t = unsafe { bpf_ktime_get_ns() };
    if let Some(seen) = unsafe { SYNS.get(&flow) } {
        if t.saturating_sub(seen.ts_ns) < SYN_STALE_NS {
            // A retransmitted SYN: the handshake started with the first one.
            return Ok(());
        }
    }
    // SAFETY: the skb pointer is the program's context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    if SYNS
        .insert(
            &flow,
            &SynSeen {
                ts_ns: t,
                cgroup_id,
            },
            0,
        )
        .is_err()
    {
        count(stats::SYN_INSERT_FAILED);
    }
    Ok(())
}
