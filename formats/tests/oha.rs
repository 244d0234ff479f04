//! oha's own output, as `hopprobe report --loadgen` reads it: the 12 published oha v1.4.1 text
//! reports of `tests/data/oha/livewyer-v3` and the text and JSON oha 1.16.0 wrote here
//! (`tests/data/oha/README.md` says where each comes from).

use std::{collections::BTreeMap, path::PathBuf};

use hopprobe_formats::{loadgen_output, oha_text, testing::golden_dir};

fn dir(name: &str) -> PathBuf {
    golden_dir().join("oha").join(name)
}

fn text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn published() -> Vec<(String, oha_text::OhaText)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir("livewyer-v3"))
        .expect("livewyer-v3")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let r = oha_text::read(&text(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, r)
        })
        .collect()
}

#[test]
fn every_published_file_reads() {
    let all = published();
    assert_eq!(all.len(), 12);
    for (name, r) in &all {
        assert!(oha_text::looks_like(&text(&dir("livewyer-v3").join(name))));
        assert_eq!(r.success_rate, Some(1.0), "{name}");
        assert_eq!(r.units, ["secs"], "{name}");
        assert_eq!(r.percentiles.len(), 9, "{name}");
        // 300 000 requests each, the percentiles in order, the mean between the extremes.
        assert_eq!(r.total_requests(), 300_000, "{name}");
        let p: Vec<f64> = r
            .percentiles
            .iter()
            .map(|(_, s)| s.expect("value"))
            .collect();
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{name}: {p:?}");
        let (lo, avg, hi) = (
            r.fastest_s.expect("fastest"),
            r.average_s.expect("average"),
            r.slowest_s.expect("slowest"),
        );
        assert!(lo <= avg && avg <= hi, "{name}");
        // Requests/sec is the requests over Total (to its 4 decimals).
        let rps = r.requests_per_sec.expect("req/s");
        let total = r.total_s.expect("total");
        assert!(
            (rps - 300_000.0 / total).abs() < 1e-3,
            "{name}: {rps} vs {total}"
        );
    }
}

#[test]
fn published_values_are_the_files() {
    let all: BTreeMap<String, oha_text::OhaText> = published().into_iter().collect();
    let istio = &all["pod-istio-c32.txt"];
    assert_eq!(istio.requests_per_sec, Some(120.2747));
    assert_eq!(istio.average_s, Some(0.2660));
    assert_eq!(istio.total_s, Some(2494.2895));
    assert_eq!(istio.slowest_s, Some(0.5338));
    assert_eq!(istio.fastest_s, Some(0.0418));
    assert_eq!(istio.status_codes, BTreeMap::from([(200, 300_000)]));
    assert!(istio.errors.is_empty());
    let p = istio.latency_percentiles();
    let want = [
        ("p10", 0.2078),
        ("p25", 0.2342),
        ("p50", 0.2641),
        ("p75", 0.2956),
        ("p90", 0.3267),
        ("p95", 0.3470),
        ("p99", 0.3872),
        ("p99.9", 0.4350),
        ("p99.99", 0.4784),
    ];
    assert_eq!(p.len(), want.len());
    for (k, v) in want {
        assert_eq!(p[k], Some(v), "{k}");
    }
    let baseline = &all["pod-baseline-c32.txt"];
    assert_eq!(baseline.latency_percentiles()["p50"], Some(0.2017));
    assert_eq!(baseline.requests_per_sec, Some(157.4456));
    // The one file with an error: 299 999 responses and a connection error, still 100.00 %.
    let cilium = &all["pod-cilium-c64.txt"];
    assert_eq!(cilium.status_codes, BTreeMap::from([(200, 299_999)]));
    assert_eq!(
        cilium.errors,
        BTreeMap::from([("connection error".to_owned(), 1)])
    );
    assert_eq!(cilium.success_rate, Some(1.0));
}

#[test]
fn oha_1_16_text_reads_in_every_unit() {
    let read = |name: &str| {
        let p = dir("oha-1.16.0").join(name);
        oha_text::read(&text(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let sec = read("sec.txt");
    assert_eq!(sec.units, ["sec"]);
    assert_eq!(sec.total_requests(), 2_000);
    assert_eq!(sec.latency_percentiles()["p50"], Some(0.0038));
    assert_eq!(sec.requests_per_sec, Some(852.8439));

    let ms = read("ms.txt");
    assert_eq!(ms.units, ["ms"]);
    assert_eq!(ms.status_codes, BTreeMap::from([(200, 300)]));
    let close = |a: Option<f64>, b: f64| (a.expect("value") - b).abs() < 1e-12;
    assert!(close(ms.average_s, 1.0231e-3));
    assert!(close(ms.latency_percentiles()["p99.9"], 4.6870e-3));

    // The `(2xx only)` and `(4xx + 5xx only)` sections are not the distribution read.
    let breakdown = read("stats-success-breakdown.txt");
    assert_eq!(breakdown.percentiles.len(), 9);
    assert!(close(breakdown.latency_percentiles()["p50"], 1.1235e-3));

    let refused = read("refused.txt");
    assert_eq!(refused.success_rate, Some(0.0));
    assert_eq!(refused.units, ["ns"]);
    assert_eq!(refused.average_s, None);
    assert_eq!(refused.slowest_s, None, "-inf");
    assert!(refused.percentiles.iter().all(|(_, s)| s.is_none()));
    assert!(refused.status_codes.is_empty());
    assert_eq!(refused.total_requests(), 50);
    assert_eq!(
        refused.errors,
        BTreeMap::from([("Connection refused (os error 111)".to_owned(), 50)])
    );
}

/// loadgen's JSON reader takes oha 1.16's JSON as it is (`metrics`, `firstByte*`, `rps.min`,
/// `details.firstByte`, and `null` for every number of a run without a response).
#[test]
fn oha_1_16_json_reads() {
    let out = loadgen_output::read(&text(&dir("oha-1.16.0").join("output.json"))).expect("json");
    let r = out.first().expect("report");
    assert_eq!(r.summary.success_rate, Some(1.0));
    assert_eq!(r.summary.requests_per_sec, Some(648.6714841990718));
    assert_eq!(r.latency_percentiles["p50"], Some(0.005942194));
    assert_eq!(r.latency_percentiles.len(), 9);
    assert_eq!(r.status_code_distribution["200"], 2_000);
    assert_eq!(
        r.metrics.as_ref().and_then(|m| m.latency_ms.p50),
        Some(5.942)
    );
    assert_eq!(
        r.details.first_byte.as_ref().map(|t| t.slowest),
        Some(Some(1.047073212))
    );
    assert_eq!(r.summary.size_per_request, Some(15));

    let out =
        loadgen_output::read(&text(&dir("oha-1.16.0").join("refused.json"))).expect("refused");
    let r = out.first().expect("report");
    assert_eq!(r.summary.success_rate, Some(0.0));
    assert_eq!(r.summary.average, None);
    assert!(r.latency_percentiles.values().all(Option::is_none));
    assert_eq!(
        r.error_distribution["Connection refused (os error 111)"],
        50
    );
}
