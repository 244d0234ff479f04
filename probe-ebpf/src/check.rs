//! Trivial programs that `hopprobe check` loads and attaches to prove each hook type works on
//! this kernel. They do nothing; attaching them is the test.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_UNSPEC, sk_action::SK_PASS},
    macros::{cgroup_skb, classifier, fentry, kprobe, sock_ops, tracepoint},
    programs::{
        FEntryContext, ProbeContext, SkBuffContext, SockOpsContext, TcContext, TracePointContext,
    },
};

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn hp_check_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[classifier]
pub fn hp_check_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// `hopprobe run --bpf-floor`'s TC floor. Unlike `hp_check_tc`, it hands the packet on as
/// hopprobe's own classifiers do: `TC_ACT_OK` ends a TCX chain, so the programs after it on a
/// pod's veth (a CNI's) would never run.
#[classifier]
pub fn hp_check_tc_next(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cgroup_skb]
pub fn hp_check_cgroup_skb(_ctx: SkBuffContext) -> i32 {
    1
}

#[sock_ops]
pub fn hp_check_sock_ops(_ctx: SockOpsContext) -> u32 {
    SK_PASS
}

#[kprobe]
pub fn hp_check_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "tcp_connect")]
pub fn hp_check_fentry(_ctx: FEntryContext) -> u32 {
    0
}
