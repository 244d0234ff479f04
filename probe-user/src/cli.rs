//! The `hopprobe` command line.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use tracing::error;

use crate::{
    attach::{
        datapath,
        ebpf::{self, MapSizes, RingWakeup},
        ebpf_log::{self, EbpfLog},
        probe::AttachError,
        reads::ReadHook,
    },
    check, exit,
    export::Limits,
    names::{self as metadata, kube::KubeOptions},
    run,
};

#[derive(Parser, Debug)]
#[command(
    name = "hopprobe",
    version,
    about = "eBPF probe that shows where a request's latency goes inside a node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How the log on stderr is written: `text` (colour at a terminal only) or `json` (one
    /// object a line, for log collectors; the DaemonSet's).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "HOPPROBE_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum Command {
    /// Attach the probes, print a live table, and a summary when stopped.
    Run(RunArgs),
    /// Report which eBPF hook types this kernel offers; exit 0 if hopprobe can run here.
    Check(CheckArgs),
    /// Join a load generator's requests with hopprobe's records: where each request's time
    /// went, per hop and percentile, per environment (`--label` starts one).
    Report(ReportArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Stop after this long (e.g. `10s`, `2m`); runs until SIGINT/SIGTERM when omitted.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How often to print the live table.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub interval: Duration,
    /// Write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// cgroup v2 root to attach to [default: the cgroup2 mount in /proc/self/mounts].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// Sockets tracked at once; the least recently used are forgotten beyond it.
    #[arg(long, value_name = "N", default_value_t = MapSizes::default().max_sockets,
          value_parser = parse_map_entries)]
    pub max_sockets: u32,
    /// Packets remembered between the datapath's observation points.
    #[arg(long, value_name = "N", default_value_t = MapSizes::default().max_packets,
          value_parser = parse_map_entries)]
    pub max_packets: u32,
    /// Exchange records per second the kernel sends to userspace (0: no limit); the rest are
    /// counted in `exchanges_rate_limited`. The app, upstream and sidecar hops are made from
    /// the records that were sent.
    #[arg(long, value_name = "N", default_value_t = MapSizes::default().records_rate)]
    pub records_rate: u64,
    /// Exchange records sent at once before `--records-rate` applies.
    #[arg(long, value_name = "N", default_value_t = MapSizes::default().records_burst)]
    pub records_burst: u64,
    /// Size of the exchange records' ring buffer in bytes (a power of two, at least 4096);
    /// records that do not fit are counted in `exchange_drops`.
    #[arg(long, value_name = "BYTES", default_value_t = MapSizes::default().exchange_ring_bytes,
          value_parser = parse_ring_size)]
    pub records_ring_size: u32,
    /// When the kernel wakes hopprobe to read its ring buffers: `batched` when one is an
    /// eighth full (and every 100 ms regardless), `each` at every record as the kernel does by
    /// default, which lengthens the traced requests (docs/design/ring-wakeups.md).
    #[arg(long, value_enum, default_value_t = RingWakeup::Batched)]
    pub ring_wakeup: RingWakeup,
    /// Follow TLS connections by their plaintext record headers: handshakes become
    /// `tls_handshake` series instead of being taken for requests, and HTTPS and mTLS
    /// exchanges count only their application data (docs/tls.md). Off by default for now: the
    /// verifier unrolls the record walk's loop, which lengthens loading by seconds.
    #[arg(long)]
    pub tls: bool,
    /// Turn on the kernel's BPF run-time statistics while hopprobe runs, and report each
    /// program's runs and time (in the summary and `--json`'s `programs`). The statistics
    /// cover every BPF program on the machine and add two clock reads to each run.
    #[arg(long)]
    pub bpf_stats: bool,
    /// With `--bpf-stats`: also attach, after each of hopprobe's programs on the same hook, a
    /// program that does nothing, and report its runs and time as `floor/<hook>`
    /// (`floor/tracepoint`, `floor/cgroup_skb`, `floor/sock_ops`, `floor/tc`): what a run on
    /// that hook costs at the least on this machine, measured in the same run
    /// (docs/overhead.md).
    #[arg(long, requires = "bpf_stats")]
    pub bpf_floor: bool,
    /// How long after its request began an exchange may still reach hopprobe and be paired
    /// into a `sidecar` or `app_self` hop; later ones count in `pairing_late`. Exchanges wait
    /// this long in memory (docs/hops.md).
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub pairing_horizon: Duration,
    /// Serve Prometheus metrics on `/metrics`, and `/healthz` and `/readyz`, on this address
    /// (e.g. `0.0.0.0:9464`) while running. Off when omitted (docs/metrics.md).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Latency and TCP series in one scrape at most; series beyond it are left out and
    /// counted (`hopprobe_series_dropped`).
    #[arg(
        long,
        default_value_t = 10_000,
        value_name = "N",
        requires = "metrics_addr"
    )]
    pub metrics_max_series: usize,
    /// Destinations per source workload in `hopprobe_upstream_duration_seconds`; calls to
    /// the rest count under `destination="other"`.
    #[arg(
        long,
        default_value_t = 50,
        value_name = "N",
        requires = "metrics_addr"
    )]
    pub metrics_max_destinations: usize,
    /// Label series by pod (`k8s_pod`), not only by workload: a series per pod, and new
    /// ones at every rollout.
    #[arg(long, requires = "metrics_addr")]
    pub metrics_pod_labels: bool,
    /// How long the series of a deleted pod (its cgroups and veth gone from the node) stay
    /// in /metrics before they are removed; a workload's series stay while any of its pods
    /// lives, with the deleted pods' counts in them.
    #[arg(
        long,
        default_value = "5m",
        value_name = "DURATION",
        value_parser = parse_positive_duration,
        requires = "metrics_addr"
    )]
    pub metrics_series_grace: Duration,
    /// Let the eBPF programs report, on stderr as `<program>: <message>`, each condition they
    /// only count otherwise: `warn` for data lost other than to load (a map insert that
    /// failed, a tracepoint whose fields did not parse), `debug` also for a full ring buffer
    /// or a socket closed without being seen open. [default: off, unless RUST_LOG has a
    /// directive for the target `hopprobe::ebpf`, e.g. `RUST_LOG=info,hopprobe::ebpf=debug`;
    /// a bare `RUST_LOG=debug` does not turn it on.] Off, the logging code is never run;
    /// on, each record costs the traced packet a ring write.
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub ebpf_log: Option<EbpfLog>,
    /// Which hook sees a process read a request (splits `app` into queue and processing):
    /// `auto` takes `sock:sock_recv_length` where the kernel has it (6.12+), else syscall
    /// tracepoints; `syscalls` takes the syscall tracepoints everywhere.
    #[arg(long, value_enum, default_value_t = ReadHook::Auto)]
    pub app_reads: ReadHook,
    /// Write every request/response exchange seen at a socket to this file, as JSON Lines.
    #[arg(long, value_name = "FILE")]
    pub records: Option<PathBuf>,
    /// The node's uplink [default: the interface of the default route].
    #[arg(long, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// Host-side veths of pods, as comma-separated globs.
    #[arg(long, value_name = "GLOB", default_value = datapath::DEFAULT_POD_IFACES)]
    pub pod_ifaces: String,
    /// Network namespace of the node's interfaces (e.g. /run/netns/hpl-node for the lab)
    /// [default: hopprobe's own].
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Names for cgroups and interfaces: a JSON file as `hoplab` writes it (docs/names.md).
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
    /// Containers that are proxies: their exchanges pair into sidecar hops.
    #[arg(long, value_name = "NAMES", default_value = metadata::DEFAULT_PROXY_CONTAINERS)]
    pub proxy_containers: String,
    /// Name pods, containers and peer services from the Kubernetes API (this node's pods,
    /// the cluster's Services and EndpointSlices). On by default inside a pod
    /// (`KUBERNETES_SERVICE_HOST` set); `--no-kube` turns it off.
    #[arg(long, conflicts_with = "no_kube")]
    pub kube: bool,
    /// Do not contact the Kubernetes API, even inside a pod.
    #[arg(long)]
    pub no_kube: bool,
    /// This node's name: only its pods are watched. In a DaemonSet, set NODE_NAME from the
    /// downward API (`fieldRef: spec.nodeName`).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// kubeconfig to use [default: in-cluster service account, then KUBECONFIG, then
    /// ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Longest wait for the Kubernetes API at start-up (and for each connection to it).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub kube_timeout: Duration,
    /// Leave the datapath hops out (attach no TC programs).
    #[arg(long, conflicts_with_all = ["uplink", "netns"])]
    pub no_datapath: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// `[--label NAME] --loadgen RUN.json [--requests REQS.jsonl] [--probe RECORDS.jsonl]
    /// [--summary HOPPROBE.json]`, repeated per environment; `--json FILE`, `--markdown FILE`,
    /// `--html FILE`, `--proxy-containers NAMES` anywhere.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 10s or 2m: {e}"))
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let bytes: u32 = s
        .parse()
        .map_err(|e| format!("`{s}` is not a byte count: {e}"))?;
    match ebpf::ring_size_problem(bytes) {
        Some(problem) => Err(problem),
        None => Ok(bytes),
    }
}

fn parse_map_entries(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n >= ebpf::MIN_MAP_ENTRIES => Ok(n),
        _ => Err(format!(
            "`{s}` is not a count of at least {}",
            ebpf::MIN_MAP_ENTRIES
        )),
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let ebpf_log = match &cli.command {
        Command::Run(args) => args.ebpf_log,
        _ => None,
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(ebpf_log::env_filter(ebpf_log))
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => log
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .init(),
        // `{"timestamp":…,"level":…,"message":…,<fields>}`: fields beside the message, as
        // collectors index them.
        LogFormat::Json => log.json().flatten_event(true).with_ansi(false).init(),
    }
    let code = match cli.command {
        Command::Run(args) => run_cmd(args),
        Command::Check(args) => check_cmd(&args),
        Command::Report(args) => crate::report::main(&args.args),
    };
    ExitCode::from(code as u8)
}

/// Colour codes only for a person at a terminal: off one, the log goes to `kubectl logs`, a
/// collector or a file, where they are noise. `NO_COLOR` (set, not empty) turns them off at a
/// terminal too, as tracing-subscriber's own default does (which `with_ansi` replaces).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn run_cmd(args: RunArgs) -> i32 {
    let kube = match kube_options(&args, std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()) {
        Ok(k) => k,
        Err(e) => {
            error!("{e}");
            return exit::USAGE;
        }
    };
    let pod_ifaces = match datapath::parse_patterns(&args.pod_ifaces) {
        Ok(p) => p,
        Err(e) => {
            error!("--pod-ifaces: {e}");
            return exit::USAGE;
        }
    };
    let datapath = (!args.no_datapath).then_some(datapath::DatapathOptions {
        netns: args.netns,
        uplink: args.uplink,
        pod_ifaces,
        floor: args.bpf_floor,
    });
    let metadata = match &args.metadata {
        Some(path) => match metadata::Metadata::load(path) {
            Ok(m) => m,
            Err(e) => {
                error!("--metadata: {e}");
                return exit::USAGE;
            }
        },
        None => metadata::Metadata::default(),
    };
    let named_cgroup_root = args.cgroup_root.is_some();
    let opts = run::RunOptions {
        duration: args.duration,
        interval: args.interval,
        json: args.json,
        cgroup_root: args.cgroup_root,
        sizes: MapSizes {
            exchange_ring_bytes: args.records_ring_size,
            records_rate: args.records_rate,
            records_burst: args.records_burst,
            max_sockets: args.max_sockets,
            max_packets: args.max_packets,
            wakeup: args.ring_wakeup,
            ebpf_log: EbpfLog::from_env(args.ebpf_log),
            tls: args.tls,
            ..MapSizes::default()
        },
        records: args.records,
        datapath,
        metadata,
        kube,
        proxy_containers: args
            .proxy_containers
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        read_hook: args.app_reads,
        bpf_stats: args.bpf_stats,
        bpf_floor: args.bpf_floor,
        pairing_horizon: args.pairing_horizon,
        metrics: args.metrics_addr.map(|addr| run::MetricsOptions {
            addr,
            limits: Limits {
                max_series: args.metrics_max_series,
                max_destinations: args.metrics_max_destinations,
                pod_labels: args.metrics_pod_labels,
            },
            series_grace: args.metrics_series_grace,
        }),
    };
    match run::run(&opts) {
        Ok(_) => exit::OK,
        Err(run::RunError::Attach(e)) if e.is_unsupported() => {
            error!("{e}");
            error!("run `hopprobe check` to see which hooks this machine offers");
            exit::UNSUPPORTED
        }
        // Only the one the user named is a mistake on the command line; the mount found in
        // /proc/self/mounts that cannot be opened is the machine's failure.
        Err(e @ run::RunError::Attach(AttachError::CgroupRoot { .. })) if named_cgroup_root => {
            error!("--cgroup-root: {e}");
            exit::USAGE
        }
        Err(e @ run::RunError::Stats(_)) => {
            error!("{e}");
            exit::UNSUPPORTED
        }
        Err(run::RunError::Kube(e)) => {
            error!("Kubernetes API: {e}");
            e.exit_code()
        }
        Err(e @ (run::RunError::Metrics { .. } | run::RunError::Datapath(_))) => {
            error!("{e}");
            exit::USAGE
        }
        Err(e) => {
            error!("{e}");
            exit::FAILURE
        }
    }
}

/// Whether and how to use the Kubernetes API: `--kube`, or inside a pod unless `--no-kube`.
fn kube_options(args: &RunArgs, in_cluster: bool) -> Result<Option<KubeOptions>, String> {
    if args.no_kube || !(args.kube || in_cluster) {
        return Ok(None);
    }
    let node = args
        .node_name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| {
            format!(
                "{} needs this node's name to watch only its pods: set NODE_NAME (in a \
                 DaemonSet, from the downward API: `valueFrom.fieldRef.fieldPath: \
                 spec.nodeName`) or pass --node-name; --no-kube runs without the API",
                if args.kube {
                    "--kube"
                } else {
                    "running in a pod (KUBERNETES_SERVICE_HOST is set), hopprobe uses the Kubernetes API and"
                }
            )
        })?;
    Ok(Some(KubeOptions {
        kubeconfig: args.kubeconfig.clone(),
        node,
        timeout: args.kube_timeout,
    }))
}

fn check_cmd(args: &CheckArgs) -> i32 {
    let report = check::run();
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                error!("serialising the report: {e}");
                return exit::FAILURE;
            }
        }
    } else {
        print!("{}", report.render());
    }
    if report.ok() {
        exit::OK
    } else {
        exit::UNSUPPORTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        let set = Some(std::ffi::OsStr::new("1"));
        let empty = Some(std::ffi::OsStr::new(""));
        assert!(colour(true, None));
        assert!(colour(true, empty));
        assert!(!colour(true, set));
        for no_color in [None, empty, set] {
            assert!(!colour(false, no_color), "{no_color:?}");
        }
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "hopprobe",
            "run",
            "--duration",
            "10s",
            "--json",
            "x.json",
            "--interval",
            "500ms",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.duration, Some(Duration::from_secs(10)));
        assert_eq!(args.interval, Duration::from_millis(500));
    }

    #[test]
    fn malformed_durations_are_rejected_with_a_message() {
        let err =
            Cli::try_parse_from(["hopprobe", "run", "--duration", "ten"]).expect_err("rejected");
        assert!(err.to_string().contains("is not a duration"), "{err}");
        assert!(Cli::try_parse_from(["hopprobe", "run", "--interval", "0s"]).is_err());
        for bad in ["5000", "1024", "lots"] {
            assert!(
                Cli::try_parse_from(["hopprobe", "run", "--records-ring-size", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["hopprobe", "run", "--records-ring-size", "8192"]).is_ok());
        for bad in ["100", "many", "-5"] {
            assert!(
                Cli::try_parse_from(["hopprobe", "run", "--max-sockets", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["hopprobe", "run", "--max-packets", "4096"]).is_ok());
        for bad in ["-1", "fast"] {
            assert!(
                Cli::try_parse_from(["hopprobe", "run", "--records-rate", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["hopprobe", "run", "--records-ring-size", "3000"]).is_err());
    }

    fn run_args(argv: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(["hopprobe", "run"].iter().chain(argv)).expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        args
    }

    #[test]
    fn the_api_is_used_with_kube_or_inside_a_pod_and_needs_the_node_name() {
        // NODE_NAME may be set where the tests run: name the node explicitly or not at all.
        let mut args = run_args(&["--kube", "--node-name", "node-a"]);
        let k = kube_options(&args, false).expect("ok").expect("on");
        assert_eq!(
            (k.node.as_str(), k.timeout),
            ("node-a", Duration::from_secs(10))
        );
        args.node_name = None;
        let err = kube_options(&args, false).expect_err("no node");
        assert!(
            err.contains("NODE_NAME") && err.contains("spec.nodeName"),
            "{err}"
        );

        let mut auto = run_args(&[]);
        auto.node_name = None;
        assert!(kube_options(&auto, false).expect("ok").is_none());
        assert!(
            kube_options(&auto, true)
                .expect_err("no node")
                .contains("KUBERNETES_SERVICE_HOST")
        );
        auto.node_name = Some("node-b".into());
        assert_eq!(
            kube_options(&auto, true).expect("ok").map(|k| k.node),
            Some("node-b".into())
        );

        let mut off = run_args(&["--no-kube"]);
        off.node_name = None;
        assert!(kube_options(&off, true).expect("ok").is_none());
        assert!(Cli::try_parse_from(["hopprobe", "run", "--kube", "--no-kube"]).is_err());
    }
}
