//! `hopprobe`: attaches hopprobe's eBPF programs, aggregates what they measure and reports it.
//!
//! The modules follow the data: `attach` loads and attaches the programs and reads their maps;
//! `series` holds the latency histograms and the connection series; `hops` turns exchanges into per-hop
//! series; `names` says which pod and container a cgroup is; `run` and `check` are the
//! commands that drive them; `report` joins loadgen's requests with hopprobe's records.

pub mod attach;
pub mod check;
pub mod cli;
pub mod exit;
pub mod export;
pub mod hops;
pub mod names;
pub mod report;
pub mod run;
pub mod series;
