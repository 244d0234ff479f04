//! The per-hop ground-truth matrix: the lab with a sidecar mesh and an ingress, sidecar
//! delay D × app service time A, loaded by loadgen and measured by hopprobe; what hopprobe
//! reports is compared with what was injected. `cargo xtask accuracy` prints the table
//! (`hopaccuracy`); the `accuracy` integration test asserts every row.

pub mod checks;
pub mod export;
pub mod keepalive;
pub mod series;

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use checks::{INGRESS, Row};
use series::{EndToEnd, Hops};

use crate::lab::{
    Lab,
    config::{Delay, LabConfig, Mesh, SERVICES, SidecarDelay, Workers},
    names::NODE_IP,
};

/// The programs a run drives.
#[derive(Debug, Clone)]
pub struct Programs {
    pub hoplab: PathBuf,
    pub hopprobe: PathBuf,
    pub loadgen: PathBuf,
}

impl Programs {
    /// The first of the programs that does not exist, if any.
    pub fn missing(&self) -> Option<&Path> {
        [&self.hoplab, &self.hopprobe, &self.loadgen]
            .into_iter()
            .map(PathBuf::as_path)
            .find(|p| !p.exists())
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Prefix of the labs' names (one lab per scenario: `<prefix><n>`), at most 10 characters.
    pub name: String,
    /// Requests per concurrency-1 run (after the warm-up).
    pub requests: u32,
    pub sidecar_delays: Vec<Duration>,
    pub app_delays: Vec<Duration>,
    /// Connections of the saturation run.
    pub connections: u32,
    /// Kept-alive connections of the keep-alive run (0: no keep-alive run).
    pub keepalive_connections: u32,
    /// Leave out everything but the keep-alive run (`hopaccuracy --only-keepalive`).
    pub only_keepalive: bool,
    /// Where to keep each run's hopprobe summary and loadgen report, if anywhere.
    pub keep: Option<PathBuf>,
}

impl Options {
    /// The full matrix: D ∈ {0, 1, 5 ms}, A ∈ {0, 2, 10 ms}, then c = 32, then c = 16 on
    /// kept-alive connections.
    pub fn full(name: &str) -> Self {
        let ms = Duration::from_millis;
        Self {
            name: name.to_owned(),
            requests: 100,
            sidecar_delays: vec![ms(0), ms(1), ms(5)],
            app_delays: vec![ms(0), ms(2), ms(10)],
            connections: 32,
            keepalive_connections: 16,
            only_keepalive: false,
            keep: None,
        }
    }
}

/// What one scenario measured.
#[derive(Debug, Clone)]
pub struct Run {
    pub hops: Hops,
    pub e2e: EndToEnd,
    /// `/metrics` once the load was done, before hopprobe stopped.
    pub exported: export::Exported,
}

/// Every row of the matrix, in the order it ran.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| !r.pass())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<20} {:<48} {:>20} {:>10}  result",
            "scenario", "check", "expected", "measured"
        )?;
        for r in &self.rows {
            writeln!(f, "{r}")?;
        }
        let failed = self.failures().count();
        write!(f, "{} checks, {} failed", self.rows.len(), failed)
    }
}

fn ms_label(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Runs the whole matrix. `progress` sees each scenario's rows as they are made, so a long
/// run shows where it is.
pub fn run(
    programs: &Programs,
    opts: &Options,
    mut progress: impl FnMut(&[Row]),
) -> Result<Report, String> {
    if opts.name.len() > 10 {
        return Err(format!(
            "lab name prefix `{}` is longer than 10 characters",
            opts.name
        ));
    }
    let mut report = Report::default();
    let mut push = |rows: Vec<Row>, report: &mut Report| {
        progress(&rows);
        report.rows.extend(rows);
    };
    let mut n = 0;
    let mut next_name = || {
        n += 1;
        format!("{}{n}", opts.name)
    };
    let keepalive = |name: &str| {
        keepalive::scenario(
            programs,
            opts,
            &format!("c={} keep-alive", opts.keepalive_connections),
            keepalive::plain_config(name),
            keepalive::Entry::PLAIN,
        )
    };
    // HTTPS at the ingress and mTLS between the sidecars, kept alive and a connection per
    // request (the published external test: a TLS handshake per request, in the ingress).
    let tls = |name: &str, new_connections: bool| {
        let what = if new_connections {
            "a connection per request"
        } else {
            "keep-alive"
        };
        keepalive::scenario(
            programs,
            opts,
            &format!("c={} https+mtls {what}", opts.keepalive_connections),
            keepalive::tls_config(name),
            keepalive::Entry {
                new_connections,
                ..keepalive::Entry::HTTPS
            },
        )
    };
    if opts.only_keepalive {
        if opts.keepalive_connections > 0 {
            push(keepalive(&next_name())?, &mut report);
            push(tls(&next_name(), false)?, &mut report);
            push(tls(&next_name(), true)?, &mut report);
        }
        return Ok(report);
    }
    // c = 1 over the D × A grid.
    let mut grid: Vec<(Duration, Duration, Run)> = Vec::new();
    for &d in &opts.sidecar_delays {
        for &a in &opts.app_delays {
            let mut config = LabConfig::new(&next_name());
            config.mesh = Mesh::Sidecar;
            config.ingress = true;
            config.sidecar_delay = both_ways(d);
            for s in SERVICES {
                config.app_delay.insert(s.into(), ms_delay(a));
            }
            let scenario = format!("c=1 D={} A={}", ms_label(d), ms_label(a));
            let run = scenario_runs(programs, opts, config, &[(1, opts.requests)])?.remove(0);
            let mut rows = checks::packet_hops(&scenario, &run.hops);
            rows.push(checks::path_sum(
                &scenario, &run.hops, INGRESS, &run.e2e, false,
            ));
            rows.push(checks::match_rate(&scenario, &run.hops));
            rows.push(checks::app_split(&scenario, &run.hops));
            rows.extend(export::rows(
                &scenario,
                &run.hops,
                &run.exported,
                a.as_secs_f64() * 1e3,
            ));
            push(rows, &mut report);
            grid.push((d, a, run));
        }
    }
    let at = |d: Duration, a: Duration| grid.iter().find(|g| g.0 == d && g.1 == a).map(|g| &g.2);
    let (d0, a0) = (opts.sidecar_delays[0], opts.app_delays[0]);
    for (d, a, run) in &grid {
        let scenario = format!("c=1 D={} A={}", ms_label(*d), ms_label(*a));
        let mut rows = Vec::new();
        if *d != d0
            && let Some(base) = at(d0, *a)
        {
            rows.extend(checks::sidecar_growth(
                &format!("{scenario} vs D={}", ms_label(d0)),
                &base.hops,
                &run.hops,
                (*d - d0).as_secs_f64() * 1e3,
            ));
        }
        if *a != a0
            && let Some(base) = at(*d, a0)
        {
            rows.extend(checks::app_growth(
                &format!("{scenario} vs A={}", ms_label(a0)),
                &base.hops,
                &run.hops,
                (*a - a0).as_secs_f64() * 1e3,
            ));
        }
        push(rows, &mut report);
    }

    // c = 32 against a one-worker productpage: the wait is in its queues.
    let service = "productpage";
    let mut config = LabConfig::new(&next_name());
    config.mesh = Mesh::Sidecar;
    config.ingress = true;
    config.sidecar_delay = both_ways(Duration::from_millis(1));
    config
        .app_delay
        .insert(service.into(), ms_delay(Duration::from_millis(5)));
    config.app_workers.insert(service.into(), Workers(1));
    // Enough that the ramp-up and the drain at the end are a small part of the run.
    let loaded_requests = opts.connections * 25;
    let runs = scenario_runs(
        programs,
        opts,
        config,
        &[(1, opts.requests / 2), (opts.connections, loaded_requests)],
    )?;
    let scenario = format!("c={} {service} 1 worker", opts.connections);
    let mut rows = checks::saturation(
        &scenario,
        service,
        (&runs[0].hops, &runs[0].e2e),
        (&runs[1].hops, &runs[1].e2e),
        opts.connections,
    );
    rows.push(checks::app_split("c=1 productpage 1 worker", &runs[0].hops));
    rows.push(checks::app_split(&scenario, &runs[1].hops));
    push(rows, &mut report);

    // No mesh: no sidecar hop, everything else still there.
    let mut config = LabConfig::new(&next_name());
    config.ingress = true;
    for s in SERVICES {
        config
            .app_delay
            .insert(s.into(), ms_delay(Duration::from_millis(2)));
    }
    let run = scenario_runs(programs, opts, config, &[(1, opts.requests / 2)])?.remove(0);
    let scenario = "c=1 mesh none A=2ms";
    let mut rows = checks::no_mesh(scenario, &run.hops);
    rows.extend(checks::packet_hops(scenario, &run.hops));
    rows.push(checks::path_sum(
        scenario, &run.hops, INGRESS, &run.e2e, false,
    ));
    rows.push(checks::match_rate(scenario, &run.hops));
    rows.push(checks::app_split(scenario, &run.hops));
    push(rows, &mut report);

    // Kept-alive connections (loadgen's and oha's default): the report's join by exchange
    // number, and exchanges neither split nor merged on a connection that carries many.
    if opts.keepalive_connections > 0 {
        push(keepalive(&next_name())?, &mut report);
        push(tls(&next_name(), false)?, &mut report);
        push(tls(&next_name(), true)?, &mut report);
    }
    Ok(report)
}

pub(crate) fn ms_delay(d: Duration) -> Delay {
    Delay::Fixed(d)
}

pub(crate) fn both_ways(d: Duration) -> SidecarDelay {
    SidecarDelay {
        inbound: Delay::Fixed(d),
        outbound: Delay::Fixed(d),
    }
}

/// Brings a lab up with `config` and, for each (connections, requests), measures one loadgen
/// run through the ingress's NodePort with hopprobe attached to the node.
fn scenario_runs(
    programs: &Programs,
    opts: &Options,
    config: LabConfig,
    loads: &[(u32, u32)],
) -> Result<Vec<Run>, String> {
    let tag = format!(
        "{}-sidecar{}-app{}",
        config.mesh,
        config.sidecar_delay.inbound,
        config.delay_of("productpage")
    );
    let lab = Lab::up(config, &programs.hoplab).map_err(|e| format!("lab up: {e}"))?;
    let netns = format!("/run/netns/{}", lab.state.node_netns);
    let metadata = lab.state.metadata_file.display().to_string();
    let url = format!(
        "http://{NODE_IP}:{}/productpage",
        crate::lab::names::NODEPORT_INGRESS
    );
    let mut runs = Vec::new();
    for &(connections, requests) in loads {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let out = dir.path().join("loadgen.json");
        let metrics = crate::prometheus::free_port();
        let metrics_addr = metrics.to_string();
        let mut exported = String::new();
        let measured = crate::probe::try_measure(
            &programs.hopprobe,
            &[
                "--netns",
                &netns,
                "--metadata",
                &metadata,
                "--metrics-addr",
                &metrics_addr,
            ],
            || {
                loadgen(
                    programs,
                    &lab.client_netns(),
                    &url,
                    connections,
                    requests,
                    &out,
                )?;
                // The rings drain every 10 ms; the leaves' hops need no pairing.
                std::thread::sleep(crate::emulation::slack(Duration::from_millis(300)));
                exported = match crate::prometheus::http_get(metrics, "/metrics")? {
                    (200, text) => text,
                    (status, text) => return Err(format!("/metrics: {status}: {text}")),
                };
                Ok(())
            },
        )?;
        let report: serde_json::Value = std::fs::read_to_string(&out)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| format!("loadgen wrote no JSON report to {}", out.display()))?;
        let e2e = EndToEnd::of(&report).ok_or("loadgen's report lacks oha's keys")?;
        if let Some(dir) = &opts.keep {
            let save = |what: &str, v: &serde_json::Value| {
                let path = dir.join(format!("{tag}-c{connections}-{what}.json"));
                std::fs::create_dir_all(dir)
                    .and_then(|()| std::fs::write(&path, v.to_string()))
                    .map_err(|e| format!("writing {}: {e}", path.display()))
            };
            save("hopprobe", &measured.summary)?;
            save("loadgen", &report)?;
        }
        if e2e.success_rate < 1.0 {
            return Err(format!(
                "loadgen: only {:.1} % of requests succeeded",
                e2e.success_rate * 100.0
            ));
        }
        runs.push(Run {
            hops: Hops(measured.summary),
            e2e,
            exported: export::Exported::parse(&exported),
        });
    }
    Ok(runs)
}

/// loadgen from the client namespace: the published benchmark's command (a connection per
/// request) under load; at concurrency 1 on one kept-alive connection, so that the client's
/// own connect (a third of a millisecond in a debug build, against 40 µs on the node) does not
/// dwarf the zero-delay runs' few milliseconds.
fn loadgen(
    programs: &Programs,
    client_netns: &str,
    url: &str,
    connections: u32,
    requests: u32,
    out: &Path,
) -> Result<(), String> {
    let output = Command::new("ip")
        .args(["netns", "exec", client_netns])
        .arg(&programs.loadgen)
        .arg(url)
        .args(["-c", &connections.to_string(), "-n", &requests.to_string()])
        .args(["--warmup", &connections.max(5).to_string()])
        .args(if connections > 1 {
            &["--disable-keepalive"][..]
        } else {
            &[]
        })
        .args(["--no-tui", "--output-format", "json", "-o"])
        .arg(out)
        .output()
        .map_err(|e| format!("running loadgen: {e}"))?;
    if !output.status.success() {
        return Err(format!("loadgen failed: {}", crate::describe(&output)));
    }
    Ok(())
}
