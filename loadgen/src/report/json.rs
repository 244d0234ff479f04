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
