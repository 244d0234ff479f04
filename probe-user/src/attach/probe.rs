//! The programs hopprobe keeps attached while it runs, and the maps it reads them through.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, ProgramError, SockOps, TracePoint},
};
use probe_common::{
    conn::{TCP_RESETS_RECEIVED, TCP_RESETS_SENT, TCP_RETRANSMITS, TcpCounters},
    hist::{BUCKETS, Hist, HistKey},
    sockops::SockHistKey,
    stats,
};
use tracing::{info, warn};

use crate::{
    attach::{
        ebpf::{self, LoadError, MapSizes, error_chain},
        ebpf_log,
        plan::{self, Action, Facts, Options, Plan},
        privilege,
        programs::{
            self, Direction, HookSpec, Need, PROGRAMS, ProgramSpec, WITHOUT_APP_READS, Way,
        },
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
    #[error("{program} cannot run here: {reason}")]
    Required {
        program: &'static str,
        reason: String,
    },
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
            Self::Privilege(_)
                | Self::Tracefs(_)
                | Self::NoCgroup2
                | Self::Required { .. }
                | Self::Program { .. }
        )
    }

    /// What went wrong with a program, a verifier log cut to its last lines.
    fn brief(&self) -> String {
        match self {
            Self::Program { source, .. } => ebpf::error_brief(source),
            other => other.to_string(),
        }
    }
}

/// Where a program is attached; listed in the summary and logged at start.
pub type ActiveHook = hopprobe_formats::summary::Hook<&'static str>;

/// The attached programs. Dropping it detaches them (aya owns the links).
pub struct Probe {
    ebpf: Ebpf,
    pub hooks: Vec<ActiveHook>,
    pub cgroup_root: PathBuf,
    /// What was attached where and what was left out, and why (as `check` prints it).
    pub plan: Plan,
    /// Declared after `ebpf`: dropped once the programs are detached, it reads their last
    /// records.
    _ebpf_log: Option<ebpf_log::EbpfLogReader>,
}

pub const TRACEPOINT_PROGRAM: &str = programs::SET_STATE;

impl Probe {
    /// Attaches with `--app-reads auto`; the TC programs are left to the caller (`Datapath`).
    pub fn attach(cgroup_root: Option<&Path>, sizes: MapSizes) -> Result<Self, AttachError> {
        let options = Options {
            datapath: false,
            ..Options::DEFAULT
        };
        Self::attach_with(cgroup_root, sizes, options)
    }

    /// Whether this process may attach at all; [`Self::attach_with`] checks it first.
    pub fn check_privilege() -> Result<(), AttachError> {
        let caps = privilege::effective_caps();
        match privilege::missing(caps).or_else(|| privilege::perf_paranoid_blocks(caps)) {
            Some(missing) => Err(AttachError::Privilege(missing)),
            None => Ok(()),
        }
    }

    /// Reads what the kernel offers, plans (`plan::plan`, as `check` does) and carries the plan
    /// out; `options.datapath` only says whether the plan counts on the TC programs, which
    /// `Datapath` attaches as interfaces appear.
    pub fn attach_with(
        cgroup_root: Option<&Path>,
        sizes: MapSizes,
        options: Options,
    ) -> Result<Self, AttachError> {
        Self::check_privilege()?;
        let tracefs = tracefs::ensure(true)?;
        if tracefs.mounted_now {
            info!(path = %tracefs.root.display(), "mounted tracefs");
        }
        let cgroup_root = match cgroup_root {
            Some(p) => p.to_path_buf(),
            None => cgroup::v2_mount().ok_or(AttachError::NoCgroup2)?,
        };
        let cgroup_dir = File::open(&cgroup_root).map_err(|source| AttachError::CgroupRoot {
            path: cgroup_root.clone(),
            source,
        })?;
        let mut facts = Facts {
            cgroup_root: Some(cgroup_root.clone()),
            ..Facts::default()
        };
        facts.read_formats(&tracefs.root);
        let plan = plan::plan(&facts, &options);
        if let Some((program, reason)) = plan.failure() {
            return Err(AttachError::Required {
                program,
                reason: reason.to_owned(),
            });
        }
        let layout = facts
            .set_state_layout()
            .map_err(|reason| AttachError::Required {
                program: programs::SET_STATE,
                reason,
            })?;

        let mut ebpf = ebpf::load(&layout, sizes)?;
        let ebpf_log = ebpf_log::start(&mut ebpf, sizes.ebpf_log).map_err(LoadError::from)?;
        let (plan, hooks) = carry_out(&mut ebpf, &cgroup_dir, facts, &options, plan)?;
        set_read_hook(&mut ebpf, plan.read_hook())?;
        if !Way::APP_READS
            .into_iter()
            .flat_map(programs::way_programs)
            .any(|p| plan.attaches(p.name))
        {
            warn!("{WITHOUT_APP_READS}");
        }
        info!(plan = %plan.summary(), "attach plan");
        Ok(Self {
            ebpf,
            hooks,
            cgroup_root,
            plan,
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

    /// `--bpf-floor`: after hopprobe's programs on each non-TC hook they took, a do-nothing
    /// program (`programs::FLOORS`; `Datapath` puts the TC one on). Detached with the rest.
    pub fn attach_floors(&mut self) -> Result<(), AttachError> {
        let took = |name: &str| self.hooks.iter().any(|h| h.program == name);
        let (skb, sock_ops) = (took("hp_skb_in") || took("hp_skb_out"), took("hp_sock_ops"));
        let cgroup_dir =
            File::open(&self.cgroup_root).map_err(|source| AttachError::CgroupRoot {
                path: self.cgroup_root.clone(),
                source,
            })?;
        let [tracepoint, cgroup_skb, sock_ops_floor, _] = programs::FLOORS.map(|f| f.program);
        let program = tracepoint;
        let program_err = |source| AttachError::Program { program, source };
        let tp: &mut TracePoint = self
            .ebpf
            .program_mut(program)
            .ok_or(AttachError::MissingProgram(program))?
            .try_into()
            .map_err(program_err)?;
        tp.load().map_err(program_err)?;
        let t = probe_common::layout::sock::inet_sock_set_state::TRACEPOINT;
        tp.attach(t.category, t.name).map_err(program_err)?;
        if skb {
            let program = cgroup_skb;
            let program_err = |source| AttachError::Program { program, source };
            let prog: &mut CgroupSkb = self
                .ebpf
                .program_mut(program)
                .ok_or(AttachError::MissingProgram(program))?
                .try_into()
                .map_err(program_err)?;
            prog.load().map_err(program_err)?;
            for direction in [Direction::Ingress, Direction::Egress] {
                // As ours: a bpf_link (see `attach_cgroup_skb`).
                prog.attach(
                    &cgroup_dir,
                    direction.cgroup_skb(),
                    CgroupAttachMode::Single,
                )
                .map_err(program_err)?;
            }
        }
        if sock_ops {
            attach_sock_ops(&mut self.ebpf, sock_ops_floor, &cgroup_dir)?;
        }
        Ok(())
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Attaches what `plan` says, in table order (the TC programs aside: `Datapath` attaches
/// them). A program the kernel refuses joins the facts and the plan is made again, so a way of
/// seeing reads that fails here hands over to the next, as `check` shows for a program the
/// verifier rejects. Returns the plan as carried out.
fn carry_out(
    ebpf: &mut Ebpf,
    cgroup_dir: &File,
    mut facts: Facts,
    options: &Options,
    mut plan: Plan,
) -> Result<(Plan, Vec<ActiveHook>), AttachError> {
    let mut hooks: Vec<ActiveHook> = Vec::new();
    for spec in PROGRAMS {
        let Some(Action::Attach { target }) = plan.get(spec.name).map(|d| d.action.clone()) else {
            continue;
        };
        if let HookSpec::Tc(..) = spec.hook {
            continue;
        }
        let err = match attach_program(ebpf, spec, cgroup_dir) {
            Ok(()) => {
                hooks.push(ActiveHook {
                    program: spec.name,
                    hook: spec.hook.name(),
                    target,
                });
                continue;
            }
            Err(err) => err,
        };
        let why = err.brief();
        match spec.need {
            Need::Required => return Err(err),
            Need::Optional { without } => {
                warn!(program = spec.name, error = %why, "not attached: {without}");
            }
            Need::OneOf(way) => {
                warn!(program = spec.name, error = %why, "{} cannot see reads", way.name());
                // A way works whole or not at all.
                let siblings: Vec<&str> = programs::way_programs(way).map(|p| p.name).collect();
                for h in hooks.iter().filter(|h| siblings.contains(&h.program)) {
                    unload(ebpf, h.program);
                }
                hooks.retain(|h| !siblings.contains(&h.program));
            }
        }
        facts
            .refused
            .insert(spec.name, format!("the kernel refused it: {why}"));
        plan = plan::plan(&facts, options);
    }
    Ok((plan, hooks))
}

fn attach_program(
    ebpf: &mut Ebpf,
    spec: &ProgramSpec,
    cgroup_dir: &File,
) -> Result<(), AttachError> {
    let program = spec.name;
    let program_err = |source| AttachError::Program { program, source };
    match spec.hook {
        HookSpec::Tracepoints(tps) => {
            let tp: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or(AttachError::MissingProgram(program))?
                .try_into()
                .map_err(program_err)?;
            tp.load().map_err(program_err)?;
            for t in tps {
                if let Err(e) = tp.attach(t.category, t.name) {
                    // Nothing of a refused program stays attached.
                    let _ = tp.unload();
                    return Err(program_err(e));
                }
            }
            Ok(())
        }
        HookSpec::CgroupSkb(direction) => {
            attach_cgroup_skb(ebpf, program, cgroup_dir, direction.cgroup_skb())
        }
        HookSpec::SockOps => attach_sock_ops(ebpf, program, cgroup_dir),
        HookSpec::Tc(..) => Ok(()),
    }
}

fn unload(ebpf: &mut Ebpf, program: &str) {
    if let Some(p) = ebpf.program_mut(program)
        && let Ok(tp) = <&mut TracePoint>::try_from(p)
    {
        let _ = tp.unload();
    }
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
    program: &'static str,
    cgroup_dir: &File,
    attach_type: aya::programs::CgroupSkbAttachType,
) -> Result<(), AttachError> {
    let program_err = |source| AttachError::Program { program, source };
    let prog: &mut CgroupSkb = ebpf
        .program_mut(program)
        .ok_or(AttachError::MissingProgram(program))?
        .try_into()
        .map_err(program_err)?;
    prog.load().map_err(program_err)?;
    // On the kernels hopprobe supports (ringbuf needs 5.8) aya attaches through a bpf_link,
    // which always coexists with other programs on the cgroup (systemd's, Cilium's); the kernel
    // rejects the ALLOW_MULTI flag there, so "Single" is the mode that means "no flags".
    prog.attach(cgroup_dir, attach_type, CgroupAttachMode::Single)
        .map_err(program_err)?;
    Ok(())
}

fn attach_sock_ops(
    ebpf: &mut Ebpf,
    program: &'static str,
    cgroup_dir: &File,
) -> Result<(), AttachError> {
    let program_err = |source| AttachError::Program { program, source };
    let prog: &mut SockOps = ebpf
        .program_mut(program)
        .ok_or(AttachError::MissingProgram(program))?
        .try_into()
        .map_err(program_err)?;
    prog.load().map_err(program_err)?;
    // As for cgroup_skb: a bpf_link, which coexists with other programs on the cgroup.
    prog.attach(cgroup_dir, CgroupAttachMode::Single)
        .map_err(program_err)?;
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

/// Retransmits and resets of one cgroup's sockets, as the summary lists them.
pub use hopprobe_formats::summary::TcpEvents;

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
