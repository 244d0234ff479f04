//! `cargo xtask demo`: the lab with and without a sidecar mesh, loaded by loadgen with the
//! published parameters (scaled down), measured by hopprobe; per-hop summaries side by side.
//! Everything it starts is stopped and the lab removed on every exit path, Ctrl-C included.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, ebpf, system};

const LAB: &str = "hpdemo";
/// The published runs used 32, 64 and 128 connections with 300 000 requests; the demo keeps
/// the connections and scales the count down to fit in a few minutes.
const CONNECTIONS: [u32; 2] = [32, 64];
const REQUESTS: u32 = 2000;
/// The HTTPS and mTLS run's connections.
const TLS_CONNECTIONS: u32 = 32;
/// Bookinfo-like service times, and a productpage capped at a few workers as in the
/// published runs (where it saturated near one core).
const APP_DELAY: &str = "productpage=3ms,details=1ms,reviews=2ms,ratings=1ms";
const APP_WORKERS: &str = "productpage=4";

pub fn bin(name: &str) -> PathBuf {
    cmd::target_dir().join("debug").join(name)
}

/// The measuring tools, hopprobe and loadgen, as users run them: optimized. A debug hopprobe
/// spent 1–4 ms of CPU every 10 ms draining and writing records in the lab at c = 1, and on
/// two CPUs those bursts delayed the lab's own threads by up to 2 ms (`perf sched`): the
/// accuracy matrix's p90 rows went out with it and stayed in with the release build.
pub fn measuring(name: &str) -> PathBuf {
    release_dir().join(name)
}

pub fn release_dir() -> PathBuf {
    cmd::target_dir().join("release")
}

/// Builds `measuring`'s programs.
pub fn build_measuring() -> Result<()> {
    cmd::cargo(&["build", "--release", "-p", "probe-user", "-p", "loadgen"])
}

/// Takes the lab of this name down when dropped.
pub struct LabGuard(pub &'static str);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(bin("hoplab"))
            .args(["down", "--name", self.0])
            .stdout(Stdio::null())
            .status();
    }
}

/// Kills a child that is still running when dropped.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Asks the child to stop (SIGINT) and collects what it printed.
    pub fn interrupt_and_wait(mut self) -> Result<std::process::Output> {
        let child = self.0.take().context("child already collected")?;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        child.wait_with_output().context("waiting for hopprobe")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn interrupted(flag: &AtomicBool) -> Result<()> {
    if flag.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// What the demo and the accuracy matrix need before they drive the lab: root, the lab's
/// packages, the eBPF object, hoplab (plus `extra_bins` of the tests package) and the
/// measuring tools built.
pub fn prepare_lab_run(task: &str, extra_bins: &[&str]) -> Result<()> {
    if !system::is_root() {
        bail!("{task} builds network namespaces and loads eBPF programs: run it as root");
    }
    system::ensure_packages(&system::LAB_PACKAGES)?;
    ebpf::build()?;
    let mut args = vec!["build", "-p", "hopprobe-tests", "--bin", "hoplab"];
    for bin in extra_bins {
        args.extend(["--bin", bin]);
    }
    cmd::cargo(&args)?;
    build_measuring()
}

/// A flag Ctrl-C sets instead of ending this process: Ctrl-C reaches the children too (same
/// process group), and this process then returns an error through its guards, which stop
/// what is still running and take the lab down.
pub fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// Where the demo leaves its runs and report.
fn demo_dir() -> PathBuf {
    cmd::target_dir().join("demo")
}

pub fn demo() -> Result<()> {
    prepare_lab_run("the demo", &[])?;
    let stop = stop_on_ctrl_c()?;
    let out = demo_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    let mut summaries = Vec::new();
    let mut tags = Vec::new();
    for mesh in ["none", "sidecar"] {
        for c in CONNECTIONS {
            interrupted(&stop)?;
            summaries.push(run_one(mesh, c, false, &out, &stop)?);
            tags.push(format!("{mesh}-c{connections}", connections = c));
        }
    }
    // The published external test: HTTPS to the ingress, mTLS between the sidecars.
    interrupted(&stop)?;
    summaries.push(run_one("sidecar", TLS_CONNECTIONS, true, &out, &stop)?);
    tags.push(format!("mtls-c{TLS_CONNECTIONS}"));
    println!("\n=== demo: loadgen end to end vs hopprobe's hops (p50, ms) ===");
    for s in &summaries {
        println!("{s}");
    }
    interrupted(&stop)?;
    report(&out, &tags)?;
    println!(
        "\nfinished in {:.0} s; per-run JSON (loadgen and hopprobe) and records in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    println!(
        "report: {} (open in a browser; also report.json, report.md)",
        out.join("report.html").display()
    );
    Ok(())
}

/// What `cargo xtask test` asks of the demo it runs: every run joined (≥ 99 % of requests,
/// ≤ 1 % clamped) and Little's law holding against loadgen's concurrency within 15 %.
pub fn check_report() -> Result<()> {
    check_report_file(&demo_dir().join("report.json"))
}

fn check_report_file(path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let envs = report["environments"]
        .as_array()
        .context("report.json has no environments")?;
    // Two meshes at each concurrency, and the HTTPS + mTLS run.
    let runs = CONNECTIONS.len() * 2 + 1;
    if envs.len() != runs {
        bail!(
            "the demo's report has {} environments, not {runs}",
            envs.len()
        );
    }
    let mut failures = Vec::new();
    for e in envs {
        let label = e["label"].as_str().unwrap_or("?");
        let num = |v: &serde_json::Value, what: &str| {
            v.as_f64()
                .with_context(|| format!("report.json: {label} has no number {what}"))
        };
        let (rate, clamped, joined) = (
            num(&e["join_rate"], "join_rate")?,
            num(&e["clamped"], "clamped")?,
            num(&e["joined"], "joined")?,
        );
        let (in_flight, c) = (
            num(&e["littles_law"]["in_flight"], "littles_law.in_flight")?,
            num(&e["littles_law"]["concurrency"], "littles_law.concurrency")?,
        );
        println!(
            "demo check {label}: joined {:.2} %, clamped {clamped}, in flight {in_flight:.2} of {c}",
            rate * 100.0
        );
        if rate < 0.99 {
            failures.push(format!("{label}: joined {:.2} % < 99 %", rate * 100.0));
        }
        if clamped > joined / 100.0 {
            failures.push(format!("{label}: {clamped} of {joined} clamped"));
        }
        if (in_flight - c).abs() > 0.15 * c {
            failures.push(format!("{label}: λ·W {in_flight:.2} for {c} connections"));
        }
        // The HTTPS run's new connections carry their TLS handshake inside the ingress.
        let has_handshake = e["hops"].as_array().is_some_and(|hs| {
            hs.iter()
                .any(|h| h.as_str().is_some_and(|h| h.ends_with(" tls_handshake")))
        });
        if label.starts_with("mtls") && !has_handshake {
            failures.push(format!("{label}: no tls_handshake hop"));
        }
    }
    if !failures.is_empty() {
        bail!("the demo's report: {}", failures.join("; "));
    }
    Ok(())
}

/// `hopprobe report` over every run: one environment per run, all formats into `out`; prints
/// the overview table.
fn report(out: &Path, tags: &[String]) -> Result<()> {
    let mut c = Command::new(measuring("hopprobe"));
    c.arg("report");
    for tag in tags {
        c.args(["--label", tag])
            .arg("--loadgen")
            .arg(out.join(format!("{tag}-loadgen.json")))
            .arg("--requests")
            .arg(out.join(format!("{tag}-requests.jsonl")))
            .arg("--probe")
            .arg(out.join(format!("{tag}-records.jsonl")))
            .arg("--summary")
            .arg(out.join(format!("{tag}-hopprobe.json")));
    }
    c.arg("--json")
        .arg(out.join("report.json"))
        .arg("--markdown")
        .arg(out.join("report.md"))
        .arg("--html")
        .arg(out.join("report.html"))
        .arg("--brief");
    println!("\n=== demo: hopprobe report (ms; outside = the network outside the node) ===");
    cmd::run(&mut c)
}

fn run_one(
    mesh: &str,
    connections: u32,
    tls: bool,
    out: &Path,
    stop: &AtomicBool,
) -> Result<String> {
    let tag = if tls {
        format!("mtls-c{connections}")
    } else {
        format!("{mesh}-c{connections}")
    };
    eprintln!("\n--- {tag}: lab up, hopprobe attached, loadgen -c {connections} -n {REQUESTS}");
    let _lab = LabGuard(LAB);
    cmd::run(
        Command::new(bin("hoplab"))
            .args([
                "up",
                "--name",
                LAB,
                "--mesh",
                mesh,
                "--ingress",
                "--app-delay",
                APP_DELAY,
                "--app-workers",
                APP_WORKERS,
            ])
            .args(if tls {
                &["--ingress-tls", "--mtls"][..]
            } else {
                &[]
            })
            .stdout(Stdio::null()),
    )?;
    let probe_json = out.join(format!("{tag}-hopprobe.json"));
    let mut probe = ChildGuard(Some(
        Command::new(measuring("hopprobe"))
            .args(["run", "--interval", "1h", "--netns"])
            .arg(format!("/run/netns/{LAB}-node"))
            .arg("--metadata")
            .arg(format!("/run/hopprobe-lab/{LAB}/metadata.json"))
            .arg("--json")
            .arg(&probe_json)
            .arg("--records")
            .arg(out.join(format!("{tag}-records.jsonl")))
            .args(if tls { &["--tls"][..] } else { &[] })
            // Plain log lines, for `wait_attached` to read.
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting hopprobe")?,
    ));
    // The loadgen run starts once hopprobe has attached: well under a second, tens of seconds
    // with `--tls` (the verifier over the TLS record walk: docs/tls.md).
    wait_attached(&mut probe, Duration::from_secs(180))?;
    interrupted(stop)?;
    let loadgen_json = out.join(format!("{tag}-loadgen.json"));
    let records = out.join(format!("{tag}-requests.jsonl"));
    let status = Command::new("ip")
        .args(["netns", "exec", &format!("{LAB}-client")])
        .arg(measuring("loadgen"))
        .arg(if tls {
            "https://10.77.0.1:30081/productpage"
        } else {
            "http://10.77.0.1:30081/productpage"
        })
        .args([
            "-c",
            &connections.to_string(),
            "-n",
            &REQUESTS.to_string(),
            "--disable-keepalive",
            "--disable-compression",
            "--insecure",
            "--ipv4",
            "--no-tui",
            "--output-format",
            "json",
            "-o",
        ])
        .arg(&loadgen_json)
        .arg("--records")
        .arg(&records)
        .status()
        .context("running loadgen")?;
    interrupted(stop)?;
    if !status.success() {
        bail!("loadgen failed ({status})");
    }
    let output = probe.interrupt_and_wait()?;
    let text = String::from_utf8_lossy(&output.stdout);
    println!("\n{tag}:\n{text}");
    Ok(format!(
        "{tag:<12} loadgen {}  |  {}",
        loadgen_line(&loadgen_json),
        hops_line(&probe_json)
    ))
}

/// Waits until hopprobe logs that it attached (stderr: ` attached hooks=`), then keeps its
/// stderr drained so that it never blocks on a full pipe.
fn wait_attached(probe: &mut ChildGuard, within: Duration) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let stderr = probe.0.as_mut().and_then(|c| c.stderr.take());
    let Some(stderr) = stderr else {
        bail!("hopprobe's stderr is not piped");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut told = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !told && line.contains(" attached hooks=") {
                told = tx.send(()).is_ok();
            }
        }
    });
    rx.recv_timeout(within)
        .map_err(|_| anyhow::anyhow!("hopprobe did not attach within {within:?}"))
}

fn json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn loadgen_line(path: &Path) -> String {
    let Some(v) = json(path) else {
        return "(no report)".into();
    };
    let p50 = v["latencyPercentiles"]["p50"].as_f64().unwrap_or(f64::NAN) * 1e3;
    let rps = v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN);
    format!("p50 {p50:7.2}  req/s {rps:7.1}")
}

/// p50 of the main hops, productpage's and the ingress's, from hopprobe's summary.
fn hops_line(path: &Path) -> String {
    let Some(v) = json(path) else {
        return "(no hopprobe summary)".into();
    };
    let find = |hop: &str, pod: &str, container: &str, direction: Option<&str>| -> String {
        v["hops"]
            .as_array()
            .and_then(|hs| {
                hs.iter().find(|h| {
                    h["hop"] == hop
                        && h["pod"] == pod
                        && h["container"] == container
                        && direction.is_none_or(|d| h["direction"] == d)
                })
            })
            .and_then(|h| h["p50_us"].as_f64())
            .map_or_else(|| "   -  ".into(), |us| format!("{:6.2}", us / 1e3))
    };
    format!(
        "ingress {}  productpage queue {} processing {}  its sidecar in {} out {}",
        find("app", "istio-ingressgateway", "ingress", None),
        find("app_queue", "productpage-v1", "productpage", None),
        find("app_processing", "productpage-v1", "productpage", None),
        find("sidecar", "productpage-v1", "istio-proxy", Some("inbound")),
        find("sidecar", "productpage-v1", "istio-proxy", Some("outbound")),
    )
}

#[cfg(test)]
mod tests {
    use super::check_report_file;

    fn report(join_rate: f64, in_flight: f64) -> String {
        let env = |label: &str, c: u32| {
            format!(
                r#"{{"label":"{label}","join_rate":{join_rate},"joined":2000,"clamped":3,
                "littles_law":{{"in_flight":{in_flight},"concurrency":{c}}}}}"#
            )
        };
        let tls = env("mtls-c32", 32).replacen(
            "{",
            r#"{"hops":["node handshake","istio-ingressgateway tls_handshake"],"#,
            1,
        );
        format!(
            r#"{{"environments":[{},{},{},{},{tls}]}}"#,
            env("none-c32", 32),
            env("none-c64", 32),
            env("sidecar-c32", 32),
            env("sidecar-c64", 32)
        )
    }

    fn check(text: &str) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("report.json");
        std::fs::write(&path, text)?;
        check_report_file(&path)
    }

    #[test]
    fn the_demo_check_passes_a_good_report_and_names_what_is_wrong_in_a_bad_one() {
        check(&report(1.0, 31.6)).expect("a good report");
        let low = check(&report(0.98, 31.6)).expect_err("low join rate");
        assert!(low.to_string().contains("joined 98.00 %"), "{low}");
        let little = check(&report(1.0, 20.0)).expect_err("Little's law off");
        assert!(little.to_string().contains("λ·W 20.00"), "{little}");
        let missing =
            check(r#"{"environments":[{"label":"x"},{},{},{},{}]}"#).expect_err("no numbers");
        assert!(
            missing.to_string().contains("no number join_rate"),
            "{missing}"
        );
        assert!(check("not json").is_err());
        let plain = report(1.0, 31.6).replace("istio-ingressgateway tls_handshake", "x");
        let no_tls = check(&plain).expect_err("the HTTPS run without its handshake hop");
        assert!(
            no_tls.to_string().contains("no tls_handshake hop"),
            "{no_tls}"
        );
    }
}
