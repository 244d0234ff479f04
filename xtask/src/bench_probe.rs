//! `cargo xtask bench-probe`: what hopprobe costs the requests it watches. In the lab (sidecar
//! mesh, ingress, no injected delay: the cheapest requests, where a cost per packet weighs
//! most), loadgen runs the published command at c = 1, 32 and 64 with no hopprobe, with
//! hopprobe as deployed and with `--no-datapath` (what the datapath hops cost; `BENCH_EACH=1`
//! adds `--ring-wakeup each`), the order rotating each round, each run after a second of the
//! same load unmeasured. It prints the
//! medians' latency and throughput ratios to the runs without hopprobe, the spread of every
//! variant's rounds (so that a ratio is read against the spread of the runs without
//! hopprobe), hopprobe's own CPU per request (from schedstat, in nanoseconds) and peak RSS;
//! then, from one more run with `--bpf-stats --bpf-floor`, the kernel time per request of
//! each program and its ns per run as a multiple of a do-nothing program's on the same hook,
//! and the same with `--no-datapath`. `BENCH_PERF=1` adds a run under `perf record` that splits
//! each program's ns per run by what it was doing (`bpf_perf`).
//!
//! `BENCH_TLS=1` terminates HTTPS at the ingress (`hoplab up --ingress-tls`) and loadgen
//! speaks HTTPS to it, a new TLS connection per request as the published external test did:
//! what following TLS records costs. `BENCH_BASELINE=<a hopprobe binary>` runs that hopprobe
//! as a fourth variant of every round (its CPU, RSS and ratios beside this one's) and sets the
//! kernel times beside its, alternating, in the same run (for instance one built from the
//! commit before a change).
//!
//! `BENCH_BASELINE=no-log` sets those kernel times beside the same hopprobe's with the eBPF
//! programs' diagnostics compiled out (probe-ebpf without its `log` feature): what the
//! diagnostics cost when off (`--ebpf-log`'s default), which should be nothing measurable.

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::AtomicBool,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd,
    demo::{ChildGuard, LabGuard, interrupted, measuring, stop_on_ctrl_c},
    ebpf, system,
};

const LAB: &str = "hpbench";
const PATH: &str = "10.77.0.1:30081/productpage";

/// HTTPS to the ingress (`BENCH_TLS=1`) or plain HTTP.
fn tls() -> bool {
    std::env::var("BENCH_TLS").is_ok_and(|v| v == "1")
}

/// What the measured hopprobe is run with: `--tls` on HTTPS traffic. A `BENCH_BASELINE`
/// hopprobe runs without it (the same binary as baseline: what following TLS costs).
fn tls_args() -> &'static [&'static str] {
    if tls() { &["--tls"] } else { &[] }
}

/// `flags` for the measured hopprobe, with [`tls_args`].
fn measured_args(flags: &[&'static str]) -> Vec<&'static str> {
    [flags, tls_args()].concat()
}

fn url() -> String {
    format!("{}://{PATH}", if tls() { "https" } else { "http" })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Without,
    Batched,
    /// `--no-datapath`: what the datapath hops cost.
    NoDatapath,
    /// `--ring-wakeup each`, with `BENCH_EACH=1`.
    Each,
    /// The `BENCH_BASELINE` hopprobe, as deployed.
    Baseline,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Without, Variant::Batched, Variant::NoDatapath];

    fn name(self) -> &'static str {
        match self {
            Variant::Without => "no hopprobe",
            Variant::Batched => "hopprobe",
            Variant::NoDatapath => "hopprobe --no-datapath",
            Variant::Each => "hopprobe, wake-up each",
            Variant::Baseline => "baseline hopprobe",
        }
    }
}

/// One loadgen run and what hopprobe spent meanwhile.
#[derive(Clone, Copy, Default)]
struct Sample {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    /// hopprobe's CPU (user + system) per request, µs.
    cpu_us: f64,
    /// hopprobe's peak RSS, MiB.
    rss_mib: f64,
}

/// CPU time of `pid`'s threads in seconds, to the nanosecond: the first field of each
/// `/proc/<pid>/task/<tid>/schedstat` (time on a CPU), where `/proc/<pid>/stat` counts clock
/// ticks of 10 ms, as long as a c = 1 run's whole share. A thread that exited in between would
/// be missed; hopprobe's threads live as long as it does.
pub(crate) fn cpu_s(pid: u32) -> Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .with_context(|| format!("{}: {text:?}", path.display()))?;
    }
    Ok(ns as f64 / 1e9)
}

fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM")
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`: kB there) in MiB; 0 once the
/// process is gone.
pub(crate) fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn start_hopprobe(bin: &Path, extra: &[&str], json: Option<&Path>) -> Result<ChildGuard> {
    let mut c = Command::new(bin);
    c.args(["run", "--interval", "1h"]);
    // The node's namespace is where the datapath's interfaces are; hopprobe refuses it
    // without them.
    if !extra.contains(&"--no-datapath") {
        c.arg("--netns").arg(format!("/run/netns/{LAB}-node"));
    }
    c.arg("--metadata")
        .arg(format!("/run/hopprobe-lab/{LAB}/metadata.json"))
        .args(extra);
    if let Some(json) = json {
        c.arg("--json").arg(json);
    }
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting hopprobe")?;
    // Attached well within this; the load starts after. With `--tls` the verifier takes tens of
    // seconds over the record walk (docs/tls.md, "Cost").
    let settle = if extra.contains(&"--tls") { 40 } else { 2 };
    std::thread::sleep(Duration::from_secs(settle));
    Ok(ChildGuard::new(child))
}

/// The published command at `c` connections, `-n requests` or `-z secs`; its JSON report.
fn loadgen(c: u32, amount: (&str, String)) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{LAB}-client")])
        .arg(measuring("loadgen"))
        .args([&url(), "-c", &c.to_string(), amount.0, &amount.1])
        .args(["--disable-keepalive", "--disable-compression", "--insecure"])
        .args(["--ipv4", "--no-tui", "--output-format", "json"])
        .stderr(Stdio::null())
        .output()
        .context("running loadgen")?;
    if !out.status.success() {
        bail!("loadgen failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sample(
    variant: Variant,
    baseline: Option<&Path>,
    c: u32,
    amount: (&str, String),
    stop: &AtomicBool,
) -> Result<Sample> {
    interrupted(stop)?;
    let probe = match variant {
        Variant::Without => None,
        Variant::Baseline => {
            let bin = baseline.context("a baseline run without BENCH_BASELINE")?;
            Some(start_hopprobe(bin, &[], None)?)
        }
        Variant::Batched => Some(start_hopprobe(&measuring("hopprobe"), tls_args(), None)?),
        Variant::NoDatapath => Some(start_hopprobe(
            &measuring("hopprobe"),
            &measured_args(&["--no-datapath"]),
            None,
        )?),
        Variant::Each => Some(start_hopprobe(
            &measuring("hopprobe"),
            &measured_args(&["--ring-wakeup", "each"]),
            None,
        )?),
    };
    // Every variant, with hopprobe or not, first takes a second of the same load unmeasured:
    // the lab's pools, caches and the CPUs' frequency start each measured run alike.
    loadgen(c, ("-z", "1s".into()))?;
    interrupted(stop)?;
    let pid = probe.as_ref().map(ChildGuard::id);
    let cpu_before = pid.map(cpu_s).transpose()?.unwrap_or(0.0);
    let report = loadgen(c, amount);
    interrupted(stop)?;
    let report = report?;
    let cpu_after = pid.map(cpu_s).transpose()?.unwrap_or(0.0);
    let rss_mib = pid.map_or(0.0, peak_rss_mib);
    if let Some(p) = probe {
        let out = p.interrupt_and_wait()?;
        if !out.status.success() {
            bail!("hopprobe exited {}", out.status);
        }
    }
    let report: serde_json::Value =
        serde_json::from_str(&report).context("loadgen's JSON report")?;
    let field = |path: &[&str]| {
        path.iter()
            .fold(&report, |v, k| &v[*k])
            .as_f64()
            .with_context(|| format!("{path:?} in loadgen's report"))
    };
    let requests = field(&["summary", "total"])? * field(&["summary", "requestsPerSec"])?;
    Ok(Sample {
        p50_ms: field(&["latencyPercentiles", "p50"])? * 1e3,
        p99_ms: field(&["latencyPercentiles", "p99"])? * 1e3,
        rps: field(&["summary", "requestsPerSec"])?,
        cpu_us: (cpu_after - cpu_before) * 1e6 / requests.max(1.0),
        rss_mib,
    })
}

/// The smallest and the largest of `v` (infinities when it is empty).
fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `load` once per variant per round, rotating the order, and prints the medians and
/// their ratios to the runs without hopprobe.
fn compare(
    title: &str,
    rounds: usize,
    variants: &[Variant],
    load: impl Fn(Variant) -> Result<Sample>,
) -> Result<()> {
    println!("\n{title}");
    let mut by_round: Vec<Vec<(Variant, Sample)>> = Vec::new();
    for round in 0..rounds {
        let mut this_round = Vec::new();
        for i in 0..variants.len() {
            let v = variants[(round + i) % variants.len()];
            let s = load(v)?;
            println!(
                "  round {} {:<24} p50 {:6.3} ms  p99 {:6.3} ms  {:8.1} req/s  hopprobe {:6.1} µs CPU/request",
                round + 1,
                v.name(),
                s.p50_ms,
                s.p99_ms,
                s.rps,
                s.cpu_us
            );
            this_round.push((v, s));
        }
        by_round.push(this_round);
    }
    let samples: Vec<(Variant, Sample)> = by_round.iter().flatten().copied().collect();
    let med = |v: Variant, f: fn(&Sample) -> f64| {
        median(
            samples
                .iter()
                .filter(|(w, _)| *w == v)
                .map(|(_, s)| f(s))
                .collect(),
        )
    };
    println!(
        "  {:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>9}",
        "median of rounds",
        "p50 ms",
        "ratio",
        "p99 ms",
        "ratio",
        "req/s",
        "ratio",
        "CPU µs/req",
        "RSS MiB"
    );
    let (b50, b99, brps) = (
        med(Variant::Without, |s| s.p50_ms),
        med(Variant::Without, |s| s.p99_ms),
        med(Variant::Without, |s| s.rps),
    );
    for &v in variants {
        let (p50, p99, rps) = (
            med(v, |s| s.p50_ms),
            med(v, |s| s.p99_ms),
            med(v, |s| s.rps),
        );
        println!(
            "  {:<24} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.1} {:>9.3} {:>12.1} {:>9.1}",
            v.name(),
            p50,
            p50 / b50,
            p99,
            p99 / b99,
            rps,
            rps / brps,
            med(v, |s| s.cpu_us),
            med(v, |s| s.rss_mib)
        );
    }
    // The spread of each variant's rounds: a ratio means something only where it is larger
    // than the spread of the runs without hopprobe.
    println!("  spread of the rounds (min–max; without hopprobe also (max − min) / median)");
    for &v in variants {
        let range = |f: fn(&Sample) -> f64| {
            let vals: Vec<f64> = samples
                .iter()
                .filter(|(w, _)| *w == v)
                .map(|(_, s)| f(s))
                .collect();
            let (lo, hi) = min_max(&vals);
            (lo, hi, (hi - lo) / median(vals).max(1e-9))
        };
        let (p_lo, p_hi, p_rel) = range(|s| s.p50_ms);
        let (r_lo, r_hi, r_rel) = range(|s| s.rps);
        let rel = if v == Variant::Without {
            format!(
                "  ({:.1} % of p50, {:.1} % of req/s)",
                p_rel * 100.0,
                r_rel * 100.0
            )
        } else {
            String::new()
        };
        println!(
            "  {:<24} p50 {p_lo:.3}–{p_hi:.3} ms  req/s {r_lo:.1}–{r_hi:.1}{rel}",
            v.name()
        );
    }
    print_paired(variants, &by_round);
    Ok(())
}

/// Each round's ratios to the same round's run without hopprobe: the drift of the machine
/// between rounds (most of the spread above) cancels out of them, so their median and range
/// resolve a smaller cost than the ratio of the medians can.
fn print_paired(variants: &[Variant], by_round: &[Vec<(Variant, Sample)>]) {
    println!("  per-round ratios to the same round without hopprobe: median (min–max)");
    for &v in variants.iter().filter(|v| **v != Variant::Without) {
        let ratios = |f: fn(&Sample) -> f64| -> Vec<f64> {
            by_round
                .iter()
                .filter_map(|round| {
                    let find = |w: Variant| round.iter().find(|(x, _)| *x == w).map(|(_, s)| f(s));
                    Some(find(v)? / find(Variant::Without)?)
                })
                .collect()
        };
        let show = |r: Vec<f64>| {
            let (lo, hi) = min_max(&r);
            format!("{:.3} ({lo:.3}–{hi:.3})", median(r))
        };
        println!(
            "  {:<24} p50 {}  p99 {}  req/s {}",
            v.name(),
            show(ratios(|s| s.p50_ms)),
            show(ratios(|s| s.p99_ms)),
            show(ratios(|s| s.rps))
        );
    }
}

/// Each program's (runs, run time in ns) over one c = 1 run of `bin` with `--bpf-stats`.
fn kernel_time_once(
    bin: &Path,
    extra: &[&str],
    floor: bool,
    requests: u32,
    perf_data: Option<&Path>,
    stop: &AtomicBool,
) -> Result<ProgramCosts> {
    interrupted(stop)?;
    let dir = cmd::target_dir().join("bench-probe");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("bpf-stats-hopprobe.json");
    let mut args = vec!["--bpf-stats"];
    args.extend_from_slice(extra);
    if floor {
        args.push("--bpf-floor");
    }
    let probe = start_hopprobe(bin, &args, Some(&json))?;
    let perf = match perf_data {
        Some(path) => Some(start_perf(path)?),
        None => None,
    };
    let report = loadgen(1, ("-n", requests.to_string()));
    if let Some(perf) = perf {
        let out = perf.interrupt_and_wait()?;
        // perf record writes its data on SIGINT and then dies of it.
        if !out.status.success() && out.status.signal() != Some(libc::SIGINT) {
            bail!(
                "perf record exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    interrupted(stop)?;
    report?;
    let out = probe.interrupt_and_wait()?;
    if !out.status.success() {
        bail!("{} --bpf-stats exited {}", bin.display(), out.status);
    }
    let text = std::fs::read_to_string(&json).context("hopprobe's summary")?;
    let summary: serde_json::Value = serde_json::from_str(&text).context("hopprobe's summary")?;
    let programs = summary["programs"]
        .as_array()
        .context("no `programs` in the summary")?;
    Ok(programs
        .iter()
        .map(|p| {
            (
                p["program"].as_str().unwrap_or("?").to_owned(),
                (
                    p["runs"].as_f64().unwrap_or(0.0),
                    p["run_time_ns"].as_f64().unwrap_or(0.0),
                ),
            )
        })
        .collect())
}

type ProgramCosts = std::collections::BTreeMap<String, (f64, f64)>;

/// The do-nothing program `--bpf-floor` runs on `program`'s hook, as the summary names it
/// (hopprobe's `programs::HookSpec::floor`, by the programs' names).
fn floor_of(program: &str) -> &'static str {
    if program.starts_with("hp_skb_") {
        "floor/cgroup_skb"
    } else if program.starts_with("hp_tc_") {
        "floor/tc"
    } else if program == "hp_sock_ops" {
        "floor/sock_ops"
    } else {
        "floor/tracepoint"
    }
}

/// c = 1 runs with `--bpf-stats`: each program's kernel time per request. With a baseline
/// hopprobe (`BENCH_BASELINE`), both alternate for `rounds` rounds and the medians are set side
/// by side: the machine's speed drifts by tens of percent between runs, so a change to the
/// programs is judged only against a baseline measured in the same run.
fn kernel_time(
    requests: u32,
    rounds: usize,
    baseline: Option<PathBuf>,
    stop: &AtomicBool,
) -> Result<()> {
    let this = measuring("hopprobe");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    // The floors' programs run on every event too and moved every program of ours by 3–12 %
    // against a baseline without them (2026-12-05): beside a baseline, which may not know
    // `--bpf-floor`, both run without, and one more run gives the floors.
    let floor_apart = baseline.is_some();
    for round in 0..if baseline.is_some() { rounds } else { 1 } {
        let mut run_this = || -> Result<()> {
            ours.push(kernel_time_once(
                &this,
                tls_args(),
                !floor_apart,
                requests,
                None,
                stop,
            )?);
            Ok(())
        };
        match &baseline {
            Some(b) if round % 2 == 0 => {
                theirs.push(kernel_time_once(b, &[], false, requests, None, stop)?);
                run_this()?;
            }
            Some(b) => {
                run_this()?;
                theirs.push(kernel_time_once(b, &[], false, requests, None, stop)?);
            }
            None => run_this()?,
        }
    }
    let floors = if floor_apart {
        vec![kernel_time_once(
            &this,
            tls_args(),
            true,
            requests,
            None,
            stop,
        )?]
    } else {
        Vec::new()
    };
    println!("\nkernel time per request at c = 1 ({requests} requests, --bpf-stats)");
    let with_floors = if floor_apart { &floors } else { &ours };
    match &baseline {
        Some(b) => side_by_side(b, &ours, &theirs, with_floors, requests),
        None => {
            alone(&ours, with_floors, requests);
            // What the datapath hops cost in the kernel: the TC programs, and the socket
            // programs' sightings, which `--no-datapath` leaves out too.
            let args = measured_args(&["--no-datapath"]);
            let without = [kernel_time_once(&this, &args, true, requests, None, stop)?];
            println!("\nthe same with --no-datapath");
            alone(&without, &without, requests);
        }
    }
    if std::env::var("BENCH_PERF").is_ok_and(|v| v == "1") {
        where_time_goes(&this, requests, stop)?;
    }
    Ok(())
}

/// `perf record` of every CPU with call graphs into `path`, until interrupted.
fn start_perf(path: &Path) -> Result<ChildGuard> {
    let child = Command::new("perf")
        .args(["record", "-a", "-g", "-F", "9999", "-q", "-o"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf record")?;
    // perf opens its events on every CPU before it records; the load starts after.
    std::thread::sleep(Duration::from_millis(500));
    Ok(ChildGuard::new(child))
}

/// One more c = 1 run under `perf record` (`BENCH_PERF=1`): each program's ns per run split
/// by what it was doing (`bpf_perf`), from the same run's `--bpf-stats`.
fn where_time_goes(this: &Path, requests: u32, stop: &AtomicBool) -> Result<()> {
    system::ensure_packages(&[("/usr/bin/perf", "linux-perf")])?;
    let data = cmd::target_dir().join("bench-probe").join("perf.data");
    // Five times the requests: a program that runs 5 times a page gets samples enough.
    let requests = requests * 5;
    let costs = kernel_time_once(this, tls_args(), false, requests, Some(&data), stop)?;
    let out = Command::new("perf")
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    if !out.status.success() {
        bail!("perf script exited {}", out.status);
    }
    let samples = crate::bpf_perf::attribute(&String::from_utf8_lossy(&out.stdout));
    println!(
        "\nwhere each program's time goes, ns per run (perf record -a -g at 9999 Hz, c = 1, \
         {requests} requests; shares of its samples times its ns per run)"
    );
    print!("  {:<20} {:>8} {:>7}", "program", "ns/run", "samples");
    for w in crate::bpf_perf::Work::ALL {
        print!(" {:>8}", w.label());
    }
    println!();
    for name in programs(std::slice::from_ref(&costs)) {
        let (_, ns, _) = per_request(std::slice::from_ref(&costs), name, requests);
        let by = samples.get(name.as_str());
        let total: u64 = by.map_or(0, |b| b.values().sum());
        print!("  {name:<20} {ns:>8.0} {total:>7}");
        for w in crate::bpf_perf::Work::ALL {
            let n = by.and_then(|b| b.get(&w)).copied().unwrap_or(0);
            print!(" {:>8.0}", ns * n as f64 / total.max(1) as f64);
        }
        println!();
    }
    Ok(())
}

/// A program's runs per request, ns per run and µs per request: medians over `v`.
fn per_request(v: &[ProgramCosts], name: &str, requests: u32) -> (f64, f64, f64) {
    let runs = median(v.iter().map(|m| m.get(name).map_or(0.0, |c| c.0)).collect());
    let ns = median(v.iter().map(|m| m.get(name).map_or(0.0, |c| c.1)).collect());
    let r = f64::from(requests);
    (runs / r, ns / runs.max(1.0), ns / r / 1e3)
}

/// hopprobe's programs, without the floors (`--bpf-floor`), which are not its cost.
fn programs(v: &[ProgramCosts]) -> Vec<&String> {
    v[0].keys().filter(|n| !n.starts_with("floor/")).collect()
}

/// The floor's ns per run of `name`'s hook and `name` as a multiple of it, both as measured in
/// the same runs (`with_floors`).
fn against_floor(with_floors: &[ProgramCosts], name: &str, requests: u32) -> (f64, f64) {
    let (_, f_ns, _) = per_request(with_floors, floor_of(name), requests);
    let (_, ns, _) = per_request(with_floors, name, requests);
    (f_ns, ns / f_ns.max(1e-9))
}

fn alone(ours: &[ProgramCosts], with_floors: &[ProgramCosts], requests: u32) {
    println!(
        "  {:<20} {:>10} {:>10} {:>12} {:>12} {:>8}",
        "program", "runs/req", "ns/run", "µs/request", "floor ns/run", "x floor"
    );
    let mut total = 0.0;
    for name in programs(ours) {
        let (runs, ns, us) = per_request(ours, name, requests);
        let (f_ns, times) = against_floor(with_floors, name, requests);
        total += us;
        println!("  {name:<20} {runs:>10.1} {ns:>10.0} {us:>12.1} {f_ns:>12.0} {times:>8.1}");
    }
    println!("  {:<20} {:>10} {:>10} {:>12.1}", "all", "", "", total);
}

fn side_by_side(
    baseline: &Path,
    ours: &[ProgramCosts],
    theirs: &[ProgramCosts],
    with_floors: &[ProgramCosts],
    requests: u32,
) {
    println!(
        "  baseline: {} ({} rounds, medians)",
        baseline.display(),
        ours.len()
    );
    println!(
        "  {:<20} {:>10} {:>14} {:>10} {:>8} {:>14} {:>10} {:>12} {:>8}",
        "program",
        "runs/req",
        "baseline ns/run",
        "ns/run",
        "ratio",
        "baseline µs/req",
        "µs/req",
        "floor ns/run",
        "x floor"
    );
    let mut totals = (0.0, 0.0);
    for name in programs(ours) {
        let (runs, ns, us) = per_request(ours, name, requests);
        let (_, b_ns, b_us) = per_request(theirs, name, requests);
        let (f_ns, times) = against_floor(with_floors, name, requests);
        totals.0 += b_us;
        totals.1 += us;
        println!(
            "  {name:<20} {runs:>10.1} {b_ns:>14.0} {ns:>10.0} {:>8.2} {b_us:>14.1} {us:>10.1} {f_ns:>12.0} {times:>8.1}",
            ns / b_ns.max(1.0)
        );
    }
    println!(
        "  {:<20} {:>10} {:>14} {:>10} {:>8.2} {:>14.1} {:>10.1}",
        "all",
        "",
        "",
        "",
        totals.1 / totals.0.max(1e-9),
        totals.0,
        totals.1
    );
}

pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub fn bench() -> Result<()> {
    if !system::is_root() {
        bail!("bench-probe builds the lab and loads eBPF programs: run it as root");
    }
    system::ensure_packages(&system::LAB_PACKAGES)?;
    ebpf::build()?;
    cmd::cargo(&["build", "-p", "hopprobe-tests", "--bin", "hoplab"])?;
    cmd::cargo(&["build", "--release", "-p", "probe-user", "-p", "loadgen"])?;
    let baseline = baseline()?;
    let rounds = env_or("BENCH_ROUNDS", 5usize);
    if rounds == 0 {
        bail!("BENCH_ROUNDS must be at least 1");
    }
    let requests = env_or("BENCH_REQUESTS", 1000u32);
    let secs = env_or("BENCH_SECS", 5u32);
    let stop = stop_on_ctrl_c()?;

    let _lab = LabGuard(LAB);
    cmd::run(
        Command::new(crate::demo::bin("hoplab"))
            .args(["up", "--name", LAB, "--mesh", "sidecar", "--ingress"])
            .args(if tls() { &["--ingress-tls"][..] } else { &[] })
            .stdout(Stdio::null()),
    )?;
    // The first requests warm the lab's connection pools and caches.
    loadgen(1, ("-n", "200".into()))?;
    println!(
        "lab `{LAB}`: sidecar mesh, ingress{}, no injected delay; loadgen (release) through \
         the ingress, --disable-keepalive; hopprobe (release) without --records; {rounds} rounds",
        if tls() { " terminating HTTPS" } else { "" }
    );
    // `BENCH_ONLY=kernel`: only the kernel-time runs, e.g. against a `BENCH_BASELINE`.
    if !std::env::var("BENCH_ONLY").is_ok_and(|v| v == "kernel") {
        // A baseline hopprobe runs beside this one in every round: a change to hopprobe's own
        // CPU and memory is measured in the same run too.
        let mut variants = Variant::ALL.to_vec();
        if std::env::var("BENCH_EACH").is_ok_and(|v| v == "1") {
            variants.push(Variant::Each);
        }
        if baseline.is_some() {
            variants.push(Variant::Baseline);
        }
        let base = baseline.as_deref();
        compare(
            &format!("c = 1, {requests} requests"),
            rounds,
            &variants,
            |v| sample(v, base, 1, ("-n", requests.to_string()), &stop),
        )?;
        // The published study's concurrencies.
        for c in [32, 64] {
            compare(&format!("c = {c}, {secs} s"), rounds, &variants, |v| {
                sample(v, base, c, ("-z", format!("{secs}s")), &stop)
            })?;
        }
    }
    kernel_time(requests, rounds, baseline, &stop)
}

/// `BENCH_BASELINE` asking for this hopprobe without the eBPF programs' diagnostics.
const NO_LOG: &str = "no-log";

/// The hopprobe `BENCH_BASELINE` names, built first when it is [`NO_LOG`].
fn baseline() -> Result<Option<PathBuf>> {
    match std::env::var_os("BENCH_BASELINE") {
        Some(v) if v == NO_LOG => build_no_log().map(Some),
        v => Ok(v.map(PathBuf::from)),
    }
}

/// The release hopprobe embedding the object built `--no-default-features`, in a target
/// directory of its own: the same source and profile as the one measured, so the two differ
/// only in the logging code that the default object carries and leaves off. The first build
/// takes as long as a fresh release build.
fn build_no_log() -> Result<PathBuf> {
    let dir = cmd::target_dir().join("bench-probe").join(NO_LOG);
    let object = ebpf::build_variant(&dir, &["--no-default-features"])?;
    let mut c = cmd::cargo_command(&["build", "--release", "-p", "probe-user"]);
    c.env("CARGO_TARGET_DIR", &dir)
        .env("HOPPROBE_EBPF_OBJECT", &object);
    cmd::run(&mut c)?;
    Ok(dir.join("release/hopprobe"))
}
