//! What `hopprobe report` reads: loadgen's (or oha's) JSON report, loadgen's per-request
//! records, hopprobe's records (socket exchanges and datapath lines) and, optionally, the
//! summary of `hopprobe run --json` (names of cgroups, CPU samples). Each file's format and
//! reader is in `hopprobe_formats`, shared with its writer; this adds the file's name to its
//! errors and keeps what the report uses.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use hopprobe_formats::{ReadError, compressed, loadgen_output, loadgen_records, records, summary};

use crate::series::cpu::CpuSeries;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: ReadError },
}

/// Reads a file, plain or zstd-compressed (`loadgen --records FILE.zst`; told by its first
/// bytes), and parses it. A compressed file cut short (loadgen killed) reads up to its last
/// complete line, with a warning.
fn read<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T, ReadError>) -> Result<T, InputError> {
    let file = compressed::read_text(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if file.cut_short {
        eprintln!(
            "hopprobe report: warning: {}: the compressed stream is cut short (its writer was \
             killed?); reading it up to its last complete line",
            path.display()
        );
    }
    parse(&file.text).map_err(|source| InputError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// loadgen's records file: the measured requests, the warm-up ones apart, and the `-c` it ran
/// with.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    pub requests: Vec<loadgen_records::Request>,
    /// Not reported, but they took exchange numbers on the connections they opened.
    pub warmups: Vec<loadgen_records::Request>,
    pub concurrency: Option<u32>,
}

pub fn load_requests(path: &Path) -> Result<Requests, InputError> {
    let file = read(path, loadgen_records::read)?;
    let (warmups, requests) = file.requests.into_iter().partition(|r| r.warmup);
    Ok(Requests {
        requests,
        warmups,
        concurrency: file.header.and_then(|h| h.concurrency()),
    })
}

/// The parts of an oha-style JSON report the report uses (times in seconds).
#[derive(Debug, Clone, Default)]
pub struct LoadgenSummary {
    pub requests_per_sec: Option<f64>,
    pub average_s: Option<f64>,
    pub success_rate: Option<f64>,
    /// `p50` → seconds, fastest first.
    pub percentiles: Vec<(String, f64)>,
}

pub fn load_loadgen(path: &Path) -> Result<LoadgenSummary, InputError> {
    let output = read(path, loadgen_output::read)?;
    // loadgen with several targets writes one report per target; the first is taken.
    let Some(report) = output.first() else {
        return Err(InputError::Parse {
            path: path.to_path_buf(),
            source: ReadError::Missing {
                key: "summary",
                what: "an oha/loadgen JSON report (`targets` is empty)",
            },
        });
    };
    let mut percentiles: Vec<(String, f64)> = report
        .latency_percentiles
        .iter()
        .filter_map(|(k, x)| Some((k.clone(), (*x)?)))
        .collect();
    percentiles.sort_by(|a, b| a.1.total_cmp(&b.1));
    Ok(LoadgenSummary {
        requests_per_sec: report.summary.requests_per_sec,
        average_s: report.summary.average,
        success_rate: report.summary.success_rate,
        percentiles,
    })
}

/// hopprobe's records: socket exchanges and datapath lines.
pub use records::Records as ProbeRecords;

pub fn load_probe(path: &Path) -> Result<ProbeRecords, InputError> {
    read(path, records::read)
}

/// Names and CPU from `hopprobe run --json`.
#[derive(Debug, Clone, Default)]
pub struct ProbeSummary {
    /// cgroup id → (pod, container).
    pub names: HashMap<u64, (String, String)>,
    pub cpu: Vec<CpuSeries>,
}

pub fn load_summary(path: &Path) -> Result<ProbeSummary, InputError> {
    let s = read(path, summary::read)?;
    let names = s
        .hops
        .into_iter()
        .filter(|h| h.cgroup_id != 0)
        .filter_map(|h| Some((h.cgroup_id, (h.pod?, h.container?))))
        .collect();
    Ok(ProbeSummary { names, cpu: s.cpu })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn warmup_is_left_out_and_concurrency_is_read_from_loadgen_args() {
        let (_dir, path) = file(
            "r.jsonl",
            "{\"record\":\"header\",\"args\":[\"loadgen\",\"http://x\",\"-c\",\"32\"]}\n\
             {\"seq\":0,\"warmup\":true,\"start_ns\":1,\"end_ns\":2}\n\
             {\"seq\":1,\"warmup\":false,\"start_ns\":3,\"end_ns\":4,\"status\":200}\n",
        );
        let r = load_requests(&path).expect("read");
        assert_eq!(r.concurrency, Some(32));
        assert_eq!(r.requests.len(), 1);
        assert!(r.requests[0].ok());
        assert_eq!(r.warmups.len(), 1);
    }

    #[test]
    fn errors_name_the_file_and_the_line() {
        let (_dir, path) = file("r.jsonl", "\n{\"start_ns\":1,\"end_ns\":2}\n{not json\n");
        let err = load_requests(&path).expect_err("bad line").to_string();
        assert!(
            err.starts_with(&format!("{}: line 3: ", path.display())),
            "{err}"
        );
        let (_dir, path) = file("p.jsonl", "{\"cookie\":1}\n");
        let err = load_probe(&path).expect_err("bad line").to_string();
        assert!(
            err.starts_with(&format!(
                "{}: line 1: not a hopprobe record: missing field",
                path.display()
            )),
            "{err}"
        );
        let (_dir, path) = file("l.json", "{\"targets\":{}}");
        let err = load_loadgen(&path).expect_err("no report").to_string();
        assert!(err.contains("no `summary`"), "{err}");
        let err = load_summary(Path::new("/nonexistent/s.json")).expect_err("no file");
        assert!(err.to_string().starts_with("reading /nonexistent/s.json: "));
    }

    #[test]
    fn names_come_from_named_hops() {
        let (_dir, path) = file(
            "s.json",
            r#"{"hops":[{"hop":"app","cgroup_id":1,"pod":"front-v1","container":"front"},
                {"hop":"datapath_in","cgroup_id":0,"pod":"front-v1","container":null},
                {"hop":"app","cgroup_id":2,"pod":null,"container":null}]}"#,
        );
        let s = load_summary(&path).expect("read");
        assert_eq!(
            s.names,
            HashMap::from([(1, ("front-v1".to_owned(), "front".to_owned()))])
        );
        assert!(s.cpu.is_empty());
    }
}
