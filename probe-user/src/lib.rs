//! `hopprobe`: attaches hopprobe's eBPF programs, aggregates what they measure and reports it.

pub mod calls;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod conn;
pub mod cpu;
pub mod datapath;
pub mod ebpf;
pub mod evictions;
pub mod hops;
pub mod kept;
pub mod latency;
pub mod metadata;
pub mod privilege;
pub mod probe;
pub mod prog_info;
pub mod reads;
pub mod report;
pub mod run;
pub mod sidecar;
pub mod table;
pub mod tcflow;
pub mod tracefs;

/// Exit codes shared by the subcommands (documented in the README).
pub mod exit {
    /// Missing privilege or kernel feature: nothing was attached.
    pub const UNSUPPORTED: i32 = 3;
    /// Any other runtime failure.
    pub const FAILURE: i32 = 1;
}
