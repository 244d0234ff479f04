//! Test-only object: another tool's programs on the hooks hopprobe uses (a CNI's TC classifier,
//! a cgroup_skb and a sock_ops program), which count what they see and hand everything on. The
//! coexistence test attaches them before hopprobe and checks they keep counting, in their
//! place, while hopprobe runs and after it stops. Their names do not start with `hp_`: to
//! hopprobe they are somebody else's. hopprobe never embeds or loads it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{TC_ACT_UNSPEC, sk_action::SK_PASS},
        macros::{cgroup_skb, classifier, map, sock_ops},
        maps::PerCpuArray,
        programs::{SkBuffContext, SockOpsContext, TcContext},
    };

    /// Runs per program: 0 TC, 1 cgroup_skb, 2 sock_ops.
    #[map]
    static OTHER_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

    fn count(slot: u32) {
        if let Some(n) = OTHER_RUNS.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot, valid while the program runs.
            unsafe { *n += 1 };
        }
    }

    /// `TC_ACT_UNSPEC`: the next program or filter runs, as a CNI's does.
    #[classifier]
    pub fn other_tc(_ctx: TcContext) -> i32 {
        count(0);
        TC_ACT_UNSPEC
    }

    #[cgroup_skb]
    pub fn other_skb(_ctx: SkBuffContext) -> i32 {
        count(1);
        1
    }

    #[sock_ops]
    pub fn other_sock_ops(_ctx: SockOpsContext) -> u32 {
        count(2);
        SK_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
