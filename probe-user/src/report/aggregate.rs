//! Per-environment aggregates: the decomposition at each percentile, queue wait against
//! service, throughput and Little's law, the latency CDF and each container's CPU.

use hopprobe_formats::loadgen_records::Request;
use serde::Serialize;

use super::{
    input::{LoadgenSummary, ProbeRecords, Requests},
    join::{Breakdown, Joined, hop_order},
};
use crate::series::cpu::CpuSeries;

pub const PERCENTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

/// The decomposition of the requests around one percentile of the end-to-end time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PercentileRow {
    pub percentile: String,
    /// The end-to-end time at this percentile.
    pub e2e_ms: f64,
    /// Requests averaged for the decomposition (ranked around the percentile).
    pub window: usize,
    /// Their mean end-to-end time, which the columns below add up to.
    pub window_e2e_ms: f64,
    pub unaccounted_ms: f64,
    /// Mean per hop, in the order of `EnvReport::hops`.
    pub hops_ms: Vec<f64>,
    /// Σ of the `*_queue` hops.
    pub queue_ms: f64,
    /// Σ of the other hops inside the node.
    pub service_ms: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuUse {
    pub pod: String,
    pub container: String,
    /// Mean CPU over the samples, in cores.
    pub mean_cores: f64,
    /// (seconds since the first sample, cores) per interval.
    pub series: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LittlesLaw {
    pub throughput_rps: f64,
    pub mean_latency_ms: f64,
    /// throughput × mean latency.
    pub in_flight: f64,
    /// What the load generator kept in flight (`-c`), when known.
    pub concurrency: Option<u32>,
}

/// Without per-request records: percentiles side by side.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DistributionRow {
    pub percentile: String,
    pub e2e_ms: Option<f64>,
    /// The node's span (uplink in → out) at the same percentile of its own distribution.
    pub node_ms: Option<f64>,
    /// e2e − node at that percentile: an estimate, not a per-request quantity.
    pub outside_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnvReport {
    pub label: String,
    /// `per-request` or `distributions`.
    pub mode: String,
    pub notes: Vec<String>,
    pub requests: usize,
    pub joined: usize,
    pub join_rate: f64,
    pub reached_pod: usize,
    pub clamped: usize,
    /// node clock + offset = load generator's clock; `None` when it could not be estimated
    /// (a note says why).
    pub clock_offset_ms: Option<f64>,
    /// The hard bounds on the offset that the requests it rests on agree on.
    pub clock_offset_bounds_ms: Option<(f64, f64)>,
    /// Requests it rests on (joined by exchange number, warm-up included).
    pub clock_offset_requests: usize,
    /// Requests joined by their exchange number on the connection, and by time.
    pub joined_by_exchange: usize,
    pub joined_by_time: usize,
    /// Connections whose exchange numbers did not line up with the load generator's requests.
    pub mismatched_connections: usize,
    pub littles_law: Option<LittlesLaw>,
    pub hops: Vec<String>,
    pub percentiles: Vec<PercentileRow>,
    pub distributions: Vec<DistributionRow>,
    /// (latency ms, fraction of requests ≤ it), at most ~200 points.
    pub cdf: Vec<(f64, f64)>,
    pub cpu: Vec<CpuUse>,
}

fn ms(ns: f64) -> f64 {
    ns / 1e6
}

/// The value at quantile `q` of sorted values (nearest rank).
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Requests ranked around quantile `q`: ±1 % of the requests, narrower in the tail so the
/// window stays on its side of the next percentile, at least the request itself.
fn window(n: usize, q: f64) -> std::ops::Range<usize> {
    let center = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    let half = (n as f64 * (0.01f64).min((1.0 - q) / 4.0)).floor() as usize;
    center.saturating_sub(half)..(center + half + 1).min(n)
}

pub fn decompose(bs: &[Breakdown], hops: &[String]) -> Vec<PercentileRow> {
    let mut sorted: Vec<&Breakdown> = bs.iter().collect();
    sorted.sort_by_key(|b| b.e2e_ns);
    let e2es: Vec<u64> = sorted.iter().map(|b| b.e2e_ns).collect();
    PERCENTILES
        .iter()
        .filter_map(|(name, q)| {
            let e2e = quantile(&e2es, *q)?;
            let w = &sorted[window(sorted.len(), *q)];
            let n = w.len() as f64;
            let mean =
                |f: &dyn Fn(&Breakdown) -> u64| w.iter().map(|b| f(b) as f64).sum::<f64>() / n;
            let hops_ms: Vec<f64> = hops
                .iter()
                .map(|h| {
                    ms(mean(&|b: &Breakdown| {
                        b.segments
                            .iter()
                            .filter(|s| &s.hop == h)
                            .map(|s| s.ns)
                            .sum()
                    }))
                })
                .collect();
            let queue_ms: f64 = hops
                .iter()
                .zip(&hops_ms)
                .filter(|(h, _)| h.ends_with("_queue"))
                .map(|(_, v)| v)
                .sum();
            let inside: f64 = hops_ms.iter().sum();
            Some(PercentileRow {
                percentile: (*name).into(),
                e2e_ms: ms(e2e as f64),
                window: w.len(),
                window_e2e_ms: ms(mean(&|b: &Breakdown| b.e2e_ns)),
                unaccounted_ms: ms(mean(&|b: &Breakdown| b.unaccounted_ns)),
                hops_ms,
                queue_ms,
                service_ms: inside - queue_ms,
            })
        })
        .collect()
}

pub fn cdf(mut values: Vec<u64>) -> Vec<(f64, f64)> {
    values.sort_unstable();
    let n = values.len();
    if n == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(200).max(1);
    let mut out: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (ms(values[i] as f64), (i + 1) as f64 / n as f64))
        .collect();
    out.push((ms(values[n - 1] as f64), 1.0));
    out
}

pub fn cpu_use(series: &[CpuSeries]) -> Vec<CpuUse> {
    series
        .iter()
        .filter(|s| s.samples.len() >= 2)
        .map(|s| {
            let t0 = s.samples[0].0;
            let points: Vec<(f64, f64)> = s
                .samples
                .windows(2)
                .filter(|w| w[1].0 > w[0].0)
                .map(|w| {
                    let dt_us = (w[1].0 - w[0].0) as f64 / 1e3;
                    let used = w[1].1.saturating_sub(w[0].1) as f64;
                    ((w[1].0 - t0) as f64 / 1e9, used / dt_us)
                })
                .collect();
            let (first, last) = (s.samples[0], s.samples[s.samples.len() - 1]);
            let span_us = (last.0.saturating_sub(first.0)) as f64 / 1e3;
            CpuUse {
                pod: s.pod.clone().unwrap_or_else(|| s.cgroup.clone()),
                container: s.container.clone().unwrap_or_default(),
                mean_cores: if span_us > 0.0 {
                    last.1.saturating_sub(first.1) as f64 / span_us
                } else {
                    0.0
                },
                series: points,
            }
        })
        .collect()
}

/// Builds one environment's report: per request when there are records, else by distribution.
pub fn env_report(
    label: &str,
    loadgen: Option<&LoadgenSummary>,
    requests: Option<&Requests>,
    probe: &ProbeRecords,
    joined: Option<&Joined>,
    cpu: &[CpuSeries],
) -> EnvReport {
    let mut notes = Vec::new();
    let mut report = EnvReport {
        label: label.into(),
        mode: "per-request".into(),
        notes: Vec::new(),
        requests: 0,
        joined: 0,
        join_rate: 0.0,
        reached_pod: 0,
        clamped: 0,
        clock_offset_ms: None,
        clock_offset_bounds_ms: None,
        clock_offset_requests: 0,
        joined_by_exchange: 0,
        joined_by_time: 0,
        mismatched_connections: 0,
        littles_law: None,
        hops: Vec::new(),
        percentiles: Vec::new(),
        distributions: Vec::new(),
        cdf: Vec::new(),
        cpu: cpu_use(cpu),
    };
    if let Some(j) = joined {
        report.clock_offset_ms = j.offset.ns.map(|ns| ms(ns as f64));
        report.clock_offset_bounds_ms = j
            .offset
            .lo_ns
            .zip(j.offset.hi_ns)
            .map(|(lo, hi)| (ms(lo as f64), ms(hi as f64)));
        report.clock_offset_requests = j.offset.requests;
        report.mismatched_connections = j.counts.mismatched_connections;
        if let Some(why) = &j.offset.note {
            notes.push(format!("clock offset not estimated: {why}"));
        }
    }
    match (requests, joined) {
        (Some(reqs), Some(j)) if !j.fallback => {
            let ok: Vec<&Request> = reqs.requests.iter().filter(|r| r.ok()).collect();
            report.requests = j.requests;
            report.joined = j.breakdowns.len();
            report.join_rate = j.join_rate();
            report.reached_pod = j.breakdowns.iter().filter(|b| b.reached_pod).count();
            report.clamped = j.clamped;
            report.joined_by_exchange = j.counts.by_exchange;
            report.joined_by_time = j.counts.by_time;
            report.hops = hop_order(&j.breakdowns);
            report.percentiles = decompose(&j.breakdowns, &report.hops);
            report.cdf = cdf(ok
                .iter()
                .map(|r| r.end_ns.saturating_sub(r.start_ns))
                .collect());
            if let (Some(first), Some(last)) = (
                ok.iter().map(|r| r.start_ns).min(),
                ok.iter().map(|r| r.end_ns).max(),
            ) && last > first
            {
                let rps = ok.len() as f64 / ((last - first) as f64 / 1e9);
                let mean = ok
                    .iter()
                    .map(|r| (r.end_ns - r.start_ns) as f64)
                    .sum::<f64>()
                    / ok.len() as f64;
                report.littles_law = Some(LittlesLaw {
                    throughput_rps: rps,
                    mean_latency_ms: ms(mean),
                    in_flight: rps * mean / 1e9,
                    concurrency: reqs.concurrency,
                });
            }
            if j.unjoined > 0 {
                notes.push(format!(
                    "{} of {} requests were not joined with an exchange at the node's uplink",
                    j.unjoined, j.requests
                ));
            }
            if j.counts.mismatched_connections > 0 {
                notes.push(format!(
                    "{} connections' exchange numbers did not line up with the load generator's \
                     requests: their requests were placed by time ({} joined so), {} of them \
                     ambiguous",
                    j.counts.mismatched_connections, j.counts.by_time, j.counts.ambiguous
                ));
            }
            if j.clamped > 0 {
                notes.push(format!(
                    "{} requests had a timestamp out of order or a negative remainder, clamped to 0",
                    j.clamped
                ));
            }
        }
        _ => {
            report.mode = "distributions".into();
            notes.push(if joined.is_some_and(|j| j.fallback) {
                "requests not joined (see the clock offset): end-to-end and node percentiles \
                 are compared as distributions"
                    .into()
            } else {
                "no per-request records from the load generator: end-to-end and node \
                 percentiles are compared as distributions, not joined per request"
                    .into()
            });
            let mut node: Vec<u64> = probe
                .datapath
                .iter()
                .filter(|d| d.point == "node_in")
                .filter_map(|d| Some(d.resp_last_ns?.saturating_sub(d.req_first_ns)))
                .collect();
            node.sort_unstable();
            // End-to-end percentiles: the load generator's own records when there are
            // some (exact), else its report's.
            let mut e2e_ns: Vec<u64> = requests
                .map(|r| {
                    r.requests
                        .iter()
                        .filter(|r| r.ok())
                        .map(|r| r.end_ns.saturating_sub(r.start_ns))
                        .collect()
                })
                .unwrap_or_default();
            e2e_ns.sort_unstable();
            let e2e_at = |name: &str, q: f64| -> Option<f64> {
                if !e2e_ns.is_empty() {
                    return quantile(&e2e_ns, q).map(|v| ms(v as f64));
                }
                loadgen?
                    .percentiles
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, s)| s * 1e3)
            };
            if loadgen.is_some() || !e2e_ns.is_empty() {
                report.distributions = PERCENTILES
                    .iter()
                    .map(|(name, q)| {
                        let node_ms = quantile(&node, *q).map(|v| ms(v as f64));
                        PercentileRow::distribution(name, e2e_at(name, *q), node_ms)
                    })
                    .collect();
            }
            if let Some(lg) = loadgen
                && let (Some(rps), Some(avg)) = (lg.requests_per_sec, lg.average_s)
            {
                report.littles_law = Some(LittlesLaw {
                    throughput_rps: rps,
                    mean_latency_ms: avg * 1e3,
                    in_flight: rps * avg,
                    concurrency: requests.and_then(|r| r.concurrency),
                });
            }
            if !e2e_ns.is_empty() {
                report.cdf = cdf(e2e_ns);
            } else if let Some(lg) = loadgen {
                report.cdf = lg
                    .percentiles
                    .iter()
                    .map(|(k, s)| {
                        let q = k.trim_start_matches('p').parse::<f64>().unwrap_or(0.0) / 100.0;
                        (s * 1e3, q)
                    })
                    .collect();
            }
        }
    }
    report.notes = notes;
    report
}

impl PercentileRow {
    fn distribution(name: &str, e2e: Option<f64>, node: Option<f64>) -> DistributionRow {
        DistributionRow {
            percentile: name.into(),
            e2e_ms: e2e,
            node_ms: node,
            outside_ms: e2e.zip(node).map(|(e, n)| (e - n).max(0.0)),
        }
    }
}

/// What the report took from the `--loadgen` file: the load generator's concurrency where the
/// records' header did not state it (from the file, or its name), and where it came from; the
/// file's format when it is oha's text output.
pub fn loadgen_file_notes(report: &mut EnvReport, lg: &LoadgenSummary, path: &std::path::Path) {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    if lg.format == super::input::OHA_TEXT {
        report.notes.push(format!(
            "end-to-end from oha's text output `{name}`{}: its percentiles, mean and throughput",
            lg.requests
                .map_or(String::new(), |n| format!(" ({n} requests)"))
        ));
    }
    let Some(l) = report.littles_law.as_mut() else {
        return;
    };
    if l.concurrency.is_some() {
        return;
    }
    match (lg.concurrency, &lg.concurrency_from) {
        (Some(c), from) => {
            l.concurrency = Some(c);
            report.notes.push(format!(
                "load generator concurrency {c}: from {}",
                from.as_deref().unwrap_or("the --loadgen file")
            ));
        }
        (None, _) => report.notes.push(format!(
            "load generator concurrency unknown: `{name}` does not state it, nor does its name \
             (a `c<N>` token, e.g. `istio-c32.txt`)"
        )),
    }
}
