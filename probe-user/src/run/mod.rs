//! `hopprobe run`: attach, aggregate until told to stop, detach, report.

mod metrics;
mod output;
mod retire;
mod rings;
mod sink;
pub mod table;

use std::{collections::BTreeMap, fs::File, io::BufWriter, path::PathBuf, time::Duration};

use aya::maps::{HashMap as AyaHashMap, MapData, PerCpuArray, PerCpuHashMap};
use probe_common::{
    conn::TcpCounters,
    exchange::ExHistKey,
    hist::{Hist, HistKey},
    sockops::SockHistKey,
    tcflow::{TcExchange, TcFlowKey},
};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, Interval, MissedTickBehavior},
};
use tracing::{info, warn};

pub use output::footer;
use rings::Rings;
use sink::{Collector, ExchangeSink};

use crate::{
    attach::{
        datapath::{Datapath, DatapathError, DatapathOptions, Target},
        ebpf::MapSizes,
        evictions::LruMaps,
        probe::{ActiveHook, AttachError, Probe, read_counters, read_hists, read_tcp_events},
        reads::ReadHook,
    },
    export::{
        Limits,
        retired::Retired,
        server::{Scrape, Server},
    },
    hops::{self, datapath as tcflow, kernel_hops},
    names::{
        Metadata,
        cgroup::Resolver,
        kube::{self as kube_names, KubeError, KubeOptions, KubeSource},
    },
    series::{conn, cpu::CpuSampler},
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
    /// `--bpf-floor`: do-nothing programs beside ours (see `Probe::attach_floors`).
    pub bpf_floor: bool,
    /// `--metrics-addr`: serve `/metrics` while running.
    pub metrics: Option<MetricsOptions>,
    /// How long after its request began an exchange may still arrive and be paired
    /// (`hops::stream`).
    pub pairing_horizon: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct MetricsOptions {
    pub addr: std::net::SocketAddr,
    pub limits: Limits,
    /// How long a deleted pod's series stay exported (`retire`).
    pub series_grace: Duration,
}

/// What `--json` writes (and `hopprobe report --summary` reads), with the names the run holds
/// borrowed.
pub type Summary = hopprobe_formats::summary::Summary<&'static str>;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] KubeError),
    #[error("--bpf-stats: turning on BPF run-time statistics (BPF_ENABLE_STATS, Linux 5.8+): {0}")]
    Stats(String),
    /// A `--netns` or `--uplink` that is not there.
    #[error(transparent)]
    Datapath(DatapathError),
    #[error("--metrics-addr {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
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

/// Names for cgroups and interfaces: the `--metadata` file's, and with `--kube` the API
/// server's behind them. Everything that names things in a run takes these, never the file's
/// alone. The source is returned to keep its watchers running.
async fn names(opts: &RunOptions) -> Result<(Metadata, Option<KubeSource>), RunError> {
    let Some(k) = &opts.kube else {
        return Ok((opts.metadata.clone(), None));
    };
    let config = match &k.kubeconfig {
        Some(path) => kube_names::config_from_file(path).await?,
        None => kube_names::infer_config().await?,
    };
    let source = kube_names::start(config, k).await?;
    Ok((
        opts.metadata.clone().with_kube(source.names.clone()),
        Some(source),
    ))
}

/// The maps read at each tick and at the end (the rings are in `Rings`).
struct Maps {
    stats: PerCpuArray<MapData, u64>,
    hists: PerCpuHashMap<MapData, HistKey, Hist>,
    tcp_counters: PerCpuHashMap<MapData, u64, TcpCounters>,
    sock_hists: PerCpuHashMap<MapData, SockHistKey, Hist>,
    lru: LruMaps,
    tc_flow_stats: PerCpuArray<MapData, u64>,
    /// Hops of exchanges whose record was not sent (rate limit, ring full).
    ex_hists: PerCpuHashMap<MapData, ExHistKey, Hist>,
    /// Connections still open at the TC points when the run ends.
    tc_flows_open: AyaHashMap<MapData, TcFlowKey, TcExchange>,
}

impl Maps {
    fn take(probe: &mut Probe) -> Result<Self, AttachError> {
        Ok(Self {
            stats: probe.take_stats()?,
            hists: probe.take_hists()?,
            tcp_counters: probe.take_tcp_counters()?,
            sock_hists: probe.take_sock_hists()?,
            lru: LruMaps::take(probe)?,
            tc_flow_stats: probe.take("TC_FLOW_STATS")?,
            ex_hists: probe.take("EXCHANGE_HIST")?,
            tc_flows_open: probe.take("TC_FLOWS")?,
        })
    }
}

/// Where the datapath's TC programs go, found before anything is attached. What the user
/// named and is not there is an error; what hopprobe looked for itself (the default route's
/// interface) and did not find leaves the datapath hops out.
fn datapath_target(
    opts: &RunOptions,
    missing: &mut Vec<Missing>,
) -> Result<Option<Target>, RunError> {
    let Some(o) = &opts.datapath else {
        return Ok(None);
    };
    match Target::resolve(o) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_bad_input() => Err(RunError::Datapath(e)),
        Err(e) => {
            warn!(error = %e, "datapath hops unavailable");
            missing.push(Missing::datapath(&e));
            Ok(None)
        }
    }
}

/// A part of the measurement hopprobe looked for by itself and could not attach: the run goes
/// on without it, and the log, `/readyz` and `hopprobe_missing` say so.
#[derive(Debug, Clone)]
pub struct Missing {
    pub part: &'static str,
    pub why: String,
}

impl Missing {
    fn datapath(e: &DatapathError) -> Self {
        Self {
            part: "datapath",
            why: e.to_string(),
        }
    }
}

/// The datapath's TC programs, if asked for and attachable; a failure leaves those hops out,
/// except an `--uplink` gone since `datapath_target` found it, which stops the run (the caller
/// drops `probe`, which detaches the rest).
fn attach_datapath(
    probe: &mut Probe,
    opts: &RunOptions,
    target: Option<Target>,
    missing: &mut Vec<Missing>,
) -> Result<Option<Datapath>, RunError> {
    let (Some(o), Some(target)) = (opts.datapath.clone(), target) else {
        return Ok(None);
    };
    match Datapath::attach(probe.ebpf_mut(), o, target) {
        Ok(d) => {
            probe.hooks.push(ActiveHook {
                program: "hp_tc_node_in/out, hp_tc_pod_in/out",
                hook: "tc",
                target: format!("uplink {} and pod veths", d.uplink),
            });
            Ok(Some(d))
        }
        Err(e) if e.is_bad_input() => Err(RunError::Datapath(e)),
        Err(e) => {
            warn!(error = %e, "datapath hops unavailable");
            missing.push(Missing::datapath(&e));
            Ok(None)
        }
    }
}

/// How long records may wait in a ring that is less than an eighth full. Every wake-up of
/// the loop cost 50–60 µs of CPU on the 2-core development VM (perf: the timer, `epoll_wait`
/// and the switch), so at 10 ms hopprobe spent 6 ms a second doing nothing, at 100 ms 2 ms
/// (2026-12-05). Nothing waits on a record sooner: the pairing's horizon is seconds, and a
/// scrape and the end of the run drain the rings first.
const DRAIN_PERIOD: Duration = Duration::from_millis(100);

fn every(started: Instant, period: Duration) -> Interval {
    let mut i = tokio::time::interval_at(started + period, period);
    i.set_missed_tick_behavior(MissedTickBehavior::Skip);
    i
}

/// The loop's clocks.
struct Ticks {
    /// The live table.
    live: Interval,
    /// New pods must be picked up within 2 s.
    rescan: Interval,
    /// The programs wake the loop only when a ring is an eighth full (`wake_flags` in
    /// probe-ebpf): a wake-up per record cost the traced requests more than hopprobe's own
    /// work did. Records wait at most [`DRAIN_PERIOD`] otherwise.
    drain: Interval,
    cpu: Interval,
    /// Pairs `sidecar` and `app_self` up to the horizon.
    pairing: Interval,
    /// Looks for deleted pods' series.
    retire: Interval,
}

impl Ticks {
    fn new(started: Instant, live: Duration, retire: Duration) -> Self {
        Self {
            live: every(started, live),
            rescan: every(started, Duration::from_secs(1)),
            drain: every(started, DRAIN_PERIOD),
            cpu: every(started, Duration::from_millis(500)),
            pairing: every(started, Duration::from_secs(1)),
            retire: every(started, retire),
        }
    }
}

async fn run_async(opts: &RunOptions) -> Result<Summary, RunError> {
    // Handlers go in before attaching, so a signal that arrives right after is not lost.
    let mut sigint = signal(SignalKind::interrupt()).map_err(io("installing SIGINT handler"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io("installing SIGTERM handler"))?;
    // Bound first: a port in use stops the run before anything is attached.
    let mut server = match &opts.metrics {
        Some(m) => Some(
            std::net::TcpListener::bind(m.addr)
                .and_then(Server::start)
                .map_err(|source| RunError::Metrics {
                    addr: m.addr,
                    source,
                })?,
        ),
        None => None,
    };
    if let Some(s) = &server {
        info!(addr = %s.addr, "serving /metrics, /healthz and /readyz");
        s.state.set_ready(false, "attaching");
    }
    // Names first: a cluster that refuses hopprobe's credentials stops it before anything is
    // attached.
    let (metadata, _kube) = names(opts).await?;
    let records = match &opts.records {
        Some(path) => Some(BufWriter::new(
            File::create(path).map_err(io(format!("creating {}", path.display())))?,
        )),
        None => None,
    };
    let plan_options = crate::attach::plan::Options {
        read_hook: opts.read_hook,
        datapath: opts.datapath.is_some(),
    };
    // Privilege first: without it, entering `--netns` fails too, and the user is to be told
    // what they lack rather than that the namespace could not be entered.
    Probe::check_privilege()?;
    let mut missing = Vec::new();
    let target = datapath_target(opts, &mut missing)?;
    let sizes = MapSizes {
        datapath: target.is_some(),
        ..opts.sizes
    };
    let mut probe = Probe::attach_with(opts.cgroup_root.as_deref(), sizes, plan_options)?;
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
    if opts.bpf_floor {
        probe.attach_floors()?;
    }
    let mut rings = Rings::take(&mut probe)?;
    let mut maps = Maps::take(&mut probe)?;
    let mut datapath = attach_datapath(&mut probe, opts, target, &mut missing)?;
    let hooks = probe.hooks.clone();
    let cgroup_root = probe.cgroup_root.clone();
    // Names came first (with --kube the API server listed what this node runs); ready before
    // the log says attached, which is what a watcher of the log waits for.
    if let Some(s) = &server {
        s.state.set_missing(
            missing
                .iter()
                .map(|m| format!("{} ({})", m.part, m.why))
                .collect(),
        );
        s.state.set_ready(true, "");
    }
    info!(
        hooks = %hooks.iter().map(|h| format!("{}={}:{}", h.program, h.hook, h.target)).collect::<Vec<_>>().join(","),
        "attached"
    );
    let mut c = Collector {
        sink: ExchangeSink::new(&metadata, &opts.proxy_containers, records),
        resolver: Resolver::new(cgroup_root.clone()),
        ifnames: datapath.as_ref().map(Datapath::names).unwrap_or_default(),
        unknown: 0,
    };
    // The containers' CPU over time is for the report, which reads it from `--json`. Without
    // it the samples would only pile up: 2 a second per container for as long as a DaemonSet
    // runs.
    let mut cpu = opts
        .json
        .is_some()
        .then(|| CpuSampler::new(cgroup_root.clone()));
    if let Some(cpu) = cpu.as_mut() {
        cpu.sample();
    }
    let limits = opts.metrics.map(|m| m.limits).unwrap_or_default();
    // Only a run that exports retires: a batch run's summary keeps every pod it saw.
    let mut retirement = opts
        .metrics
        .map(|m| retire::Retirement::new(m.series_grace, m.limits));
    let empty = Retired::default();

    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let mut ticks = Ticks::new(
        started,
        opts.interval,
        retirement
            .as_ref()
            .map_or(Duration::from_secs(10), retire::Retirement::period),
    );
    let stopped_by = loop {
        tokio::select! {
            ready = rings.exchanges.readable() => ready?.exchanges(&mut c),
            ready = rings.datapath.readable() => ready?.datapath(&mut c),
            _ = ticks.drain.tick() => {
                rings.drain_all(&mut c);
                if let Some(s) = &server {
                    s.state.beat();
                }
            }
            scrape = next_scrape(&mut server) => {
                // What the rings hold is up to a drain period old: a scrape counts it too.
                rings.drain_all(&mut c);
                let retired = retirement.as_ref().map_or(&empty, |r| &r.retired);
                let mut snapshot = metrics::snapshot(&maps, &mut c, &metadata, limits, retired);
                snapshot.missing = missing.iter().map(|m| m.part).collect();
                let _ = scrape.reply.send(snapshot);
            }
            _ = ticks.cpu.tick(), if cpu.is_some() => {
                if let Some(cpu) = cpu.as_mut() {
                    cpu.sample();
                }
            }
            _ = ticks.retire.tick(), if retirement.is_some() => {
                if let Some(r) = retirement.as_mut() {
                    let live = datapath.as_ref().map(Datapath::names);
                    r.look(&mut maps, &mut c, &metadata, live.as_ref());
                }
            }
            _ = ticks.pairing.tick() => {
                // CLOCK_MONOTONIC: the programs' clock (`bpf_ktime_get_ns`).
                let cutoff = crate::series::cpu::monotonic_ns().saturating_sub(opts.pairing_horizon.as_nanos() as u64);
                c.sink.pairing.sweep(cutoff, &mut c.sink.hops);
            }
            _ = ticks.live.tick() => output::print_live(
                started.elapsed(), read_hists(&maps.sock_hists), &mut c.resolver, &metadata, &maps.stats, &maps.lru,
            ),
            _ = ticks.rescan.tick(), if datapath.is_some() => {
                if let Some(dp) = datapath.as_mut() {
                    if let Err(e) = dp.scan(probe.ebpf_mut()) {
                        warn!(error = %e, "rescanning interfaces");
                    }
                    c.ifnames.extend(dp.names());
                }
            }
            _ = recv(&mut sigint) => break "SIGINT",
            _ = recv(&mut sigterm) => break "SIGTERM",
            _ = sleep_until(deadline) => break "duration",
        }
    };
    if let Some(cpu) = cpu.as_mut() {
        cpu.sample();
    }
    if let Some(s) = server.as_mut() {
        s.shutting_down();
    }
    // Detach first, then read what the programs wrote before they went.
    if let Some(mut dp) = datapath.take() {
        c.ifnames.extend(dp.names());
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
    rings.drain_last(&mut c);
    // Connections still open at the TC points (kept alive) have answered exchanges too.
    for (_, x) in maps.tc_flows_open.iter().flatten() {
        if x.resp_first_ns != 0 {
            c.sink.add_datapath(&x, &c.ifnames);
        }
    }
    // Exchanges still open (kept-alive connections) have answered requests too.
    for (_, x) in maps.lru.exchanges.iter().flatten() {
        if x.resp_first_ns != 0 && x.tls & probe_common::tls::TLS_LOST == 0 {
            c.sink.add(&x, &mut c.resolver);
        }
    }
    let counters = final_counters(&maps, &mut c, missed.get("missed_runs").copied());
    c.sink.close_records();
    info!(stopped_by, "detached");

    let summary = Summary {
        duration_s: started.elapsed().as_secs_f64(),
        stopped_by,
        cgroup_root,
        hooks,
        counters,
        series: {
            let mut series = conn::summaries(read_hists(&maps.sock_hists), &mut c.resolver);
            conn::name(&mut series, &metadata);
            series
        },
        hops: {
            // Exchanges without a record count in their hops all the same.
            for (k, counts) in read_hists(&maps.ex_hists) {
                c.sink.hops.add_kernel(&k, &counts);
            }
            let mut hops = kernel_hops(read_hists(&maps.hists), &c.ifnames, &mut c.resolver);
            hops.extend(c.sink.hops.summaries(&mut c.resolver));
            hops.sort_by_key(|h| h.hop);
            hops::name(&mut hops, &metadata);
            hops
        },
        tcp_events: read_tcp_events(&maps.tcp_counters, &mut c.resolver),
        cpu: cpu.map(|c| c.finish(&metadata)).unwrap_or_default(),
        programs,
    };
    output::print_summary(&summary);
    if let Some(path) = &opts.json {
        output::write_json(path, &summary)?;
    }
    if let (Some(e), Some(path)) = (c.sink.write_error, &opts.records) {
        return Err(RunError::Io {
            context: format!("writing {}", path.display()),
            source: e,
        });
    }
    Ok(summary)
}

/// The counters once the programs are gone, with what was still waiting to be paired into
/// `sidecar` and `app_self` hops paired: the kernel's counts are exact now.
fn final_counters(
    maps: &Maps,
    c: &mut Collector<'_>,
    missed_runs: Option<u64>,
) -> BTreeMap<&'static str, u64> {
    let mut counters = read_counters(&maps.stats);
    maps.lru.add_evictions(&mut counters);
    counters.extend(tcflow::read_counters(&maps.tc_flow_stats));
    counters.insert("unknown_events", c.unknown);
    counters.insert("missed_runs", missed_runs.unwrap_or(0));
    counters.insert("unanswered_exchanges", c.sink.hops.unanswered);
    let tls = c.sink.hops.tls;
    counters.insert("tls_handshakes", tls.handshakes);
    counters.insert("tls_resumed", tls.resumed);
    counters.insert("tls13_handshakes", tls.tls13);
    counters.insert("tls_client_auth", tls.client_auth);
    let pairing = &mut c.sink.pairing;
    pairing.finish(&mut c.sink.hops);
    counters.insert("pairing_overflow", pairing.overflow);
    counters.insert("pairing_late", pairing.late);
    counters.insert("sidecar_unpaired", pairing.sidecar_unpaired);
    counters
}

/// The next scrape, if `/metrics` is served.
async fn next_scrape(server: &mut Option<Server>) -> Scrape {
    match server {
        Some(s) => s.next_scrape().await,
        None => std::future::pending().await,
    }
}

async fn recv(s: &mut Signal) {
    s.recv().await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
