//! The keep-alive run: loadgen with its default, kept-alive connections through the ingress of
//! a sidecar mesh, hopprobe's summary and records, and `hopprobe report` joining loadgen's
//! requests with them — the join the other rows never exercise (they open a connection per
//! request, or use one connection at c = 1).

use std::{path::Path, process::Command, time::Duration};

use super::{
    Options, Programs, both_ways, checks,
    checks::{INGRESS, Row},
    ms_delay,
    series::{EndToEnd, Hops, Joined},
};
use crate::lab::{
    Lab,
    config::{LabConfig, Mesh, SERVICES},
    names::{NODE_IP, NODEPORT_INGRESS},
};

/// Requests per kept-alive connection: enough that each connection carries many exchanges
/// (the report numbers them) and the ramp-up is a small part of the run.
pub const REQUESTS_PER_CONNECTION: u32 = 25;
/// Warm-up requests per connection: they use the connection too, so the first measured request
/// on each is exchange 2, not 0 — a join that ignored them would be off by two.
pub const WARMUP_PER_CONNECTION: u32 = 2;

/// The plaintext keep-alive lab: mesh `sidecar`, the ingress, D = 1 ms each way, A = 2 ms in
/// every app.
pub fn plain_config(name: &str) -> LabConfig {
    let mut config = LabConfig::new(name);
    config.mesh = Mesh::Sidecar;
    config.ingress = true;
    config.sidecar_delay = both_ways(Duration::from_millis(1));
    for s in SERVICES {
        config
            .app_delay
            .insert(s.into(), ms_delay(Duration::from_millis(2)));
    }
    config
}

/// How loadgen reaches the ingress: the URL's scheme and what else loadgen needs for it (an
/// HTTPS ingress: `https` and `--insecure`, as the published external test ran oha).
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub scheme: &'a str,
    pub loadgen_args: &'a [&'a str],
    /// What else hopprobe needs (`--tls` to follow TLS records).
    pub hopprobe_args: &'a [&'a str],
    /// A connection per request (`--disable-keepalive`, the published command) instead of
    /// kept-alive connections.
    pub new_connections: bool,
}

impl Entry<'static> {
    pub const PLAIN: Self = Self {
        scheme: "http",
        loadgen_args: &[],
        hopprobe_args: &[],
        new_connections: false,
    };
    /// HTTPS to the ingress as the published external test ran oha, hopprobe following TLS.
    pub const HTTPS: Self = Self {
        scheme: "https",
        loadgen_args: &["--insecure"],
        hopprobe_args: &["--tls"],
        new_connections: false,
    };
}

/// The keep-alive lab with HTTPS at the ingress and mutual TLS between the sidecars (the
/// published runs' setting), TLS 1.3 with resumption.
pub fn tls_config(name: &str) -> LabConfig {
    let mut config = plain_config(name);
    config.ingress_tls = true;
    config.mtls = true;
    config
}

/// Brings a lab up with `config` (a sidecar mesh with an ingress; its sidecar and app delays
/// are what the rows expect), drives `opts.keepalive_connections` kept-alive connections
/// through the ingress under hopprobe, runs `hopprobe report` over both tools' records, and
/// checks hopprobe's summary and the report against what was injected and sent.
pub fn scenario(
    programs: &Programs,
    opts: &Options,
    scenario: &str,
    config: LabConfig,
    entry: Entry<'_>,
) -> Result<Vec<Row>, String> {
    if config.mesh != Mesh::Sidecar || !config.ingress {
        return Err(format!(
            "{scenario}: the keep-alive rows need mesh sidecar and the ingress"
        ));
    }
    let app_ms: Vec<(&str, f64)> = SERVICES
        .iter()
        .map(|s| (*s, config.delay_of(s).min().as_secs_f64() * 1e3))
        .collect();
    let connections = opts.keepalive_connections;
    let (requests, warmup) = (
        connections * REQUESTS_PER_CONNECTION,
        connections * WARMUP_PER_CONNECTION,
    );
    let tag = format!(
        "{}-{}-c{connections}",
        if entry.new_connections {
            "close"
        } else {
            "keepalive"
        },
        entry.scheme
    );
    let tls = config.ingress_tls;
    let lab = Lab::up(config, &programs.hoplab).map_err(|e| format!("lab up: {e}"))?;
    let netns = format!("/run/netns/{}", lab.state.node_netns);
    let metadata = lab.state.metadata_file.display().to_string();
    let url = format!(
        "{}://{NODE_IP}:{NODEPORT_INGRESS}/productpage",
        entry.scheme
    );
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let (lg_json, lg_records) = (
        dir.path().join("loadgen.json"),
        dir.path().join("requests.jsonl"),
    );
    // No records rate limit and a large ring, as in report_lab: every exchange's record must
    // be there for hop counts to equal request counts and for every request to join.
    let mut probe_args = vec![
        "--netns",
        &netns,
        "--metadata",
        &metadata,
        "--records-rate",
        "0",
        "--records-ring-size",
        "67108864",
    ];
    probe_args.extend_from_slice(entry.hopprobe_args);
    let measured = crate::probe::try_measure(&programs.hopprobe, &probe_args, || {
        let output = Command::new("ip")
            .args(["netns", "exec", &lab.client_netns()])
            .arg(&programs.loadgen)
            .arg(&url)
            .args(["-c", &connections.to_string(), "-n", &requests.to_string()])
            .args(["--warmup", &warmup.to_string()])
            .args(entry.loadgen_args)
            .args(if entry.new_connections {
                &["--disable-keepalive"][..]
            } else {
                &[]
            })
            .args(["--no-tui", "--output-format", "json", "-o"])
            .arg(&lg_json)
            .arg("--records")
            .arg(&lg_records)
            .output()
            .map_err(|e| format!("running loadgen: {e}"))?;
        if !output.status.success() {
            return Err(format!("loadgen failed: {}", crate::describe(&output)));
        }
        Ok(())
    })?;
    drop(lab);
    let summary_file = dir.path().join("hopprobe.json");
    std::fs::write(&summary_file, measured.summary.to_string())
        .map_err(|e| format!("writing {}: {e}", summary_file.display()))?;
    let report_file = dir.path().join("report.json");
    let output = Command::new(&programs.hopprobe)
        .arg("report")
        .args(["--label", &tag, "--loadgen"])
        .arg(&lg_json)
        .arg("--requests")
        .arg(&lg_records)
        .arg("--probe")
        .arg(&measured.records)
        .arg("--summary")
        .arg(&summary_file)
        .args(["--proxy-containers", "istio-proxy", "--brief", "--json"])
        .arg(&report_file)
        .output()
        .map_err(|e| format!("running hopprobe report: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "hopprobe report failed: {}",
            crate::describe(&output)
        ));
    }
    let read = |path: &Path| -> Result<serde_json::Value, String> {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| format!("no JSON in {}", path.display()))
    };
    let (lg_report, report) = (read(&lg_json)?, read(&report_file)?);
    if let Some(keep) = &opts.keep {
        std::fs::create_dir_all(keep).map_err(|e| format!("creating {}: {e}", keep.display()))?;
        for (from, to) in [
            (summary_file.as_path(), "hopprobe.json"),
            (&lg_json, "loadgen.json"),
            (&lg_records, "requests.jsonl"),
            (&measured.records, "records.jsonl"),
            (&report_file, "report.json"),
        ] {
            let to = keep.join(format!("{tag}-{to}"));
            std::fs::copy(from, &to).map_err(|e| format!("keeping {}: {e}", to.display()))?;
        }
    }
    let e2e = EndToEnd::of(&lg_report).ok_or("loadgen's report lacks oha's keys")?;
    if e2e.success_rate < 1.0 {
        return Err(format!(
            "loadgen: only {:.1} % of requests succeeded",
            e2e.success_rate * 100.0
        ));
    }
    let joined = Joined::of(&report).ok_or("hopprobe report's JSON has no environment")?;
    let hops = Hops(measured.summary);
    // Every request sent used its connection, warm-up included; all of them succeeded.
    let sent = u64::from(requests + warmup);
    let mut rows = vec![checks::exchange_counts(scenario, &hops, sent)];
    rows.extend(checks::packet_hops(scenario, &hops));
    rows.push(checks::path_sum(
        scenario,
        &hops,
        INGRESS,
        &e2e,
        entry.new_connections,
    ));
    if tls {
        // One handshake at the ingress per connection loadgen opened.
        let connections_opened = if entry.new_connections {
            sent
        } else {
            u64::from(connections)
        };
        rows.extend(checks::tls_handshakes(
            scenario,
            &hops,
            connections_opened,
            u64::from(connections),
        ));
    }
    rows.push(checks::match_rate(scenario, &hops));
    rows.push(checks::app_split(scenario, &hops));
    rows.extend(checks::report_join(scenario, &joined));
    rows.extend(checks::clock_offset(scenario, &joined, sent));
    rows.extend(checks::report_packet_hops(scenario, &joined));
    rows.extend(checks::leaf_service_times(scenario, &hops, &app_ms));
    Ok(rows)
}
