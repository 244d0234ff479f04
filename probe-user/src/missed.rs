//! Runs of our programs the kernel skipped. A tracepoint or kprobe program does not run when the
//! same program is already running on that CPU (a softirq interrupting it fires the same
//! tracepoint again); the kernel counts each skip in the program's `recursion_misses` (Linux
//! 5.12+). Each such skip can lose an event, so hopprobe counts them with its other drops.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd},
};

use aya::{Ebpf, programs::Program};
use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// `union bpf_attr` as `BPF_OBJ_GET_INFO_BY_FD` reads it.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn recursion_misses(program: &Program) -> Option<u64> {
    let fd = program.fd().ok()?;
    let fd = fd.as_fd().as_raw_fd();
    // SAFETY: bpf_prog_info is plain integers and pointers-as-integers; zero is valid for all.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(fd).ok()?,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`, which outlives the call;
    // a kernel older than these bindings fills the prefix it knows and leaves the rest zero.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::from_mut(&mut attr),
            std::mem::size_of::<InfoByFd>(),
        )
    };
    (r == 0).then_some(info.recursion_misses)
}

/// Skipped runs per loaded program of `ebpf` (programs the kernel reports none for are left
/// out), and their total under `missed_runs`.
pub fn missed_runs(ebpf: &Ebpf) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = ebpf
        .programs()
        .filter_map(|(name, p)| Some((format!("missed_runs_{name}"), recursion_misses(p)?)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let total = out.values().sum();
    out.insert("missed_runs".into(), total);
    out
}
