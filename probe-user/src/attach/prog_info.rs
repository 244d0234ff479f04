//! What the kernel counts per program of ours: runs it skipped and, with run-time statistics
//! on, runs and time spent.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd},
};

use aya::{Ebpf, programs::Program};
use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// One program's runs and the time they took, as the summary lists them.
pub use hopprobe_formats::summary::ProgramCost;

/// `union bpf_attr` as `BPF_OBJ_GET_INFO_BY_FD` reads it.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn prog_info(program: &Program) -> Option<bpf_prog_info> {
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
    (r == 0).then_some(info)
}

/// A tracepoint or kprobe program does not run when the same program is already running on
/// that CPU (a softirq interrupting it fires the same tracepoint again); the kernel counts each
/// skip in the program's `recursion_misses` (Linux 5.12+). Each such skip can lose an event, so
/// hopprobe counts them with its other drops.
fn recursion_misses(program: &Program) -> Option<u64> {
    prog_info(program).map(|i| i.recursion_misses)
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

/// Runs and run time of every program of `ebpf` that ran. The kernel counts them only while
/// someone holds run-time statistics on (`BPF_ENABLE_STATS`, or `kernel.bpf_stats_enabled`).
pub fn costs(ebpf: &Ebpf) -> Vec<ProgramCost> {
    let mut costs: Vec<ProgramCost> = ebpf
        .programs()
        .filter_map(|(name, p)| {
            let info = prog_info(p)?;
            Some(ProgramCost {
                program: crate::attach::programs::reported_name(name),
                runs: info.run_cnt,
                run_time_ns: info.run_time_ns,
            })
        })
        .filter(|c| c.runs > 0)
        .collect();
    costs.sort_by(|a, b| a.program.cmp(&b.program));
    costs
}

/// The programs' costs as a table, with their total; with `--bpf-floor`, each program's ns
/// per run also as a multiple of its hook's floor.
pub fn render(costs: &[ProgramCost]) -> String {
    let floor_ns = |program: &str| {
        let floor = crate::attach::programs::floor_of(program)?;
        costs
            .iter()
            .find(|c| c.program == floor)
            .map(ProgramCost::ns_per_run)
    };
    let floors = costs.iter().any(|c| c.program.starts_with("floor/"));
    let mut out = format!(
        "{:<24} {:>12} {:>10} {:>10} {:>8}\n",
        "program",
        "runs",
        "ns/run",
        "total ms",
        if floors { "x floor" } else { "" }
    )
    .trim_end()
    .to_owned()
        + "\n";
    for c in costs {
        let times = floor_ns(&c.program)
            .filter(|f| *f > 0.0)
            .map_or_else(String::new, |f| format!("{:.1}", c.ns_per_run() / f));
        out.push_str(&format!(
            "{:<24} {:>12} {:>10.0} {:>10.1} {:>8}\n",
            c.program,
            c.runs,
            c.ns_per_run(),
            c.run_time_ns as f64 / 1e6,
            times
        ));
    }
    let total: u64 = costs.iter().map(|c| c.run_time_ns).sum();
    out.push_str(&format!(
        "{:<24} {:>12} {:>10} {:>10.1}\n",
        "all",
        "",
        "",
        total as f64 / 1e6
    ));
    out
}
