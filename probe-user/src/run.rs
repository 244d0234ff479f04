//! `hopprobe run`: attach, aggregate until told to stop, detach, report.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{HashMap as AyaHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, TracePoint},
};
use probe_common::{
    conn::{ConnEvent, TCP_RESETS_RECEIVED, TCP_RESETS_SENT, TCP_RETRANSMITS, TcpCounters},
    exchange::Exchange,
    hist::{BUCKETS, Hist, HistKey},
    stats,
};
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};
use tracing::{info, warn};

use crate::{
    cgroup::{self, Resolver},
    conn::{Aggregator, SeriesSummary},
    datapath::{Datapath, DatapathOptions},
    ebpf::{self, LoadError, MapSizes, error_chain},
    hops::{self, HopAggregator, HopSummary, Record, kernel_hops},
    metadata::Metadata,
    privilege,
    sidecar::Pairer,
    table,
    tracefs::{self, TracefsError},
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
}

pub const TRACEPOINT_PROGRAM: &str = "hp_sock_set_state";
pub const SKB_IN_PROGRAM: &str = "hp_skb_in";
pub const SKB_OUT_PROGRAM: &str = "hp_skb_out";

impl Probe {
    pub fn attach(cgroup_root: Option<&Path>, sizes: MapSizes) -> Result<Self, AttachError> {
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
            match attach_checked_tracepoint(&mut ebpf, &tracefs.root, tp) {
                Ok(()) => hooks.push(ActiveHook {
                    program: tp.program,
                    hook: "tracepoint",
                    target: format!("{}:{}", tp.category, tp.name),
                }),
                Err(why) => info!(program = tp.program, %why, "not attached"),
            }
        }
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
        Ok(Self {
            ebpf,
            hooks,
            cgroup_root,
        })
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        self.take_ring("EVENTS")
    }

    pub fn take_exchanges(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        self.take_ring("EXCHANGE_EVENTS")
    }

    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, AttachError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(AttachError::MissingMap(name))?;
        RingBuf::try_from(map).map_err(|source| AttachError::Map { name, source })
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn take_hists(&mut self) -> Result<PerCpuHashMap<MapData, HistKey, Hist>, AttachError> {
        let map = self
            .ebpf
            .take_map("HIST")
            .ok_or(AttachError::MissingMap("HIST"))?;
        PerCpuHashMap::try_from(map).map_err(|source| AttachError::Map {
            name: "HIST",
            source,
        })
    }

    pub fn take_tcp_counters(
        &mut self,
    ) -> Result<PerCpuHashMap<MapData, u64, TcpCounters>, AttachError> {
        let map = self
            .ebpf
            .take_map("TCP_COUNTERS")
            .ok_or(AttachError::MissingMap("TCP_COUNTERS"))?;
        PerCpuHashMap::try_from(map).map_err(|source| AttachError::Map {
            name: "TCP_COUNTERS",
            source,
        })
    }

    pub fn take_stats(&mut self) -> Result<PerCpuArray<MapData, u64>, AttachError> {
        let map = self
            .ebpf
            .take_map("STATS")
            .ok_or(AttachError::MissingMap("STATS"))?;
        PerCpuArray::try_from(map).map_err(|source| AttachError::Map {
            name: "STATS",
            source,
        })
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

const OPTIONAL_TRACEPOINTS: [OptionalTracepoint; 4] = [
    OptionalTracepoint {
        program: "hp_sock_recv",
        category: "sock",
        name: "sock_recv_length",
        layout: &[("sk", 8), ("protocol", 18), ("ret", 20), ("flags", 24)],
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

/// Sums the per-CPU counters by name.
pub fn read_counters(stats: &PerCpuArray<MapData, u64>) -> BTreeMap<&'static str, u64> {
    stats::NAMES
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

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub json: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    pub sizes: MapSizes,
    /// Write every exchange here as JSON Lines.
    pub records: Option<PathBuf>,
    /// Where to attach the datapath's TC programs; `None` leaves the datapath hops out.
    pub datapath: Option<DatapathOptions>,
    /// Names for cgroups and interfaces.
    pub metadata: Metadata,
    /// Container names whose exchanges pair into sidecar hops.
    pub proxy_containers: Vec<String>,
}

/// Sums each kernel histogram over the CPUs.
pub fn read_hists(map: &PerCpuHashMap<MapData, HistKey, Hist>) -> Vec<(HistKey, Vec<u64>)> {
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

/// What `--json` writes.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub duration_s: f64,
    pub stopped_by: &'static str,
    pub cgroup_root: PathBuf,
    pub hooks: Vec<ActiveHook>,
    pub counters: BTreeMap<&'static str, u64>,
    pub series: Vec<SeriesSummary>,
    pub hops: Vec<HopSummary>,
    pub tcp_events: Vec<TcpEvents>,
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

fn read_tcp_events(
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

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let context = context.into();
    move |source| RunError::Io { context, source }
}

pub fn run(opts: &RunOptions) -> Result<Summary, RunError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting the runtime"))?
        .block_on(run_async(opts))
}

/// Reads every item of a ring buffer as a `T`; items too short to be one are counted.
fn drain<T: Copy>(ring: &mut RingBuf<MapData>, mut each: impl FnMut(&T), short: &mut u64) {
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<T>() {
            // SAFETY: T is plain data written whole by the kernel; read_unaligned copes with
            // any offset.
            let value = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) };
            each(&value);
        } else {
            *short += 1;
        }
    }
}

/// Where exchanges go: the hop histograms, the sidecar pairer for proxy containers and, with
/// `--records`, a JSON Lines file.
struct ExchangeSink<'a> {
    hops: HopAggregator,
    pairer: Pairer,
    proxies: HashMap<u64, bool>,
    opts: &'a RunOptions,
    records: Option<std::io::BufWriter<File>>,
    write_error: Option<std::io::Error>,
}

impl ExchangeSink<'_> {
    fn is_proxy(&mut self, cgroup_id: u64, resolver: &mut Resolver) -> bool {
        if let Some(&known) = self.proxies.get(&cgroup_id) {
            return known;
        }
        let Some(path) = resolver.resolve(cgroup_id) else {
            // Not resolvable yet (a new cgroup): ask again next time.
            return false;
        };
        let proxy = self
            .opts
            .metadata
            .lookup(&path)
            .is_some_and(|c| self.opts.proxy_containers.contains(&c.container));
        self.proxies.insert(cgroup_id, proxy);
        proxy
    }

    fn add(&mut self, x: &Exchange, resolver: &mut Resolver) {
        self.hops.record(x);
        if self.is_proxy(x.cgroup_id, resolver) {
            self.pairer.add(x);
        }
        if let Some(w) = self.records.as_mut() {
            let line = serde_json::to_string(&Record::from(x)).unwrap_or_default();
            if let Err(e) = writeln!(w, "{line}") {
                // Stop writing, keep measuring; the run reports the error at the end.
                self.write_error = Some(e);
                self.records = None;
            }
        }
    }
}

async fn run_async(opts: &RunOptions) -> Result<Summary, RunError> {
    // Handlers go in before attaching, so a signal that arrives right after is not lost.
    let mut sigint = signal(SignalKind::interrupt()).map_err(io("installing SIGINT handler"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io("installing SIGTERM handler"))?;

    let records = match &opts.records {
        Some(path) => Some(std::io::BufWriter::new(
            File::create(path).map_err(io(format!("creating {}", path.display())))?,
        )),
        None => None,
    };
    let mut probe = Probe::attach(opts.cgroup_root.as_deref(), opts.sizes)?;
    let ring = probe.take_events()?;
    let exchanges = probe.take_exchanges()?;
    let stats = probe.take_stats()?;
    let hists = probe.take_hists()?;
    let tcp_counters = probe.take_tcp_counters()?;
    let in_progress: AyaHashMap<MapData, u64, Exchange> = probe
        .ebpf_mut()
        .take_map("EXCHANGES")
        .ok_or(AttachError::MissingMap("EXCHANGES"))
        .and_then(|m| {
            AyaHashMap::try_from(m).map_err(|source| AttachError::Map {
                name: "EXCHANGES",
                source,
            })
        })?;
    let mut datapath = match opts.datapath.clone() {
        Some(o) => match Datapath::attach(probe.ebpf_mut(), o) {
            Ok(d) => {
                probe.hooks.push(ActiveHook {
                    program: "hp_tc_node_in/out, hp_tc_pod_in/out",
                    hook: "tc",
                    target: format!("uplink {} and pod veths", d.uplink),
                });
                Some(d)
            }
            Err(e) => {
                warn!(error = %e, "datapath hops unavailable");
                None
            }
        },
        None => None,
    };
    // SAFETY: the RingBuf owns its map fd and always returns that same fd until dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| RunError::Io {
            context: "polling the ring buffer".into(),
            source: e.into(),
        })?;
    // SAFETY: as above.
    let mut exchanges =
        unsafe { AsyncFd::register_with_interest(exchanges, tokio::io::Interest::READABLE) }
            .map_err(|e| RunError::Io {
                context: "polling the exchange ring buffer".into(),
                source: e.into(),
            })?;
    let mut sink = ExchangeSink {
        hops: HopAggregator::default(),
        pairer: Pairer::default(),
        proxies: HashMap::new(),
        opts,
        records,
        write_error: None,
    };
    let hooks = probe.hooks.clone();
    let cgroup_root = probe.cgroup_root.clone();
    info!(
        hooks = %hooks.iter().map(|h| format!("{}={}:{}", h.program, h.hook, h.target)).collect::<Vec<_>>().join(","),
        "attached"
    );

    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let mut tick = tokio::time::interval_at(started + opts.interval, opts.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // New pods must be picked up within 2 s.
    let rescan_every = Duration::from_secs(1);
    let mut rescan = tokio::time::interval_at(started + rescan_every, rescan_every);
    rescan.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut agg = Aggregator::default();
    let mut resolver = Resolver::new(cgroup_root.clone());
    let stopped_by = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(io("polling the ring buffer"))?;
                let mut short = 0;
                drain(guard.get_inner_mut(), |e: &ConnEvent| agg.record(e), &mut short);
                agg.unknown += short;
                guard.clear_ready();
            }
            guard = exchanges.readable_mut() => {
                let mut guard = guard.map_err(io("polling the exchange ring buffer"))?;
                let mut short = 0;
                drain(guard.get_inner_mut(), |x: &Exchange| sink.add(x, &mut resolver), &mut short);
                agg.unknown += short;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                print_live(started.elapsed(), &agg, &mut resolver);
            }
            _ = rescan.tick(), if datapath.is_some() => {
                if let Some(dp) = datapath.as_mut()
                    && let Err(e) = dp.scan(probe.ebpf_mut())
                {
                    warn!(error = %e, "rescanning interfaces");
                }
            }
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sleep_until(deadline) => break "duration",
        }
    };
    // Detach first, then read what the programs wrote before they went.
    let ifnames = datapath.as_ref().map(Datapath::names).unwrap_or_default();
    if let Some(mut dp) = datapath.take() {
        dp.detach_all(probe.ebpf_mut());
    }
    drop(probe);
    let mut ring = ring.into_inner();
    let mut short = 0;
    drain(&mut ring, |e: &ConnEvent| agg.record(e), &mut short);
    drain(
        &mut exchanges.into_inner(),
        |x: &Exchange| sink.add(x, &mut resolver),
        &mut short,
    );
    agg.unknown += short;
    // Exchanges still open (kept-alive connections) have answered requests too.
    for (_, x) in in_progress.iter().flatten() {
        if x.resp_first_ns != 0 {
            sink.add(&x, &mut resolver);
        }
    }
    let mut counters = read_counters(&stats);
    counters.insert("unknown_events", agg.unknown);
    counters.insert("unanswered_exchanges", sink.hops.unanswered);
    let (sidecar_hops, unpaired) = std::mem::take(&mut sink.pairer).finish();
    for (cgroup, hop) in sidecar_hops {
        sink.hops.record_sidecar(cgroup, hop);
    }
    counters.insert("sidecar_unpaired", unpaired);
    if let Some(mut w) = sink.records.take()
        && let Err(e) = w.flush()
    {
        sink.write_error = Some(e);
    }
    info!(stopped_by, "detached");

    let summary = Summary {
        duration_s: started.elapsed().as_secs_f64(),
        stopped_by,
        cgroup_root,
        hooks,
        counters,
        series: agg.summaries(&mut resolver),
        hops: {
            let mut hops = kernel_hops(read_hists(&hists), &ifnames, &mut resolver);
            hops.extend(sink.hops.summaries(&mut resolver));
            hops.sort_by_key(|h| h.hop);
            hops::name(&mut hops, &opts.metadata);
            hops
        },
        tcp_events: read_tcp_events(&tcp_counters, &mut resolver),
    };
    print_summary(&summary);
    if let Some(path) = &opts.json {
        write_json(path, &summary)?;
    }
    if let (Some(e), Some(path)) = (sink.write_error, &opts.records) {
        return Err(RunError::Io {
            context: format!("writing {}", path.display()),
            source: e,
        });
    }
    Ok(summary)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn print_live(elapsed: Duration, agg: &Aggregator, resolver: &mut Resolver) {
    let mut out = format!(
        "--- hopprobe: {:.0}s, {} events ---\n",
        elapsed.as_secs_f64(),
        agg.events
    );
    if agg.is_empty() {
        out.push_str("(no TCP connections measured yet)\n");
    } else {
        out.push_str(&table::series(&agg.summaries(resolver)));
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
}

fn print_summary(summary: &Summary) {
    let mut out = format!(
        "=== hopprobe summary: {:.1}s, stopped by {} ===\n",
        summary.duration_s, summary.stopped_by
    );
    if summary.series.is_empty() {
        out.push_str("(no TCP connections measured)\n");
    } else {
        out.push_str(&table::series(&summary.series));
    }
    if !summary.hops.is_empty() {
        out.push_str(&table::hops(&summary.hops));
    }
    let counters: Vec<String> = summary
        .counters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push_str(&format!("counters: {}\n", counters.join(" ")));
    let _ = std::io::stdout().write_all(out.as_bytes());
}

fn write_json(path: &Path, summary: &Summary) -> Result<(), RunError> {
    let context = format!("writing {}", path.display());
    let text = serde_json::to_string_pretty(summary).map_err(|e| RunError::Io {
        context: context.clone(),
        source: e.into(),
    })?;
    // Write beside and rename, so a reader never sees half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(io(context.clone()))?;
    std::fs::rename(&tmp, path).map_err(io(context))
}
