//! Test-only object for `cargo xtask vm-test`'s negative control: a program that Linux 6.1's
//! verifier rejects, so the VM matrix can prove it reports such a rejection with the verifier's
//! message. hopprobe never embeds or loads it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use core::ptr::null_mut;

    use aya_ebpf::{
        helpers::generated::bpf_cgrp_storage_get, macros::tracepoint, programs::TracePointContext,
    };

    /// Calls `bpf_cgrp_storage_get` (helper 210), added in Linux 6.2 by commit c4bcfb38a95e
    /// ("bpf: Implement cgroup storage available to non-cgroup-attached bpf progs"). 6.1 knows
    /// helpers up to 209, so its verifier stops at the call: "invalid func unknown#210".
    #[tracepoint(category = "sock", name = "inet_sock_set_state")]
    pub fn hp_vm_reject(_ctx: TracePointContext) -> u32 {
        // SAFETY: never runs on 6.1 (rejected at load); elsewhere the verifier checks the
        // arguments.
        let found = unsafe { bpf_cgrp_storage_get(null_mut(), null_mut(), null_mut(), 0) };
        u32::from(found.is_null())
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
