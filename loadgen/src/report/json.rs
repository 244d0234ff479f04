//! oha's JSON report (same keys, so existing scripts keep working) plus `hdrHistograms`: each
//! latency series as a base64 HdrHistogram V2 (deflate) in nanoseconds. The document's type,
//! which `hopprobe report --loadgen` reads too, is `hopprobe_formats::loadgen_output`.

use std::collections::BTreeMap;

use hopprobe_formats::loadgen_output::{
    Details, HDR_FORMAT, HDR_UNIT, HdrHistograms, LatencyMs, Metrics, Output, Report, Rps, Summary,
    Timing,
};

use super::{PERCENTILES, TargetReport};
use crate::stats::Series;

/// The document borrows the targets' names, URLs and error names.
pub type Json<'a> = Output<&'a str>;

/// A number, or `null` for NaN and infinities (an empty series' mean), as JSON has no others.
fn num(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn timing(s: &Series) -> Timing {
    Timing {
        average: num(s.mean()),
        fastest: num(s.min()),
        slowest: num(s.max()),
    }
}

fn histogram(s: &Series) -> BTreeMap<String, u64> {
    s.buckets(11)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn percentiles(s: &Series) -> BTreeMap<String, Option<f64>> {
    PERCENTILES
        .iter()
        .map(|&p| (format!("p{p}"), num(s.percentile(p))))
        .collect()
}

fn ms(secs: f64) -> Option<f64> {
    num((secs * 1_000_000.0).round() / 1000.0)
}

/// oha's `rps` block, from completions per 10 ms.
fn rps(per_10ms: &[u32]) -> Rps {
    let mut v: Vec<f64> = per_10ms.iter().map(|&n| f64::from(n) / 0.01).collect();
    if v.is_empty() {
        return Rps::default();
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    v.sort_by(f64::total_cmp);
    let percentiles = PERCENTILES
        .iter()
        .map(|&p| {
            let i = ((p / 100.0 * n) as usize).min(v.len() - 1);
            (format!("p{p}"), num(v[i]))
        })
        .collect();
    Rps {
        max: num(v[v.len() - 1]),
        mean: num(mean),
        min: num(v[0]),
        percentiles,
        stddev: num(var.sqrt()),
    }
}

pub fn value<'a>(r: &TargetReport<'a>) -> Report<&'a str> {
    let s = r.stats;
    let lat = &s.latency;
    Report {
        details: Details {
            dns_dialup: timing(&s.dns_dialup),
            dns_lookup: timing(&s.dns_lookup),
            connect: Some(timing(&s.connect)),
            first_byte: Some(timing(&s.first_byte)),
            tls_handshake: Some(timing(&s.tls)),
        },
        error_distribution: s.error_list().into_iter().collect(),
        first_byte_histogram: Some(histogram(&s.first_byte)),
        first_byte_percentiles: Some(percentiles(&s.first_byte)),
        hdr_histograms: Some(HdrHistograms {
            dns_dialup: s.dns_dialup.base64_v2(),
            dns_lookup: s.dns_lookup.base64_v2(),
            connect: s.connect.base64_v2(),
            first_byte: s.first_byte.base64_v2(),
            format: HDR_FORMAT,
            latency: lat.base64_v2(),
            tls_handshake: s.tls.base64_v2(),
            unit: HDR_UNIT,
        }),
        latency_percentiles: percentiles(lat),
        metrics: Some(Metrics {
            latency_ms: LatencyMs {
                max: ms(lat.max()),
                mean: ms(lat.mean()),
                min: ms(lat.min()),
                p50: ms(lat.percentile(50.0)),
                p95: ms(lat.percentile(95.0)),
                p99: ms(lat.percentile(99.0)),
            },
            requests_per_sec: num(r.requests_per_sec()),
            success_rate: num(s.success_rate()),
        }),
        response_time_histogram: histogram(lat),
        rps: rps(&s.per_10ms),
        status_code_distribution: s
            .statuses
            .iter()
            .map(|(c, n)| (c.to_string(), *n))
            .collect(),
        summary: Summary {
            average: num(lat.mean()),
            fastest: num(lat.min()),
            requests_per_sec: num(r.requests_per_sec()),
            size_per_request: s.size_per_request(),
            size_per_sec: num(r.size_per_sec()),
            slowest: num(lat.max()),
            success_rate: num(s.success_rate()),
            total: num(r.total_secs),
            total_data: s.body_bytes,
        },
        url: None,
    }
}

/// One target: oha's object itself. Several: `{"targets": {name: object}}`, each with its
/// `url`.
pub fn report<'a>(reports: &[TargetReport<'a>]) -> Json<'a> {
    if let [single] = reports {
        return Output::Single(Box::new(value(single)));
    }
    let targets = reports
        .iter()
        .map(|r| {
            let mut v = value(r);
            v.url = Some(r.url);
            (r.name, v)
        })
        .collect();
    Output::Targets { targets }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conn::Dial, error::ErrorKind, record::Sample, stats::Stats};

    use hopprobe_formats::testing::golden;

    /// A run with every section filled: new (TLS) and reused connections, two statuses, an
    /// error, completions spread over 40 ms.
    fn stats() -> Stats {
        let mut s = Stats::default();
        for i in 0..20u64 {
            let start = 1_000_000_000 + i * 2_000_000;
            let reused = i % 4 != 0;
            let dial = if reused {
                Dial::default()
            } else {
                Dial {
                    dns_ns: Some(20_000 + i),
                    connect_start_ns: Some(start),
                    connect_end_ns: Some(start + 150_000 + i * 1_000),
                    tls_end_ns: Some(start + 900_000 + i * 3_000),
                    tls_resumed: Some(i > 0),
                    ..Dial::default()
                }
            };
            let error = (i == 7).then_some(ErrorKind::ConnectionReset);
            let end = start + 1_200_000 + i * i * 7_919;
            s.add(
                &Sample {
                    seq: i,
                    reused,
                    start_ns: start,
                    dial,
                    first_byte_ns: Some(end - 100_000),
                    end_ns: end,
                    status: error.is_none().then_some(if i == 3 { 503 } else { 200 }),
                    bytes: 1_234,
                    error,
                    ..Sample::default()
                },
                1_000_000_000,
                false,
            );
        }
        s
    }

    fn pretty(v: &Json<'_>) -> String {
        serde_json::to_string_pretty(v).expect("json") + "\n"
    }

    #[test]
    fn the_json_output_is_the_golden_files() {
        let full = stats();
        let empty = Stats::default();
        let target = |name, stats| TargetReport {
            name,
            url: "http://10.77.0.1:30080/",
            stats,
            total_secs: 2.5,
        };
        golden(
            "loadgen-output.json",
            &pretty(&report(&[target("default", &full)])),
        );
        golden(
            "loadgen-output-targets.json",
            &pretty(&report(&[target("a", &full), target("b", &empty)])),
        );
    }
}
