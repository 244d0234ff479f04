//! TC classifiers on the node's uplink and on pods' host-side veths: observation points of the
//! datapath hops. They never change a packet's fate.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC, helpers::bpf_ktime_get_ns, macros::classifier, programs::TcContext,
};

use probe_common::hist::{POINT_NODE_IN, POINT_NODE_OUT, POINT_POD_IN, POINT_POD_OUT};

use crate::{datapath::pass, headers, tcflow};

fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context's skb pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

fn at(ctx: &TcContext, point: u32) -> i32 {
    let ifx = ifindex(ctx);
    if let Ok(tcp) = headers::at_l2(&ctx.skb) {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        pass(&tcp.pkt_key(), point, ifx, 0, now);
        tcflow::track(&ctx.skb, &tcp, point, ifx, now);
    }
    // UNSPEC: let the next program (Cilium's, say) or the default action decide.
    TC_ACT_UNSPEC
}

#[classifier]
pub fn hp_tc_node_in(ctx: TcContext) -> i32 {
    at(&ctx, POINT_NODE_IN)
}

#[classifier]
pub fn hp_tc_node_out(ctx: TcContext) -> i32 {
    at(&ctx, POINT_NODE_OUT)
}

/// Egress of the host-side veth: the packet goes into the pod.
#[classifier]
pub fn hp_tc_pod_in(ctx: TcContext) -> i32 {
    at(&ctx, POINT_POD_IN)
}

/// Ingress of the host-side veth: the packet comes out of the pod.
#[classifier]
pub fn hp_tc_pod_out(ctx: TcContext) -> i32 {
    at(&ctx, POINT_POD_OUT)
}
