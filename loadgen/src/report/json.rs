//! oha's JSON report (same keys, so existing scripts keep working) plus `hdrHistograms`: each
//! latency series as a base64 HdrHistogram V2 (deflate) in nanoseconds.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::{PERCENTILES, TargetReport};
use crate::stats::Series;

#[derive(Serialize)]
struct Summary {
    #[serde(rename = "successRate")]
    success_rate: f64,
    total: f64,
    slowest: f64,
    fastest: f64,
    average: f64,
    #[serde(rename = "requestsPerSec")]
    requests_per_sec: f64,
    #[serde(rename = "totalData")]
    total_data: u64,
    #[serde(rename = "sizePerRequest")]
    size_per_request: Option<u64>,
    #[serde(rename = "sizePerSec")]
    size_per_sec: f64,
}

#[derive(Serialize)]
struct Triple {
    average: f64,
    fastest: f64,
    slowest: f64,
}

fn triple(s: &Series) -> Triple {
    Triple {
        average: s.mean(),
        fastest: s.min(),
        slowest: s.max(),
    }
}

fn histogram(s: &Series) -> BTreeMap<String, u64> {
    s.buckets(11)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn percentiles(s: &Series) -> BTreeMap<String, f64> {
    PERCENTILES
        .iter()
        .map(|&p| (format!("p{p}"), s.percentile(p)))
        .collect()
}

fn ms(secs: f64) -> f64 {
    (secs * 1_000_000.0).round() / 1000.0
}

/// oha's `rps` block, from completions per 10 ms.
fn rps(per_10ms: &[u32]) -> Value {
    let mut v: Vec<f64> = per_10ms.iter().map(|&n| f64::from(n) / 0.01).collect();
    if v.is_empty() {
        return json!({"mean": f64::NAN, "stddev": f64::NAN, "max": f64::NAN, "min": f64::NAN,
                      "percentiles": {}});
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    v.sort_by(f64::total_cmp);
    let pct: BTreeMap<String, f64> = PERCENTILES
        .iter()
        .map(|&p| {
            let i = ((p / 100.0 * n) as usize).min(v.len() - 1);
            (format!("p{p}"), v[i])
        })
        .collect();
    json!({"mean": mean, "stddev": var.sqrt(), "max": v[v.len() - 1], "min": v[0],
           "percentiles": pct})
}

pub fn value(r: &TargetReport<'_>) -> Value {
    let s = r.stats;
    let lat = &s.latency;
    let summary = Summary {
        success_rate: s.success_rate(),
        total: r.total_secs,
        slowest: lat.max(),
        fastest: lat.min(),
        average: lat.mean(),
        requests_per_sec: r.requests_per_sec(),
        total_data: s.body_bytes,
        size_per_request: s.size_per_request(),
        size_per_sec: r.size_per_sec(),
    };
    let status: BTreeMap<String, u64> = s
        .statuses
        .iter()
        .map(|(c, n)| (c.to_string(), *n))
        .collect();
    let errors: BTreeMap<&str, u64> = s.error_list().into_iter().collect();
    json!({
        "summary": summary,
        "metrics": {
            "success_rate": s.success_rate(),
            "requests_per_sec": r.requests_per_sec(),
            "latency_ms": {
                "min": ms(lat.min()), "mean": ms(lat.mean()), "p50": ms(lat.percentile(50.0)),
                "p95": ms(lat.percentile(95.0)), "p99": ms(lat.percentile(99.0)),
                "max": ms(lat.max()),
            },
        },
        "responseTimeHistogram": histogram(lat),
        "latencyPercentiles": percentiles(lat),
        "firstByteHistogram": histogram(&s.first_byte),
        "firstBytePercentiles": percentiles(&s.first_byte),
        "rps": rps(&s.per_10ms),
        "details": {
            "DNSDialup": triple(&s.dns_dialup),
            "DNSLookup": triple(&s.dns_lookup),
            "firstByte": triple(&s.first_byte),
            "connect": triple(&s.connect),
            "tlsHandshake": triple(&s.tls),
        },
        "statusCodeDistribution": status,
        "errorDistribution": errors,
        "hdrHistograms": {
            "unit": "ns",
            "format": "HdrHistogram V2 deflate, base64",
            "latency": lat.base64_v2(),
            "firstByte": s.first_byte.base64_v2(),
            "DNSDialup": s.dns_dialup.base64_v2(),
            "DNSLookup": s.dns_lookup.base64_v2(),
            "connect": s.connect.base64_v2(),
            "tlsHandshake": s.tls.base64_v2(),
        },
    })
}

/// One target: oha's object itself. Several: `{"targets": {name: object}}`.
pub fn report(reports: &[TargetReport<'_>]) -> Value {
    if let [single] = reports {
        return value(single);
    }
    let mut targets = serde_json::Map::new();
    for r in reports {
        let mut v = value(r);
        if let Some(o) = v.as_object_mut() {
            o.insert("url".into(), Value::from(r.url));
        }
        targets.insert(r.name.to_owned(), v);
    }
    json!({ "targets": targets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conn::Dial, error::ErrorKind, record::Sample, stats::Stats};

    /// Compares with a file of `formats/tests/data`, which the schema tests validate and read
    /// back; `UPDATE_GOLDEN=1` rewrites it (for a deliberate change of the format).
    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../formats/tests/data")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).expect("write golden file");
        }
        let want = std::fs::read_to_string(&path).expect("golden file");
        assert!(actual == want, "{name} changed:\n{actual}");
    }

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

    fn pretty(v: &impl Serialize) -> String {
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
