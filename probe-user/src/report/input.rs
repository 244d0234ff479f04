//! What `hopprobe report` reads: loadgen's (or oha's) JSON report, loadgen's per-request
//! records, hopprobe's records (socket exchanges and datapath lines) and, optionally, the
//! summary of `hopprobe run --json` (names of cgroups, CPU samples).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::Value;

use crate::{hops::datapath::DatapathRecord, series::cpu::CpuSeries};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Parse { path: PathBuf, what: String },
}

fn read(path: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_err(path: &Path, what: impl Into<String>) -> InputError {
    InputError::Parse {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// One request as loadgen recorded it (CLOCK_MONOTONIC of the load generator's machine).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Request {
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub warmup: bool,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub start_ns: u64,
    pub written_ns: Option<u64>,
    pub first_byte_ns: Option<u64>,
    pub end_ns: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl Request {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.status.is_some()
    }
}

/// loadgen's records file: requests and the `-c` it ran with.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    pub requests: Vec<Request>,
    pub concurrency: Option<u32>,
}

pub fn load_requests(path: &Path) -> Result<Requests, InputError> {
    let text = read(path)?;
    let mut out = Requests::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| parse_err(path, format!("line {}: {e}", i + 1)))?;
        if v.get("record").and_then(Value::as_str) == Some("header") {
            out.concurrency = concurrency_from_args(&v["args"]);
            continue;
        }
        let r: Request = serde_json::from_value(v)
            .map_err(|e| parse_err(path, format!("line {}: not a loadgen record: {e}", i + 1)))?;
        if !r.warmup {
            out.requests.push(r);
        }
    }
    Ok(out)
}

fn concurrency_from_args(args: &Value) -> Option<u32> {
    let args: Vec<&str> = args.as_array()?.iter().filter_map(Value::as_str).collect();
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == "-c" || *a == "--concurrency" {
            args.get(i + 1)?.parse().ok()
        } else {
            a.strip_prefix("-c")
                .or_else(|| a.strip_prefix("--concurrency="))
                .and_then(|n| n.parse().ok())
        }
    })
}

/// The parts of an oha-style JSON report the report uses (times in seconds).
#[derive(Debug, Clone, Default)]
pub struct LoadgenSummary {
    pub requests_per_sec: Option<f64>,
    pub average_s: Option<f64>,
    pub success_rate: Option<f64>,
    /// `p50` → seconds.
    pub percentiles: Vec<(String, f64)>,
}

pub fn load_loadgen(path: &Path) -> Result<LoadgenSummary, InputError> {
    let v: Value =
        serde_json::from_str(&read(path)?).map_err(|e| parse_err(path, e.to_string()))?;
    // loadgen with several targets nests one report per target; take the first.
    let v = match v.get("targets").and_then(Value::as_object) {
        Some(t) => t.values().next().cloned().unwrap_or(Value::Null),
        None => v,
    };
    let summary = v
        .get("summary")
        .ok_or_else(|| parse_err(path, "no `summary`: not an oha/loadgen JSON report"))?;
    let mut percentiles: Vec<(String, f64)> = v["latencyPercentiles"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    percentiles.sort_by(|a, b| a.1.total_cmp(&b.1));
    Ok(LoadgenSummary {
        requests_per_sec: summary["requestsPerSec"].as_f64(),
        average_s: summary["average"].as_f64(),
        success_rate: summary["successRate"].as_f64(),
        percentiles,
    })
}

/// One socket exchange from hopprobe's records.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SockExchange {
    pub cookie: u64,
    pub cgroup_id: u64,
    pub role: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub req_first_ns: u64,
    pub req_last_ns: u64,
    pub resp_first_ns: Option<u64>,
    pub resp_last_ns: Option<u64>,
    pub first_read_ns: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct ProbeRecords {
    pub exchanges: Vec<SockExchange>,
    pub datapath: Vec<DatapathRecord>,
}

pub fn load_probe(path: &Path) -> Result<ProbeRecords, InputError> {
    let text = read(path)?;
    let mut out = ProbeRecords::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |e: serde_json::Error| parse_err(path, format!("line {}: {e}", i + 1));
        if line.contains("\"record\":\"datapath\"") {
            out.datapath.push(serde_json::from_str(line).map_err(bad)?);
        } else {
            out.exchanges.push(serde_json::from_str(line).map_err(bad)?);
        }
    }
    Ok(out)
}

/// Names and CPU from `hopprobe run --json`.
#[derive(Debug, Clone, Default)]
pub struct ProbeSummary {
    /// cgroup id → (pod, container).
    pub names: HashMap<u64, (String, String)>,
    pub cpu: Vec<CpuSeries>,
}

pub fn load_summary(path: &Path) -> Result<ProbeSummary, InputError> {
    let v: Value =
        serde_json::from_str(&read(path)?).map_err(|e| parse_err(path, e.to_string()))?;
    let mut names = HashMap::new();
    for h in v["hops"].as_array().into_iter().flatten() {
        if let (Some(id), Some(pod), Some(c)) = (
            h["cgroup_id"].as_u64(),
            h["pod"].as_str(),
            h["container"].as_str(),
        ) && id != 0
        {
            names.insert(id, (pod.to_owned(), c.to_owned()));
        }
    }
    let cpu = match v.get("cpu") {
        Some(c) => {
            serde_json::from_value(c.clone()).map_err(|e| parse_err(path, format!("`cpu`: {e}")))?
        }
        None => Vec::new(),
    };
    Ok(ProbeSummary { names, cpu })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_read_from_loadgen_args() {
        let v = serde_json::json!(["loadgen", "http://x", "-c", "32", "-n", "5"]);
        assert_eq!(concurrency_from_args(&v), Some(32));
        let v = serde_json::json!(["loadgen", "-c64"]);
        assert_eq!(concurrency_from_args(&v), Some(64));
        assert_eq!(concurrency_from_args(&serde_json::json!(["x"])), None);
    }
}
