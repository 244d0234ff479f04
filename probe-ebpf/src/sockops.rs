//! `sock_ops` on the cgroup v2 root: the smoothed RTT of every TCP socket established while
//! hopprobe runs, into per-CPU log-linear histograms per cgroup and service port.
//!
//! At the ESTABLISHED callbacks the program asks for RTT callbacks on the socket
//! (`bpf_sock_ops_cb_flags_set`); each RTT update then reports `srtt_us`. These callbacks run
//! in softirq context, so the socket's owner comes from `FLOW_SOCK`, which the
//! `inet_sock_set_state` tracepoint fills when the socket is established.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use probe_common::{
    conn::{AF_INET, AF_INET6, FlowKey},
    sockops::{METRIC_SRTT, SockHistKey},
    stats,
};

use crate::{
    datapath::observe_in,
    maps::{FLOW_SOCK, SOCK_HIST, count},
};

#[sock_ops]
pub fn hp_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            // Keep whatever flags another program on this cgroup asked for.
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_RTT_CB => srtt(&ctx),
        _ => {}
    }
    1
}

fn flow(ctx: &SockOpsContext) -> Option<FlowKey> {
    let family = ctx.family() as u16;
    let mut flow = FlowKey {
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: ctx.local_port() as u16,
        // Network byte order; the kernel puts it in the upper half of the field on
        // little-endian machines (`sock_ops_convert_ctx_access`), newer ones may not.
        remote_port: {
            let r = ctx.remote_port();
            u16::from_be(if r > 0xffff {
                (r >> 16) as u16
            } else {
                r as u16
            })
        },
        family,
        _pad: 0,
    };
    if family == AF_INET {
        flow.local_addr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        flow.remote_addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
    } else if family == AF_INET6 {
        let (l, r) = (ctx.local_ip6(), ctx.remote_ip6());
        for i in 0..4 {
            flow.local_addr[i * 4..i * 4 + 4].copy_from_slice(&l[i].to_ne_bytes());
            flow.remote_addr[i * 4..i * 4 + 4].copy_from_slice(&r[i].to_ne_bytes());
        }
        flow.unmap_v4();
    } else {
        return None;
    }
    Some(flow)
}

fn srtt(ctx: &SockOpsContext) {
    // SAFETY: the context pointer is valid for the program's run.
    let srtt_us = unsafe { (*ctx.ops).srtt_us } >> 3;
    // No estimate yet. (Leaving zero out also keeps the bucket index provably in range for the
    // verifier: with ns a multiple of 1000, the compiler drops the bounds check of small values.)
    if srtt_us == 0 {
        return;
    }
    let Some(flow) = flow(ctx) else {
        return;
    };
    let mut key = SockHistKey {
        cgroup_id: 0,
        port: 0,
        side: 0,
        metric: METRIC_SRTT,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    if let Some(owner) = unsafe { FLOW_SOCK.get(&flow) } {
        key.cgroup_id = owner.cgroup_id;
        key.port = owner.port;
        key.side = owner.side;
    }
    if !observe_in(&SOCK_HIST, &key, u64::from(srtt_us) * 1000) {
        count(stats::SOCK_HIST_FAILED);
    }
}
