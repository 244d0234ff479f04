//! `hopprobe run`: attach, aggregate until told to stop, detach, report.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{HashMap as AyaHashMap, MapData, PerCpuArray, RingBuf};
use probe_common::{
    conn::ConnEvent,
    exchange::Exchange,
    tcflow::{TcExchange, TcFlowKey},
};
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};
use tracing::{info, warn};

pub mod table;

use crate::{
    attach::{
        datapath::{Datapath, DatapathOptions},
        ebpf::MapSizes,
        evictions::{self, LruMaps},
        probe::{
            ActiveHook, AttachError, Probe, TcpEvents, read_counters, read_hists, read_tcp_events,
        },
        prog_info::{self, ProgramCost},
        reads::ReadHook,
    },
    hops::{
        self, HopAggregator, HopSummary, Record,
        datapath::{self as tcflow, DatapathRecord},
        kept::Kept,
        kernel_hops,
    },
    names::{
        Metadata,
        cgroup::Resolver,
        kube::{self as kube_names, KubeError, KubeOptions},
        parse_cgroup_path,
    },
    series::{
        conn::{Aggregator, SeriesSummary, sock_series},
        cpu::{CpuSampler, CpuSeries},
    },
};

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
    /// Names for cgroups and interfaces from `--metadata`.
    pub metadata: Metadata,
    /// Names from the Kubernetes API, behind the file's; `None` leaves the API alone.
    pub kube: Option<KubeOptions>,
    /// Container names whose exchanges pair into sidecar hops.
    pub proxy_containers: Vec<String>,
    /// Which hook marks a request's first read.
    pub read_hook: ReadHook,
    /// Turn the kernel's run-time statistics on for the run and report each program's cost.
    pub bpf_stats: bool,
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
    /// Each container's cumulative CPU (cgroup `usage_usec`), sampled every 500 ms.
    pub cpu: Vec<CpuSeries>,
    /// With `--bpf-stats`: each program's runs and run time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramCost>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] KubeError),
    #[error("--bpf-stats: turning on BPF run-time statistics (BPF_ENABLE_STATS, Linux 5.8+): {0}")]
    Stats(String),
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

/// Reads the three rings: connection events, exchanges and datapath exchanges.
fn drain_all(
    [events, exchanges, datapath]: [&mut RingBuf<MapData>; 3],
    agg: &mut Aggregator,
    sink: &mut ExchangeSink<'_>,
    resolver: &mut Resolver,
    ifnames: &BTreeMap<u32, String>,
) {
    let mut short = 0;
    drain(events, |e: &ConnEvent| agg.record(e), &mut short);
    drain(exchanges, |x: &Exchange| sink.add(x, resolver), &mut short);
    drain(
        datapath,
        |x: &TcExchange| sink.add_datapath(x, ifnames),
        &mut short,
    );
    agg.unknown += short;
}

/// Where exchanges go: the hop histograms, the store for the paired hops (`sidecar`,
/// `app_self`) and, with `--records`, a JSON Lines file.
struct ExchangeSink<'a> {
    hops: HopAggregator,
    kept: Kept,
    proxies: HashMap<u64, bool>,
    opts: &'a RunOptions,
    metadata: &'a Metadata,
    records: Option<std::io::BufWriter<File>>,
    write_error: Option<std::io::Error>,
}

impl ExchangeSink<'_> {
    /// Whether the cgroup is a proxy container's; `None` while that is not known yet (a new
    /// cgroup not resolvable yet, or a container the API server has not named yet).
    fn is_proxy(&mut self, cgroup_id: u64, resolver: &mut Resolver) -> Option<bool> {
        if let Some(&known) = self.proxies.get(&cgroup_id) {
            return Some(known);
        }
        let path = resolver.resolve(cgroup_id)?;
        let names = self.metadata.lookup(&path);
        let proxy = names
            .as_ref()
            .and_then(|n| n.container.as_ref())
            .is_some_and(|c| self.opts.proxy_containers.contains(c));
        let settled = !self.metadata.is_live()
            || names.is_some_and(|n| n.container.is_some())
            || parse_cgroup_path(&path).is_none_or(|ids| ids.container_id.is_none());
        if !settled {
            return None;
        }
        self.proxies.insert(cgroup_id, proxy);
        Some(proxy)
    }

    fn write_line(&mut self, line: &str) {
        if let Some(w) = self.records.as_mut()
            && let Err(e) = writeln!(w, "{line}")
        {
            // Stop writing, keep measuring; the run reports the error at the end.
            self.write_error = Some(e);
            self.records = None;
        }
    }

    fn add_datapath(&mut self, x: &TcExchange, ifnames: &BTreeMap<u32, String>) {
        if self.records.is_some() {
            let r = DatapathRecord::new(x, ifnames, &self.opts.metadata);
            self.write_line(&serde_json::to_string(&r).unwrap_or_default());
        }
    }

    fn add(&mut self, x: &Exchange, resolver: &mut Resolver) {
        self.hops.record(x);
        // An exchange of a cgroup not known yet pairs with nothing: taken as an app's, a
        // proxy's request would make an `app_self` of its own.
        if let Some(proxy) = self.is_proxy(x.cgroup_id, resolver) {
            self.kept.add(x, proxy);
        }
        if self.records.is_some() {
            let line = serde_json::to_string(&Record::from(x)).unwrap_or_default();
            self.write_line(&line);
        }
    }
}

async fn run_async(opts: &RunOptions) -> Result<Summary, RunError> {
    // Handlers go in before attaching, so a signal that arrives right after is not lost.
    let mut sigint = signal(SignalKind::interrupt()).map_err(io("installing SIGINT handler"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io("installing SIGTERM handler"))?;

    // Names first: a cluster that refuses hopprobe's credentials stops it before anything is
    // attached.
    let (metadata, _kube) = match &opts.kube {
        Some(k) => {
            let config = match &k.kubeconfig {
                Some(path) => kube_names::config_from_file(path).await?,
                None => kube_names::infer_config().await?,
            };
            let source = kube_names::start(config, k).await?;
            (
                opts.metadata.clone().with_kube(source.names.clone()),
                Some(source),
            )
        }
        None => (opts.metadata.clone(), None),
    };
    let records = match &opts.records {
        Some(path) => Some(std::io::BufWriter::new(
            File::create(path).map_err(io(format!("creating {}", path.display())))?,
        )),
        None => None,
    };
    let mut probe = Probe::attach_with(opts.cgroup_root.as_deref(), opts.sizes, opts.read_hook)?;
    // After attaching, which checks privileges first; runs count from here. The kernel turns
    // the statistics off again when the fd closes, whichever way hopprobe exits, and a
    // failure here detaches (`probe` is dropped) before reporting.
    let _stats_on = if opts.bpf_stats {
        Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .map_err(|e| RunError::Stats(e.to_string()))?,
        )
    } else {
        None
    };
    let ring = probe.take_events()?;
    let exchanges = probe.take_exchanges()?;
    let stats = probe.take_stats()?;
    let hists = probe.take_hists()?;
    let tcp_counters = probe.take_tcp_counters()?;
    let sock_hists = probe.take_sock_hists()?;
    let lru = LruMaps::take(&mut probe)?;
    let tc_flow_events: RingBuf<MapData> = probe.take("TC_FLOW_EVENTS")?;
    let tc_flow_stats = probe.take("TC_FLOW_STATS")?;
    let tc_flows_open: AyaHashMap<MapData, TcFlowKey, TcExchange> = probe.take("TC_FLOWS")?;
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
    // SAFETY: as above.
    let mut tc_flow_events =
        unsafe { AsyncFd::register_with_interest(tc_flow_events, tokio::io::Interest::READABLE) }
            .map_err(|e| RunError::Io {
            context: "polling the datapath ring buffer".into(),
            source: e.into(),
        })?;
    let mut ifnames = datapath.as_ref().map(Datapath::names).unwrap_or_default();
    let mut sink = ExchangeSink {
        hops: HopAggregator::default(),
        kept: Kept::default(),
        proxies: HashMap::new(),
        opts,
        metadata: &metadata,
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
    let mut cpu = CpuSampler::new(cgroup_root.clone());
    cpu.sample(&opts.metadata);
    // The programs wake this loop only when a ring is an eighth full (`wake_flags` in
    // probe-ebpf): a wake-up per record cost the traced requests more than hopprobe's own
    // work did. Records wait at most this long otherwise.
    let drain_every = Duration::from_millis(10);
    let mut drain_tick = tokio::time::interval_at(started + drain_every, drain_every);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let cpu_every = Duration::from_millis(500);
    let mut cpu_tick = tokio::time::interval_at(started + cpu_every, cpu_every);
    cpu_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
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
            guard = tc_flow_events.readable_mut() => {
                let mut guard = guard.map_err(io("polling the datapath ring buffer"))?;
                let mut short = 0;
                drain(guard.get_inner_mut(), |x: &TcExchange| sink.add_datapath(x, &ifnames), &mut short);
                agg.unknown += short;
                guard.clear_ready();
            }
            _ = drain_tick.tick() => drain_all(
                [ring.get_mut(), exchanges.get_mut(), tc_flow_events.get_mut()],
                &mut agg,
                &mut sink,
                &mut resolver,
                &ifnames,
            ),
            _ = cpu_tick.tick() => cpu.sample(&opts.metadata),
            _ = tick.tick() => {
                print_live(started.elapsed(), &agg, &mut resolver, &stats, &lru);
            }
            _ = rescan.tick(), if datapath.is_some() => {
                if let Some(dp) = datapath.as_mut()
                    && let Err(e) = dp.scan(probe.ebpf_mut())
                {
                    warn!(error = %e, "rescanning interfaces");
                }
                // Keep names of vanished veths: their last exchanges may still be in the ring.
                if let Some(dp) = datapath.as_ref() {
                    ifnames.extend(dp.names());
                }
            }
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sleep_until(deadline) => break "duration",
        }
    };
    cpu.sample(&opts.metadata);
    // Detach first, then read what the programs wrote before they went.
    if let Some(dp) = datapath.as_ref() {
        ifnames.extend(dp.names());
    }
    if let Some(mut dp) = datapath.take() {
        dp.detach_all(probe.ebpf_mut());
    }
    // Read while the programs are still loaded; nothing of ours runs on the TC points any more
    // and the rest stop with `drop`, so the count can grow by at most a few in between.
    let missed = probe.missed_runs();
    let programs = if opts.bpf_stats {
        probe.costs()
    } else {
        Vec::new()
    };
    drop(probe);
    let (mut ring, mut exchanges, mut tc_flow_events) = (
        ring.into_inner(),
        exchanges.into_inner(),
        tc_flow_events.into_inner(),
    );
    drain_all(
        [&mut ring, &mut exchanges, &mut tc_flow_events],
        &mut agg,
        &mut sink,
        &mut resolver,
        &ifnames,
    );
    // Connections still open at the TC points (kept alive) have answered exchanges too.
    for (_, x) in tc_flows_open.iter().flatten() {
        if x.resp_first_ns != 0 {
            sink.add_datapath(&x, &ifnames);
        }
    }
    // Exchanges still open (kept-alive connections) have answered requests too.
    for (_, x) in lru.exchanges.iter().flatten() {
        if x.resp_first_ns != 0 {
            sink.add(&x, &mut resolver);
        }
    }
    let mut counters = read_counters(&stats);
    // Exact now: the programs are detached, nothing moves the counts any more.
    lru.add_evictions(&mut counters);
    counters.extend(tcflow::read_counters(&tc_flow_stats));
    counters.insert("unknown_events", agg.unknown);
    counters.insert(
        "missed_runs",
        missed.get("missed_runs").copied().unwrap_or(0),
    );
    counters.insert("unanswered_exchanges", sink.hops.unanswered);
    let kept = std::mem::take(&mut sink.kept);
    counters.insert("pairing_overflow", kept.overflow);
    let paired = kept.finish();
    for (cgroup, hop) in paired.sidecar {
        sink.hops.record_sidecar(cgroup, hop);
    }
    for a in paired.app_self {
        sink.hops.record_app_self(a);
    }
    counters.insert("sidecar_unpaired", paired.sidecar_unpaired);
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
        series: {
            let mut series = agg.summaries(&mut resolver);
            series.extend(sock_series(read_hists(&sock_hists), &mut resolver));
            series
        },
        hops: {
            let mut hops = kernel_hops(read_hists(&hists), &ifnames, &mut resolver);
            hops.extend(sink.hops.summaries(&mut resolver));
            hops.sort_by_key(|h| h.hop);
            hops::name(&mut hops, &metadata);
            hops
        },
        tcp_events: read_tcp_events(&tcp_counters, &mut resolver),
        cpu: cpu.finish(),
        programs,
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

fn print_live(
    elapsed: Duration,
    agg: &Aggregator,
    resolver: &mut Resolver,
    stats: &PerCpuArray<MapData, u64>,
    lru: &LruMaps,
) {
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
    let mut counters = read_counters(stats);
    lru.add_evictions(&mut counters);
    out.push_str(&footer(&counters));
    let _ = std::io::stdout().write_all(out.as_bytes());
}

/// The records' fate and the LRU evictions in one line (evictions while running are estimates:
/// see `evictions`).
pub fn footer(counters: &BTreeMap<&'static str, u64>) -> String {
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    let evicted: Vec<String> = evictions::NAMES
        .iter()
        .map(|n| format!("{}={}", n.trim_start_matches("evicted_"), get(n)))
        .collect();
    format!(
        "records: produced {} sent {} rate-limited {} ring-full {} | evicted: {}\n",
        get("exchanges_produced"),
        get("exchanges_sent"),
        get("exchanges_rate_limited"),
        get("exchange_drops"),
        evicted.join(" ")
    )
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
    if !summary.programs.is_empty() {
        out.push_str(&prog_info::render(&summary.programs));
    }
    out.push_str(&footer(&summary.counters));
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
