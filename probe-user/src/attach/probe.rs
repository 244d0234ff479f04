//! The programs hopprobe keeps attached while it runs, and the maps it reads them through.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, SockOps, TracePoint,
    },
};
use probe_common::{
    conn::{TCP_RESETS_RECEIVED, TCP_RESETS_SENT, TCP_RETRANSMITS, TcpCounters},
    exchange::{READ_HOOK_NONE, READ_HOOK_RECV_LENGTH, READ_HOOK_SYSCALLS},
    hist::{BUCKETS, Hist, HistKey},
    sockops::SockHistKey,
    stats,
};
use serde::Serialize;
use tracing::{info, warn};

use crate::{
    attach::{
        ebpf::{self, LoadError, MapSizes, error_chain},
        ebpf_log, privilege,
        reads::{self, ReadHook},
        tracefs::{self, TracefsError},
    },
    names::cgroup::{self, Resolver},
};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0}")]
    Privilege(String),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("no cgroup v2 mount in /proc/self/mounts; pass --cgroup-root")]
    NoCgroup2,
    #[error("opening cgroup root {path}: {source}")]
    CgroupRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("program {program}: {}", error_chain(.source))]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

impl AttachError {
    /// True when the machine (privileges, kernel) rather than hopprobe is what failed.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Self::Privilege(_) | Self::Tracefs(_) | Self::NoCgroup2 | Self::Program { .. }
        )
    }
}

/// Where a program is attached; listed in the summary and logged at start.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveHook {
    pub program: &'static str,
    pub hook: &'static str,
    pub target: String,
}

/// The attached programs. Dropping it detaches them (aya owns the links).
pub struct Probe {
    ebpf: Ebpf,
    pub hooks: Vec<ActiveHook>,
    pub cgroup_root: PathBuf,
    /// Declared after `ebpf`: dropped once the programs are detached, it reads their last
    /// records.
    _ebpf_log: Option<ebpf_log::EbpfLogReader>,
}

pub const TRACEPOINT_PROGRAM: &str = "hp_sock_set_state";
pub const SKB_IN_PROGRAM: &str = "hp_skb_in";
pub const SKB_OUT_PROGRAM: &str = "hp_skb_out";
pub const SOCK_OPS_PROGRAM: &str = "hp_sock_ops";
pub const RECV_PROGRAM: &str = "hp_sock_recv";
pub const RCV_SPACE_PROGRAM: &str = "hp_tcp_rcv_space";

impl Probe {
    pub fn attach(cgroup_root: Option<&Path>, sizes: MapSizes) -> Result<Self, AttachError> {
        Self::attach_with(cgroup_root, sizes, ReadHook::Auto)
    }

    /// As [`Probe::attach`], choosing the hook that sees a process read a request.
    pub fn attach_with(
        cgroup_root: Option<&Path>,
        sizes: MapSizes,
        read_hook: ReadHook,
    ) -> Result<Self, AttachError> {
        if let Some(missing) = privilege::missing(privilege::effective_caps()) {
            return Err(AttachError::Privilege(missing));
        }
        let tracefs = tracefs::ensure(true)?;
        if tracefs.mounted_now {
            info!(path = %tracefs.root.display(), "mounted tracefs");
        }
        let layout = tracefs::set_state_layout(&tracefs.root)?;
        let cgroup_root = match cgroup_root {
            Some(p) => p.to_path_buf(),
            None => cgroup::v2_mount().ok_or(AttachError::NoCgroup2)?,
        };
        let cgroup_dir = File::open(&cgroup_root).map_err(|source| AttachError::CgroupRoot {
            path: cgroup_root.clone(),
            source,
        })?;

        let mut ebpf = ebpf::load(&layout, sizes)?;
        let ebpf_log = ebpf_log::start(&mut ebpf, sizes.ebpf_log).map_err(LoadError::from)?;
        let mut hooks = Vec::new();

        let program_err = |program| move |source| AttachError::Program { program, source };
        let tp: &mut TracePoint = ebpf
            .program_mut(TRACEPOINT_PROGRAM)
            .ok_or(AttachError::MissingProgram(TRACEPOINT_PROGRAM))?
            .try_into()
            .map_err(program_err(TRACEPOINT_PROGRAM))?;
        tp.load().map_err(program_err(TRACEPOINT_PROGRAM))?;
        tp.attach("sock", "inet_sock_set_state")
            .map_err(program_err(TRACEPOINT_PROGRAM))?;
        hooks.push(ActiveHook {
            program: TRACEPOINT_PROGRAM,
            hook: "tracepoint",
            target: "sock:inet_sock_set_state".into(),
        });

        for tp in OPTIONAL_TRACEPOINTS {
            if tp.program == RECV_PROGRAM && read_hook == ReadHook::Syscalls {
                continue;
            }
            match attach_checked_tracepoint(&mut ebpf, &tracefs.root, tp) {
                Ok(()) => hooks.push(ActiveHook {
                    program: tp.program,
                    hook: "tracepoint",
                    target: format!("{}:{}", tp.category, tp.name),
                }),
                Err(why) => info!(program = tp.program, %why, "not attached"),
            }
        }
        if !hooks.iter().any(|h| h.program == RECV_PROGRAM) {
            match reads::attach_syscalls(&mut ebpf, &tracefs.root) {
                Ok(attached) => {
                    hooks.extend(attached.into_iter().map(|(program, target)| ActiveHook {
                        program,
                        hook: "tracepoint",
                        target,
                    }))
                }
                Err(why) => warn!(%why, "no hook sees reads but tcp_rcv_space_adjust"),
            }
        }
        let read_hook = if hooks.iter().any(|h| h.program == RECV_PROGRAM) {
            READ_HOOK_RECV_LENGTH
        } else if hooks.iter().any(|h| h.program == reads::SYSCALL_EXIT_RECV) {
            READ_HOOK_SYSCALLS
        } else {
            READ_HOOK_NONE
        };
        set_read_hook(&mut ebpf, read_hook)?;
        // Without cgroup_skb, handshakes and lifetimes are still measured (passive handshakes
        // timed from SYN_RECV); exchanges are not.
        for (program, attach_type, hook) in [
            (
                SKB_IN_PROGRAM,
                CgroupSkbAttachType::Ingress,
                "cgroup_skb/ingress",
            ),
            (
                SKB_OUT_PROGRAM,
                CgroupSkbAttachType::Egress,
                "cgroup_skb/egress",
            ),
        ] {
            match attach_cgroup_skb(&mut ebpf, program, &cgroup_dir, attach_type) {
                Ok(()) => hooks.push(ActiveHook {
                    program,
                    hook,
                    target: cgroup_root.display().to_string(),
                }),
                Err(err) => warn!(
                    program,
                    error = %ebpf::error_brief(&err),
                    "cgroup_skb unavailable: no exchanges; passive handshakes timed from SYN_RECV"
                ),
            }
        }
        match attach_sock_ops(&mut ebpf, &cgroup_dir) {
            Ok(()) => hooks.push(ActiveHook {
                program: SOCK_OPS_PROGRAM,
                hook: "sock_ops",
                target: cgroup_root.display().to_string(),
            }),
            Err(err) => warn!(
                program = SOCK_OPS_PROGRAM,
                error = %ebpf::error_brief(&err),
                "sock_ops unavailable: no smoothed RTT"
            ),
        }
        Ok(Self {
            ebpf,
            hooks,
            cgroup_root,
            _ebpf_log: ebpf_log,
        })
    }

    /// Takes a map out of the object as the typed view `T` (ring buffer, per-CPU array...):
    /// the caller owns it from then on, also after the programs are detached.
    pub fn take<T>(&mut self, name: &'static str) -> Result<T, AttachError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(AttachError::MissingMap(name))?;
        T::try_from(map).map_err(|source| AttachError::Map { name, source })
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        self.take("EVENTS")
    }

    pub fn take_exchanges(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        self.take("EXCHANGE_EVENTS")
    }

    pub fn take_hists(&mut self) -> Result<PerCpuHashMap<MapData, HistKey, Hist>, AttachError> {
        self.take("HIST")
    }

    pub fn take_tcp_counters(
        &mut self,
    ) -> Result<PerCpuHashMap<MapData, u64, TcpCounters>, AttachError> {
        self.take("TCP_COUNTERS")
    }

    pub fn take_sock_hists(
        &mut self,
    ) -> Result<PerCpuHashMap<MapData, SockHistKey, Hist>, AttachError> {
        self.take("SOCK_HIST")
    }

    pub fn take_stats(&mut self) -> Result<PerCpuArray<MapData, u64>, AttachError> {
        self.take("STATS")
    }

    /// Runs of each program the kernel skipped (see `prog_info`), and their total.
    pub fn missed_runs(&self) -> BTreeMap<String, u64> {
        crate::attach::prog_info::missed_runs(&self.ebpf)
    }

    /// Runs and run time of each program so far (counted only while run-time statistics are
    /// on).
    pub fn costs(&self) -> Vec<crate::attach::prog_info::ProgramCost> {
        crate::attach::prog_info::costs(&self.ebpf)
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// A tracepoint hopprobe attaches when it exists, with the field offsets its program reads
/// at; a kernel whose format differs is left alone rather than misread.
#[derive(Clone, Copy)]
struct OptionalTracepoint {
    program: &'static str,
    category: &'static str,
    name: &'static str,
    layout: &'static [(&'static str, usize)],
}

const OPTIONAL_TRACEPOINTS: [OptionalTracepoint; 5] = [
    OptionalTracepoint {
        program: "hp_sock_recv",
        category: "sock",
        name: "sock_recv_length",
        layout: &[("sk", 8), ("protocol", 18), ("ret", 20), ("flags", 24)],
    },
    // With either read hook: it times the reads of sockets opened before hopprobe attached.
    OptionalTracepoint {
        program: RCV_SPACE_PROGRAM,
        category: "tcp",
        name: "tcp_rcv_space_adjust",
        layout: &[("skaddr", 8), ("sock_cookie", 64)],
    },
    OptionalTracepoint {
        program: "hp_tcp_retransmit",
        category: "tcp",
        name: "tcp_retransmit_skb",
        layout: &[("skaddr", 16)],
    },
    OptionalTracepoint {
        program: "hp_tcp_send_reset",
        category: "tcp",
        name: "tcp_send_reset",
        layout: &[("skaddr", 16)],
    },
    OptionalTracepoint {
        program: "hp_tcp_receive_reset",
        category: "tcp",
        name: "tcp_receive_reset",
        layout: &[("skaddr", 8)],
    },
];

fn attach_checked_tracepoint(
    ebpf: &mut Ebpf,
    tracefs_root: &Path,
    tp: OptionalTracepoint,
) -> Result<(), String> {
    let OptionalTracepoint {
        program,
        category,
        name,
        layout,
    } = tp;
    let path = tracefs_root.join(format!("events/{category}/{name}/format"));
    let format = std::fs::read_to_string(&path)
        .map_err(|_| format!("this kernel has no {category}:{name}"))?;
    let fields = tracefs::parse_format(&format);
    for &(field, offset) in layout {
        if fields.get(field).map(|f| f.0) != Some(offset) {
            return Err(format!(
                "{category}:{name}'s field {field} is not at offset {offset}"
            ));
        }
    }
    let tp: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or("program missing from the eBPF object")?
        .try_into()
        .map_err(|e: ProgramError| error_chain(&e))?;
    tp.load().map_err(|e| ebpf::error_brief(&e))?;
    tp.attach(category, name)
        .map_err(|e| ebpf::error_brief(&e))?;
    Ok(())
}

/// Tells `hp_tcp_rcv_space` which reads the other read hook times (see
/// `probe_common::exchange::READ_HOOK_*`).
fn set_read_hook(ebpf: &mut Ebpf, hook: u32) -> Result<(), AttachError> {
    let name = "READ_HOOK";
    let map = ebpf.map_mut(name).ok_or(AttachError::MissingMap(name))?;
    let mut array: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|source| AttachError::Map { name, source })?;
    array
        .set(0, hook, 0)
        .map_err(|source| AttachError::Map { name, source })
}

fn attach_cgroup_skb(
    ebpf: &mut Ebpf,
    name: &str,
    cgroup_dir: &File,
    attach_type: CgroupSkbAttachType,
) -> Result<(), ProgramError> {
    let prog: &mut CgroupSkb = ebpf
        .program_mut(name)
        .ok_or(ProgramError::NotLoaded)?
        .try_into()?;
    prog.load()?;
    // On the kernels hopprobe supports (ringbuf needs 5.8) aya attaches through a bpf_link,
    // which always coexists with other programs on the cgroup (systemd's, Cilium's); the kernel
    // rejects the ALLOW_MULTI flag there, so "Single" is the mode that means "no flags".
    prog.attach(cgroup_dir, attach_type, CgroupAttachMode::Single)?;
    Ok(())
}

fn attach_sock_ops(ebpf: &mut Ebpf, cgroup_dir: &File) -> Result<(), ProgramError> {
    let prog: &mut SockOps = ebpf
        .program_mut(SOCK_OPS_PROGRAM)
        .ok_or(ProgramError::NotLoaded)?
        .try_into()?;
    prog.load()?;
    // As for cgroup_skb: a bpf_link, which coexists with other programs on the cgroup.
    prog.attach(cgroup_dir, CgroupAttachMode::Single)?;
    Ok(())
}

/// Sums the per-CPU counters by name.
pub fn read_counters(stats: &PerCpuArray<MapData, u64>) -> BTreeMap<&'static str, u64> {
    sum_per_cpu(stats, &stats::NAMES)
}

/// Sums each per-CPU counter of `stats` over the CPUs; `names[i]` names index `i`.
pub fn sum_per_cpu(
    stats: &PerCpuArray<MapData, u64>,
    names: &[&'static str],
) -> BTreeMap<&'static str, u64> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let total = stats
                .get(&(i as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
            (*name, total)
        })
        .collect()
}

/// Sums each kernel histogram over the CPUs.
pub fn read_hists<K: aya::Pod>(map: &PerCpuHashMap<MapData, K, Hist>) -> Vec<(K, Vec<u64>)> {
    map.iter()
        .flatten()
        .map(|(k, per_cpu)| {
            let mut counts = vec![0u64; BUCKETS];
            for h in per_cpu.iter() {
                for (c, n) in counts.iter_mut().zip(h.counts.iter()) {
                    *c += u64::from(*n);
                }
            }
            (k, counts)
        })
        .collect()
}

/// Retransmits and resets of the sockets of one cgroup (0: sockets opened before hopprobe
/// attached, or resets answering no socket).
#[derive(Debug, Clone, Serialize)]
pub struct TcpEvents {
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
}

pub fn read_tcp_events(
    map: &PerCpuHashMap<MapData, u64, TcpCounters>,
    resolver: &mut Resolver,
) -> Vec<TcpEvents> {
    let mut out: Vec<TcpEvents> = map
        .iter()
        .flatten()
        .map(|(cgroup_id, per_cpu)| {
            let sum = |i: usize| per_cpu.iter().map(|c| c[i]).sum();
            TcpEvents {
                cgroup_id,
                cgroup: resolver.resolve(cgroup_id),
                retransmits: sum(TCP_RETRANSMITS),
                resets_sent: sum(TCP_RESETS_SENT),
                resets_received: sum(TCP_RESETS_RECEIVED),
            }
        })
        .collect();
    out.sort_by_key(|e| e.cgroup_id);
    out
}
