//! loadgen's JSON output (`loadgen --output-format json`, read by `hopprobe report --loadgen`):
//! oha's JSON report, same keys so that scripts written for oha keep working, plus `metrics`,
//! first-byte series and `hdrHistograms` (each latency series as a base64 HdrHistogram V2,
//! deflated, in nanoseconds). Times are seconds unless a key says otherwise.
//!
//! Keys are in alphabetical order: loadgen built this document as a `serde_json::Value`
//! before, whose maps sort their keys, and the output stays byte for byte what it was.
//!
//! A number that has no value (an empty series' mean, a rate over no time) is `null`. When
//! read, oha's own report is accepted: loadgen's additions are optional there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ReadError;

/// The whole document: one target's report, or with several targets one per name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, bound(deserialize = "S: Deserialize<'de> + Ord + Default"))]
pub enum Output<S = String> {
    /// Several `--target`s; each report has its `url`.
    Targets { targets: BTreeMap<S, Report<S>> },
    /// Boxed: a report is large next to the map of reports.
    Single(Box<Report<S>>),
}

impl Output {
    /// The first target's report (by name, with several).
    pub fn first(&self) -> Option<&Report> {
        match self {
            Output::Single(r) => Some(r),
            Output::Targets { targets } => targets.values().next(),
        }
    }
}

/// One target's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    bound(deserialize = "S: Deserialize<'de> + Ord + Default")
)]
pub struct Report<S = String> {
    #[serde(default)]
    pub details: Details,
    /// Failed requests by error.
    #[serde(default)]
    pub error_distribution: BTreeMap<S, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_histogram: Option<BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_percentiles: Option<BTreeMap<String, Option<f64>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdr_histograms: Option<HdrHistograms<S>>,
    /// `p10` … `p99.99` → seconds.
    #[serde(default)]
    pub latency_percentiles: BTreeMap<String, Option<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// oha's 11 buckets: upper bound in seconds → requests.
    #[serde(default)]
    pub response_time_histogram: BTreeMap<String, u64>,
    #[serde(default)]
    pub rps: Rps,
    /// Responses by HTTP status.
    #[serde(default)]
    pub status_code_distribution: BTreeMap<String, u64>,
    pub summary: Summary,
    /// The target's URL, with several targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<S>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Summary {
    pub average: Option<f64>,
    pub fastest: Option<f64>,
    pub requests_per_sec: Option<f64>,
    /// Body bytes per successful request; `null` without one.
    pub size_per_request: Option<u64>,
    pub size_per_sec: Option<f64>,
    pub slowest: Option<f64>,
    /// Successful requests (any HTTP status) over all requests.
    pub success_rate: Option<f64>,
    /// Seconds from the first measured request to the end of the run.
    pub total: Option<f64>,
    /// Body bytes of successful requests.
    pub total_data: u64,
}

/// loadgen's own summary, in snake_case and milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metrics {
    pub latency_ms: LatencyMs,
    pub requests_per_sec: Option<f64>,
    pub success_rate: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyMs {
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// Completions per second, counted per 10 ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rps {
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub percentiles: BTreeMap<String, Option<f64>>,
    pub stddev: Option<f64>,
}

/// Connection set-up of the requests that opened a connection. oha has the first two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Details {
    /// DNS + TCP connect + TLS handshake.
    #[serde(rename = "DNSDialup")]
    pub dns_dialup: Timing,
    #[serde(rename = "DNSLookup")]
    pub dns_lookup: Timing,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<Timing>,
    #[serde(rename = "firstByte", skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<Timing>,
    #[serde(rename = "tlsHandshake", skip_serializing_if = "Option::is_none")]
    pub tls_handshake: Option<Timing>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timing {
    pub average: Option<f64>,
    pub fastest: Option<f64>,
    pub slowest: Option<f64>,
}

/// Each series as a base64 HdrHistogram V2 (deflate) in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct HdrHistograms<S = String> {
    #[serde(rename = "DNSDialup")]
    pub dns_dialup: String,
    #[serde(rename = "DNSLookup")]
    pub dns_lookup: String,
    pub connect: String,
    #[serde(rename = "firstByte")]
    pub first_byte: String,
    /// [`HDR_FORMAT`].
    pub format: S,
    pub latency: String,
    #[serde(rename = "tlsHandshake")]
    pub tls_handshake: String,
    /// [`HDR_UNIT`].
    pub unit: S,
}

/// `hdrHistograms.format`.
pub const HDR_FORMAT: &str = "HdrHistogram V2 deflate, base64";
/// `hdrHistograms.unit`.
pub const HDR_UNIT: &str = "ns";

/// Reads the document's text (loadgen's or oha's).
pub fn read(text: &str) -> Result<Output, ReadError> {
    const WHAT: &str = "an oha/loadgen JSON report";
    let mut v: serde_json::Value = serde_json::from_str(text).map_err(ReadError::Syntax)?;
    // Told apart here rather than by the untagged `Deserialize`, whose error would name
    // neither shape.
    if let Some(t) = v.get_mut("targets").filter(|t| t.is_object()) {
        let targets = serde_json::from_value(t.take()).map_err(|e| ReadError::document(WHAT, e))?;
        return Ok(Output::Targets { targets });
    }
    if v.get("summary").is_none() {
        return Err(ReadError::Missing {
            key: "summary",
            what: WHAT,
        });
    }
    serde_json::from_value(v)
        .map(|r| Output::Single(Box::new(r)))
        .map_err(|e| ReadError::document(WHAT, e))
}
