//! `cargo xtask soak`: hopprobe as the DaemonSet runs it (`--metrics-addr`, `--interval 30s`),
//! in the lab's sidecar mesh under steady keep-alive load until at least `SOAK_EXCHANGES`
//! (10 M) exchanges have gone through it — weeks of a quiet node in compressed time. Every
//! `SOAK_SAMPLE_SECS` it samples hopprobe's RSS, the series it exports and its CPU per
//! exchange; at the end it prints the slope of each over the run's second half, and fails when
//! memory outgrows the DaemonSet's memory request, a pairing overflowed, or the hop counts
//! differ from the requests loadgen sent.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bench_probe::{cpu_s, env_or, status_mib},
    cmd,
    demo::{ChildGuard, LabGuard, interrupted, measuring, stop_on_ctrl_c},
    ebpf, system,
};

const LAB: &str = "hpsoak";
const URL: &str = "http://10.77.0.1:30081/productpage";
/// The DaemonSet's memory request, as its manifest says it.
fn memory_request_mib() -> Result<f64> {
    let manifest = include_str!("../../deploy/kubernetes/daemonset.yaml");
    manifest
        .lines()
        .skip_while(|l| l.trim() != "requests:")
        .find_map(|l| {
            l.trim()
                .strip_prefix("memory: ")?
                .strip_suffix("Mi")?
                .parse()
                .ok()
        })
        .context("resources.requests.memory in Mi in deploy/kubernetes/daemonset.yaml")
}

/// One sample of hopprobe while the load runs.
struct Sample {
    secs: f64,
    /// Answered exchanges counted in the `app` and `upstream` hops so far.
    exchanges: f64,
    rss_mib: f64,
    series: f64,
    cpu_s: f64,
    pending: f64,
}

/// `/metrics` as name{labels} → value (comments left out).
fn scrape(addr: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (_, body) = text
        .split_once("\r\n\r\n")
        .context("an HTTP response from /metrics")?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.to_owned(), v.parse().ok()?))
        })
        .collect())
}

/// The sum of every series of `family` whose labels contain each of `having`.
fn sum(m: &BTreeMap<String, f64>, family: &str, having: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.is_empty())
                && having.iter().all(|h| k.contains(h))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

pub fn soak() -> Result<()> {
    if !system::is_root() {
        bail!("soak builds the lab and loads eBPF programs: run it as root");
    }
    let target = env_or("SOAK_EXCHANGES", 10_000_000u64);
    let every = Duration::from_secs(env_or("SOAK_SAMPLE_SECS", 10u64).max(1));
    let connections = env_or("SOAK_CONNECTIONS", 16u32).max(1);
    system::ensure_packages(&system::LAB_PACKAGES)?;
    ebpf::build()?;
    cmd::cargo(&["build", "-p", "hopprobe-tests", "--bin", "hoplab"])?;
    cmd::cargo(&["build", "--release", "-p", "probe-user", "-p", "loadgen"])?;
    let stop = stop_on_ctrl_c()?;

    let _lab = LabGuard(LAB);
    cmd::run(
        Command::new(crate::demo::bin("hoplab"))
            .args(["up", "--name", LAB, "--mesh", "sidecar", "--ingress"])
            .stdout(Stdio::null()),
    )?;
    let summary = cmd::target_dir().join("soak-summary.json");
    let metrics: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    // The DaemonSet's command (deploy/kubernetes/daemonset.yaml) with the lab's names for
    // `--kube` and its node namespace for the host's.
    let probe = ChildGuard::new(
        Command::new(measuring("hopprobe"))
            .args(["run", "--interval", "30s", "--metrics-addr"])
            .arg(metrics.to_string())
            .arg("--netns")
            .arg(format!("/run/netns/{LAB}-node"))
            .arg("--metadata")
            .arg(format!("/run/hopprobe-lab/{LAB}/metadata.json"))
            .arg("--json")
            .arg(&summary)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting hopprobe")?,
    );
    let pid = probe.id();
    let ready = Instant::now() + Duration::from_secs(20);
    while scrape(metrics).is_err() {
        if Instant::now() > ready {
            bail!("hopprobe did not serve /metrics within 20 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Loadgen in rounds of fixed request counts (every request answered, so counts compare
    // exactly), until the target is reached.
    let round_requests = env_or("SOAK_ROUND_REQUESTS", 50_000u64);
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut sent = 0u64;
    let mut next_sample = started;
    println!(
        "lab `{LAB}`: sidecar mesh, ingress; loadgen keep-alive c = {connections}, rounds of \
         {round_requests} requests; hopprobe as the DaemonSet runs it; until {target} exchanges"
    );
    println!(
        "{:>7} {:>12} {:>9} {:>7} {:>13} {:>8}",
        "s", "exchanges", "RSS MiB", "series", "CPU µs/exch", "pending"
    );
    loop {
        interrupted(&stop)?;
        let mut lg = Command::new("ip")
            .args(["netns", "exec", &format!("{LAB}-client")])
            .arg(measuring("loadgen"))
            .args([URL, "-c", &connections.to_string(), "-n"])
            .arg(round_requests.to_string())
            .args(["--ipv4", "--no-tui", "--output-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting loadgen")?;
        loop {
            if let Some(status) = lg.try_wait()? {
                let mut out = String::new();
                lg.stdout
                    .take()
                    .context("loadgen's stdout")?
                    .read_to_string(&mut out)?;
                if !status.success() {
                    bail!("loadgen failed ({status})");
                }
                let report: serde_json::Value =
                    serde_json::from_str(&out).context("loadgen's JSON report")?;
                let ok = report["statusCodeDistribution"]["200"]
                    .as_u64()
                    .context("statusCodeDistribution.200 in loadgen's report")?;
                if ok != round_requests {
                    bail!("{} of {round_requests} requests answered 200", ok);
                }
                sent += ok;
                break;
            }
            if Instant::now() >= next_sample {
                next_sample += every;
                let m = scrape(metrics)?;
                let s = Sample {
                    secs: started.elapsed().as_secs_f64(),
                    exchanges: sum(&m, "hopprobe_hop_duration_seconds_count", &["hop=\"app\""])
                        + sum(
                            &m,
                            "hopprobe_hop_duration_seconds_count",
                            &["hop=\"upstream\""],
                        ),
                    rss_mib: status_mib(pid, "VmRSS"),
                    series: sum(&m, "hopprobe_series", &[]),
                    cpu_s: cpu_s(pid)?,
                    pending: sum(&m, "hopprobe_pairing_pending", &[]),
                };
                let cpu_us = samples.last().map_or(0.0, |p| {
                    (s.cpu_s - p.cpu_s) * 1e6 / (s.exchanges - p.exchanges).max(1.0)
                });
                println!(
                    "{:>7.0} {:>12.0} {:>9.1} {:>7.0} {:>13.2} {:>8.0}",
                    s.secs, s.exchanges, s.rss_mib, s.series, cpu_us, s.pending
                );
                samples.push(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if samples.last().is_some_and(|s| s.exchanges >= target as f64) {
            break;
        }
    }
    // Past the pairing horizon (5 s) and a proxy's late grace, then the last scrape.
    std::thread::sleep(Duration::from_secs(8));
    let m = scrape(metrics)?;
    let peak = status_mib(pid, "VmHWM");
    let out = probe.interrupt_and_wait()?;
    if !out.status.success() {
        bail!("hopprobe exited {}", out.status);
    }
    // At exit hopprobe counts what kept-alive connections still hold: the summary is exact.
    let s: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&summary)
            .with_context(|| format!("reading {}", summary.display()))?,
    )
    .context("hopprobe's summary")?;
    let at_exit: u64 = s["hops"]
        .as_array()
        .context("hops in the summary")?
        .iter()
        .filter(|h| {
            h["hop"] == "app" && h["pod"] == "productpage-v1" && h["container"] == "productpage"
        })
        .filter_map(|h| h["count"].as_u64())
        .sum();
    report(&samples, &m, sent, at_exit, peak, connections)
}

fn report(
    samples: &[Sample],
    m: &BTreeMap<String, f64>,
    sent: u64,
    at_exit: u64,
    peak: f64,
    connections: u32,
) -> Result<()> {
    let pages = sum(
        m,
        "hopprobe_hop_duration_seconds_count",
        &[
            "hop=\"app\"",
            "k8s_workload=\"productpage-v1\"",
            "k8s_container=\"productpage\"",
        ],
    );
    let event = |e: &str| {
        sum(
            m,
            "hopprobe_probe_events_total",
            &[&format!("event=\"{e}\"")],
        )
    };
    let half = &samples[samples.len() / 2..];
    let per_10m = |f: fn(&Sample) -> f64| {
        slope(
            &half
                .iter()
                .map(|s| (s.exchanges / 1e7, f(s)))
                .collect::<Vec<_>>(),
        )
    };
    let cpu_us: Vec<f64> = half
        .windows(2)
        .map(|w| (w[1].cpu_s - w[0].cpu_s) * 1e6 / (w[1].exchanges - w[0].exchanges).max(1.0))
        .collect();
    let exchanges = samples.last().map_or(0.0, |s| s.exchanges);
    let secs = samples.last().map_or(0.0, |s| s.secs);
    println!();
    println!(
        "{exchanges:.0} exchanges in {secs:.0} s ({:.0}/s), {sent} requests",
        exchanges / secs.max(1.0)
    );
    println!(
        "second half, per 10 M exchanges: RSS {:+.2} MiB, series {:+.1}, CPU {:+.3} µs/exchange",
        per_10m(|s| s.rss_mib),
        per_10m(|s| s.series),
        slope(
            &half
                .windows(2)
                .zip(&cpu_us)
                .map(|(w, c)| (w[1].exchanges / 1e7, *c))
                .collect::<Vec<_>>()
        ),
    );
    let request = memory_request_mib()?;
    let rss: Vec<f64> = half.iter().map(|s| s.rss_mib).collect();
    println!(
        "RSS second half {:.1}–{:.1} MiB, peak {peak:.1} MiB (request {request} MiB); \
         CPU {:.2}–{:.2} µs/exchange",
        rss.iter().copied().fold(f64::MAX, f64::min),
        rss.iter().copied().fold(0.0, f64::max),
        cpu_us.iter().copied().fold(f64::MAX, f64::min),
        cpu_us.iter().copied().fold(0.0, f64::max),
    );
    let overflow = event("pairing_overflow");
    println!(
        "productpage's app hop {pages:.0} of {sent} requests in /metrics after the load, \
         {at_exit} in the summary at exit; pairing_overflow {overflow:.0}, \
         pairing_late {:.0}, exchanges rate-limited {:.0}, aggregated in the kernel {:.0}, \
         ring drops {:.0}, socket histograms full {:.0}",
        event("pairing_late"),
        event("exchanges_rate_limited"),
        event("exchanges_aggregated"),
        event("exchange_drops"),
        event("sock_hist_failed"),
    );
    let mut failures = Vec::new();
    if peak > request {
        failures.push(format!(
            "peak RSS {peak:.1} MiB over the request of {request}"
        ));
    }
    if overflow > 0.0 {
        failures.push(format!("{overflow} pairing overflows"));
    }
    if at_exit != sent {
        failures.push(format!(
            "productpage's app hop counted {at_exit} of {sent} at exit"
        ));
    }
    // The last exchange of a kept-alive connection counts once the next request on it (or
    // its close) shows its response complete: the proxy's pool to productpage holds up to
    // one per connection of loadgen's.
    let open = sent as f64 - pages;
    if !(0.0..=f64::from(connections)).contains(&open) {
        failures.push(format!(
            "productpage's app hop in /metrics counted {pages} of {sent}: more than the \
             {connections} kept-alive connections' last exchanges apart"
        ));
    }
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    Ok(())
}
