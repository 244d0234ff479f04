//! Runs of our programs the kernel skipped. A tracepoint or kprobe program does not run when the
//! same program is already running on that CPU (a softirq interrupting it fires the same
//! tracepoint again); the kernel counts each skip in the program's `recursion_misses` (Linux
//! 5.12+). Each such skip can lose an event, so hopprobe counts them with its other drops.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd},
};

use aya::{Ebpf, programs::Program};

/// `union bpf_attr` as `BPF_OBJ_GET_INFO_BY_FD` reads it.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The kernel's `struct bpf_prog_info` up to `recursion_misses`: the kernel fills at most
/// `info_len` bytes, so a prefix is enough and later fields do not matter.
#[repr(C)]
#[derive(Default)]
struct ProgInfoPrefix {
    type_: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

fn recursion_misses(program: &Program) -> Option<u64> {
    let fd = program.fd().ok()?;
    let fd = fd.as_fd().as_raw_fd();
    let mut info = ProgInfoPrefix::default();
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(fd).ok()?,
        info_len: std::mem::size_of::<ProgInfoPrefix>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
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

#[cfg(test)]
mod tests {
    use super::ProgInfoPrefix;

    #[test]
    fn the_prefix_matches_the_kernels_layout() {
        use aya_obj::generated::bpf_prog_info;
        assert_eq!(
            std::mem::offset_of!(ProgInfoPrefix, recursion_misses),
            std::mem::offset_of!(bpf_prog_info, recursion_misses)
        );
        assert_eq!(
            std::mem::offset_of!(ProgInfoPrefix, run_cnt),
            std::mem::offset_of!(bpf_prog_info, run_cnt)
        );
        assert_eq!(std::mem::offset_of!(ProgInfoPrefix, recursion_misses), 208);
    }
}
