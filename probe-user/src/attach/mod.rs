//! Loading and attaching the eBPF programs, and reading what they leave in their maps.

pub mod datapath;
pub mod ebpf;
pub mod ebpf_log;
pub mod evictions;
pub mod plan;
pub mod privilege;
pub mod probe;
pub mod prog_info;
pub mod programs;
pub mod reads;
pub mod tc_netlink;
pub mod tracefs;
