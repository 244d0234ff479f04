//! What `hopprobe report` reads: loadgen's (or oha's) JSON report, loadgen's per-request
//! records, hopprobe's records (socket exchanges and datapath lines) and, optionally, the
//! summary of `hopprobe run --json` (names of cgroups, CPU samples). Each file's format and
//! reader is in `hopprobe_formats`, shared with its writer; this adds the file's name to its
//! errors and keeps what the report uses.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use hopprobe_formats::{
    ReadError, compressed, loadgen_output, loadgen_records, oha_text, records, summary,
};

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

/// The parts of a load generator's report the report uses (times in seconds): loadgen's or
/// oha's JSON (`-o FILE --output-format json`), or oha's text output (what `oha URL` prints).
#[derive(Debug, Clone, Default)]
pub struct LoadgenSummary {
    pub requests_per_sec: Option<f64>,
    pub average_s: Option<f64>,
    pub success_rate: Option<f64>,
    /// `p50` → seconds, fastest first.
    pub percentiles: Vec<(String, f64)>,
    /// [`JSON`] or [`OHA_TEXT`].
    pub format: &'static str,
    /// Requests made (responses and errors), when the file says.
    pub requests: Option<u64>,
    /// The load generator's `-c`: from the file when its format states it (neither does
    /// today), else from a `c<N>` token of the file's name (`pod-istio-c32.txt`).
    pub concurrency: Option<u32>,
    /// Where `concurrency` came from (`the file name \`pod-istio-c32.txt\``).
    pub concurrency_from: Option<String>,
}

/// [`LoadgenSummary::format`] of a JSON report.
pub const JSON: &str = "oha/loadgen JSON";
/// [`LoadgenSummary::format`] of oha's text output.
pub const OHA_TEXT: &str = "oha text";

/// Reads `--loadgen`: JSON or oha's text output, told by the content (JSON starts with `{`,
/// oha's text has a `Summary:` line), not by the name.
pub fn load_loadgen(path: &Path) -> Result<LoadgenSummary, InputError> {
    let mut summary = read(path, parse_loadgen)?;
    if summary.concurrency.is_none() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(c) = concurrency_from_name(&name) {
            summary.concurrency = Some(c);
            summary.concurrency_from = Some(format!("the file name `{name}`"));
        }
    }
    Ok(summary)
}

/// The concurrency a file's name states: its one `c<N>` token (`pod-istio-c32.txt`,
/// `run_c64.json`, `-c128`), tokens split at anything but letters and digits. None when there
/// is no such token or several that disagree.
pub fn concurrency_from_name(name: &str) -> Option<u32> {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    let mut found = None;
    for token in stem.split(|c: char| !c.is_ascii_alphanumeric()) {
        let Some(digits) = token.strip_prefix(['c', 'C']) else {
            continue;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let c: u32 = digits.parse().ok().filter(|&c| c > 0)?;
        if found.is_some_and(|f| f != c) {
            return None;
        }
        found = Some(c);
    }
    found
}

fn parse_loadgen(text: &str) -> Result<LoadgenSummary, ReadError> {
    let text = text.trim_start_matches('\u{feff}');
    if !text.trim_start().starts_with('{') {
        if oha_text::looks_like(text) {
            return oha_text::read(text).map(|t| from_oha_text(&t));
        }
        return Err(ReadError::Missing {
            key: "Summary:",
            what: "oha's text output (nor a JSON report: it does not start with `{`)",
        });
    }
    let output = loadgen_output::read(text)?;
    // loadgen with several targets writes one report per target; the first is taken.
    let Some(report) = output.first() else {
        return Err(ReadError::Missing {
            key: "summary",
            what: "an oha/loadgen JSON report (`targets` is empty)",
        });
    };
    let mut percentiles: Vec<(String, f64)> = report
        .latency_percentiles
        .iter()
        .filter_map(|(k, x)| Some((k.clone(), (*x)?)))
        .collect();
    percentiles.sort_by(|a, b| a.1.total_cmp(&b.1));
    let responses: u64 = report.status_code_distribution.values().sum();
    let errors: u64 = report.error_distribution.values().sum();
    Ok(LoadgenSummary {
        requests_per_sec: report.summary.requests_per_sec,
        average_s: report.summary.average,
        success_rate: report.summary.success_rate,
        percentiles,
        format: JSON,
        requests: Some(responses + errors).filter(|&n| n > 0),
        ..Default::default()
    })
}

fn from_oha_text(t: &oha_text::OhaText) -> LoadgenSummary {
    let mut percentiles: Vec<(String, f64)> = t
        .latency_percentiles()
        .into_iter()
        .filter_map(|(k, x)| Some((k, x?)))
        .collect();
    percentiles.sort_by(|a, b| a.1.total_cmp(&b.1));
    LoadgenSummary {
        requests_per_sec: t.requests_per_sec,
        average_s: t.average_s,
        success_rate: t.success_rate,
        percentiles,
        format: OHA_TEXT,
        requests: Some(t.total_requests()),
        ..Default::default()
    }
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

    fn published(name: &str) -> PathBuf {
        hopprobe_formats::testing::golden_dir()
            .join("oha/livewyer-v3")
            .join(name)
    }

    #[test]
    fn oha_text_is_told_from_json_by_its_content() {
        let lg = load_loadgen(&published("pod-istio-c32.txt")).expect("oha text");
        assert_eq!(lg.format, OHA_TEXT);
        assert_eq!(lg.requests_per_sec, Some(120.2747));
        assert_eq!(lg.average_s, Some(0.2660));
        assert_eq!(lg.success_rate, Some(1.0));
        assert_eq!(lg.requests, Some(300_000));
        let p50 = lg.percentiles.iter().find(|(k, _)| k == "p50");
        assert_eq!(p50, Some(&("p50".to_owned(), 0.2641)));
        assert_eq!(lg.percentiles.first().map(|p| p.0.as_str()), Some("p10"));
        assert_eq!(lg.percentiles.last().map(|p| p.0.as_str()), Some("p99.99"));
        assert_eq!(lg.concurrency, Some(32));
        assert_eq!(
            lg.concurrency_from.as_deref(),
            Some("the file name `pod-istio-c32.txt`")
        );
        // The same text under a JSON name, and JSON under a text name.
        let text = std::fs::read_to_string(published("pod-istio-c32.txt")).expect("read");
        let (_dir, path) = file("run.json", &text);
        let lg = load_loadgen(&path).expect("text named .json");
        assert_eq!((lg.format, lg.concurrency), (OHA_TEXT, None));
        let json = hopprobe_formats::testing::golden_dir().join("oha/oha-1.16.0/output.json");
        let (_dir, path) = file("oha-c8.txt", &std::fs::read_to_string(json).expect("read"));
        let lg = load_loadgen(&path).expect("json named .txt");
        assert_eq!(lg.format, JSON);
        assert_eq!(lg.requests, Some(2_000));
        assert_eq!(lg.concurrency, Some(8));
    }

    #[test]
    fn damaged_oha_text_names_the_file_and_the_line() {
        let text = std::fs::read_to_string(published("pod-baseline-c32.txt")).expect("read");
        let cut = &text[..text.find("  90.00% in").expect("p90") + 8];
        let (_dir, path) = file("cut-c32.txt", cut);
        let err = load_loadgen(&path).expect_err("cut").to_string();
        assert_eq!(
            err,
            format!("{}: line 32: `90.00%` is not `P% in TIME`", path.display())
        );
        let (_dir, path) = file("x.txt", "Started at noon\nnothing here\n");
        let err = load_loadgen(&path).expect_err("not oha").to_string();
        assert!(
            err.starts_with(&format!(
                "{}: no `Summary:`: not oha's text",
                path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn concurrency_comes_from_one_c_token_of_the_name() {
        for (name, c) in [
            ("pod-istio-c32.txt", Some(32)),
            ("run_c64.json", Some(64)),
            ("oha -c128 out.txt", Some(128)),
            ("C16.txt", Some(16)),
            ("c32-again-c32.txt", Some(32)),
            ("c32-c64.txt", None),
            ("pod-istio.txt", None),
            ("cilium-32.txt", None),
            ("c0.txt", None),
            ("calico.txt", None),
            ("run.c32", None),
        ] {
            assert_eq!(concurrency_from_name(name), c, "{name}");
        }
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
