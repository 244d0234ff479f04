//! `hopprobe report`: joins a load generator's requests with hopprobe's records and says
//! where each request's time went, per environment; terminal, JSON, Markdown and HTML.

pub mod aggregate;
pub mod compare;
pub mod html;
pub mod input;
pub mod join;
pub mod text;

use std::path::PathBuf;

use serde::Serialize;

use self::{aggregate::EnvReport, join::Names};
use crate::names::DEFAULT_PROXY_CONTAINERS;

/// One environment's inputs: a `--label` starts a new one; the files after it belong to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvArgs {
    pub label: Option<String>,
    pub loadgen: Option<PathBuf>,
    pub requests: Option<PathBuf>,
    pub probe: Option<PathBuf>,
    pub summary: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportArgs {
    pub envs: Vec<EnvArgs>,
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub proxy_containers: Vec<String>,
    /// Print only the overview table.
    pub brief: bool,
}

pub const USAGE: &str = "usage: hopprobe report [--label NAME] --loadgen RUN.json [--requests REQS.jsonl] \
[--probe RECORDS.jsonl] [--summary HOPPROBE.json] [--label NAME2 ...] [--json FILE] [--markdown FILE] [--html FILE] \
[--proxy-containers NAMES] [--brief]";

/// Parses the flags in order: `--label` opens a new environment; `--loadgen`, `--requests`,
/// `--probe`, `--summary` fill the current one (a second one of the same kind also opens a
/// new environment, so `--label` may be left out).
pub fn parse_args(args: &[String]) -> Result<ReportArgs, String> {
    let mut out = ReportArgs {
        proxy_containers: DEFAULT_PROXY_CONTAINERS
            .split(',')
            .map(String::from)
            .collect(),
        ..Default::default()
    };
    let mut cur: Option<EnvArgs> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (flag.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--label" => {
                if let Some(e) = cur.take() {
                    out.envs.push(e);
                }
                cur = Some(EnvArgs {
                    label: Some(value()?),
                    ..Default::default()
                });
            }
            "--loadgen" | "--requests" | "--probe" | "--summary" => {
                let v = PathBuf::from(value()?);
                let e = cur.get_or_insert_with(EnvArgs::default);
                let slot = match flag {
                    "--loadgen" => &mut e.loadgen,
                    "--requests" => &mut e.requests,
                    "--probe" => &mut e.probe,
                    _ => &mut e.summary,
                };
                if slot.is_some() {
                    let done = cur.take().expect("just set");
                    out.envs.push(done);
                    let mut e = EnvArgs::default();
                    match flag {
                        "--loadgen" => e.loadgen = Some(v),
                        "--requests" => e.requests = Some(v),
                        "--probe" => e.probe = Some(v),
                        _ => e.summary = Some(v),
                    }
                    cur = Some(e);
                } else {
                    *slot = Some(v);
                }
            }
            "--brief" => out.brief = true,
            "--json" => out.json = Some(value()?.into()),
            "--markdown" => out.markdown = Some(value()?.into()),
            "--html" => out.html = Some(value()?.into()),
            "--proxy-containers" => {
                out.proxy_containers = value()?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if let Some(e) = cur.take() {
        out.envs.push(e);
    }
    if out.envs.is_empty() {
        return Err("no environment: give at least --loadgen or --requests".into());
    }
    for (i, e) in out.envs.iter_mut().enumerate() {
        if e.loadgen.is_none() && e.requests.is_none() {
            return Err(format!(
                "environment {} has neither --loadgen nor --requests",
                e.label.clone().unwrap_or_else(|| (i + 1).to_string())
            ));
        }
        if e.label.is_none() {
            e.label = Some(format!("env{}", i + 1));
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub environments: Vec<EnvReport>,
    /// Each environment against its baseline (the first one at the same concurrency).
    pub against_baseline: Vec<compare::Versus>,
}

/// Reads one environment's files and builds its report.
pub fn build_env(e: &EnvArgs, proxies: &[String]) -> Result<EnvReport, input::InputError> {
    let loadgen = e.loadgen.as_deref().map(input::load_loadgen).transpose()?;
    let requests = e
        .requests
        .as_deref()
        .map(input::load_requests)
        .transpose()?;
    let probe = e
        .probe
        .as_deref()
        .map(input::load_probe)
        .transpose()?
        .unwrap_or_default();
    let summary = e
        .summary
        .as_deref()
        .map(input::load_summary)
        .transpose()?
        .unwrap_or_default();
    let names = Names {
        containers: summary.names.clone(),
        proxies: proxies.to_vec(),
    };
    let joined = requests
        .as_ref()
        .filter(|r| !r.requests.is_empty())
        .map(|r| join::join(&r.requests, &r.warmups, &probe, &names));
    let label = e.label.clone().unwrap_or_default();
    let requests_for_report = requests.as_ref().filter(|r| !r.requests.is_empty());
    let mut report = aggregate::env_report(
        &label,
        loadgen.as_ref(),
        requests_for_report,
        &probe,
        joined.as_ref(),
        &summary.cpu,
    );
    if let (Some(lg), Some(path)) = (&loadgen, &e.loadgen) {
        aggregate::loadgen_file_notes(&mut report, lg, path);
    }
    if e.probe.is_none() {
        report
            .notes
            .push("no hopprobe records (--probe): nothing inside the node is known".into());
    }
    Ok(report)
}

fn write(path: &PathBuf, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// `hopprobe report ARGS`: prints the table, writes the requested files; exit code.
pub fn main(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return crate::exit::OK;
    }
    let parsed = match parse_args(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hopprobe report: {e}\n{USAGE}");
            return crate::exit::USAGE;
        }
    };
    let mut envs = Vec::new();
    for e in &parsed.envs {
        match build_env(e, &parsed.proxy_containers) {
            Ok(r) => envs.push(r),
            Err(err) => {
                eprintln!("hopprobe report: {err}");
                return crate::exit::USAGE;
            }
        }
    }
    if parsed.brief {
        print!("{}", text::overview(&envs));
    } else {
        print!("{}", text::terminal(&envs));
    }
    let report = Report {
        against_baseline: compare::against_baselines(&envs),
        environments: envs,
    };
    let mut outputs: Vec<(&PathBuf, String)> = Vec::new();
    if let Some(p) = &parsed.json {
        outputs.push((
            p,
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        ));
    }
    if let Some(p) = &parsed.markdown {
        outputs.push((p, text::markdown(&report.environments)));
    }
    if let Some(p) = &parsed.html {
        outputs.push((p, html::render(&report.environments)));
    }
    for (p, text) in outputs {
        if let Err(e) = write(p, &text) {
            eprintln!("hopprobe report: {e}");
            return crate::exit::FAILURE;
        }
    }
    0
}
