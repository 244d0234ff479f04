//! Records join with what the server saw; the report keeps oha's layout and keys; warm-up,
//! duration and rate modes do what they say.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;

fn count_by_addr<I: IntoIterator<Item = String>>(it: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in it {
        *m.entry(a).or_insert(0) += 1;
    }
    m
}

/// `engine`: `LOADGEN_ENGINE` (None: loadgen's choice, the epoll loop for this plain-TCP run);
/// `ran`: the engine loadgen must say it ran. Returns the request records.
fn check_records_match_server(
    keepalive: bool,
    engine: Option<&str>,
    ran: &str,
) -> Vec<serde_json::Value> {
    let s = ok_server(Duration::ZERO, "hello");
    let path = temp_path(&format!("match-{keepalive}-{engine:?}.jsonl"));
    let p = path.to_str().unwrap();
    let url = s.url();
    let mut args = vec![&*url, "-n", "60", "-c", "4", "--no-tui", "--records", p];
    if !keepalive {
        args.push("--disable-keepalive");
    }
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args(&args);
    if let Some(e) = engine {
        cmd.env("LOADGEN_ENGINE", e);
    }
    cmd.env("RUST_LOG", "loadgen=debug");
    let out = cmd.output().expect("loadgen runs");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("engine=\"{ran}\"")),
        "expected the {ran} engine: {stderr}"
    );
    let recs = records(&path);
    assert_eq!(recs[0]["record"], "header");
    assert_eq!(recs[0]["clock"], "CLOCK_MONOTONIC");
    let reqs = &recs[1..];
    assert_eq!(reqs.len(), 60);
    let server: Vec<String> = s.peers().iter().map(|a| a.to_string()).collect();
    let client: Vec<String> = reqs
        .iter()
        .map(|r| r["local"].as_str().unwrap().to_owned())
        .collect();
    // Each request's local address is the peer the server saw for it; without keep-alive
    // every request has its own connection, so the match is one to one.
    assert_eq!(count_by_addr(client.clone()), count_by_addr(server));
    if !keepalive {
        assert_eq!(count_by_addr(client).len(), 60);
    }
    for r in reqs {
        assert_eq!(r["remote"], s.addr.to_string());
        assert_eq!(r["status"], 200);
        assert_eq!(r["bytes"], 5);
        let t = |k: &str| r[k].as_u64().unwrap();
        assert!(t("start_ns") <= t("written_ns"));
        assert!(t("written_ns") <= t("first_byte_ns"));
        assert!(t("first_byte_ns") <= t("end_ns"));
        if r["reused"] == false {
            assert!(t("connect_start_ns") <= t("connect_end_ns"));
            assert!(t("connect_end_ns") <= t("written_ns"));
        }
    }
    // The timestamps are CLOCK_MONOTONIC, the header's anchor is too.
    let anchor = recs[0]["monotonic_ns"].as_u64().unwrap();
    assert!(
        reqs.iter()
            .all(|r| r["start_ns"].as_u64().unwrap() >= anchor)
    );
    reqs.to_vec()
}

/// What must not depend on the engine: the fields each record has, the requests' sequence
/// numbers, statuses and sizes, how many rode a reused connection and on how many connections.
fn engine_independent(reqs: &[serde_json::Value]) -> serde_json::Value {
    let mut keys: Vec<Vec<String>> = reqs
        .iter()
        .map(|r| r.as_object().unwrap().keys().cloned().collect())
        .collect();
    keys.sort();
    keys.dedup();
    let mut seqs: Vec<u64> = reqs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    seqs.sort();
    let conns: std::collections::BTreeSet<u64> =
        reqs.iter().map(|r| r["conn"].as_u64().unwrap()).collect();
    serde_json::json!({
        "keys": keys,
        "seqs": seqs,
        "statuses": count_by_addr(reqs.iter().map(|r| r["status"].to_string())),
        "bytes": count_by_addr(reqs.iter().map(|r| r["bytes"].to_string())),
        "reused": reqs.iter().filter(|r| r["reused"] == true).count(),
        "connections": conns.len(),
    })
}

#[test]
fn record_addresses_are_the_server_peers_with_keepalive() {
    check_records_match_server(true, None, "epoll");
}

#[test]
fn record_addresses_are_the_server_peers_without_keepalive() {
    check_records_match_server(false, None, "epoll");
}

#[test]
fn the_tokio_engine_records_the_same() {
    for keepalive in [true, false] {
        let epoll = check_records_match_server(keepalive, None, "epoll");
        let tokio = check_records_match_server(keepalive, Some("tokio"), "tokio");
        assert_eq!(
            engine_independent(&epoll),
            engine_independent(&tokio),
            "keep-alive {keepalive}"
        );
    }
}

#[test]
fn published_oha_command_runs_unchanged_with_oha_sections() {
    let s = ok_server(Duration::ZERO, "hello world");
    let url = s.url();
    let out = loadgen(&[
        &url,
        "-c",
        "32",
        "-n",
        "300",
        "--disable-keepalive",
        "--disable-compression",
        "--insecure",
        "--ipv4",
        "--no-tui",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let published = include_str!("data/oha-pod-baseline-c32.txt");
    // Every line label of oha's report appears, in the same order.
    let label = |l: &str| -> Option<String> {
        let l = l.trim_start();
        if l.ends_with(':') {
            return Some(l.to_owned());
        }
        l.split_once(":\t").map(|(k, _)| k.to_owned())
    };
    let ours: Vec<String> = text.lines().filter_map(label).collect();
    let theirs: Vec<String> = published.lines().filter_map(label).collect();
    assert_eq!(ours, theirs, "\n{text}");
    assert!(text.contains("  [200] 300 responses"));
    assert!(text.contains("Success rate:\t100.00%"));
    assert_eq!(s.peers().len(), 300);
    assert!(!text.contains("Error distribution"));
}

#[test]
fn json_has_oha_keys_and_decodable_histograms() {
    let s = ok_server(Duration::ZERO, "hello");
    let v = json_of(&loadgen(&[
        &s.url(),
        "-n",
        "50",
        "-c",
        "5",
        "--no-tui",
        "--output-format",
        "json",
    ]));
    for k in [
        "successRate",
        "total",
        "slowest",
        "fastest",
        "average",
        "requestsPerSec",
        "totalData",
        "sizePerRequest",
        "sizePerSec",
    ] {
        assert!(v["summary"][k].is_number(), "summary.{k}: {}", v["summary"]);
    }
    assert_eq!(v["summary"]["totalData"], 250);
    assert_eq!(v["summary"]["sizePerRequest"], 5);
    let pct = v["latencyPercentiles"].as_object().unwrap();
    let keys: Vec<&str> = pct.keys().map(String::as_str).collect();
    for k in [
        "p10", "p25", "p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    let hist: u64 = v["responseTimeHistogram"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(hist, 50);
    for k in ["DNSDialup", "DNSLookup"] {
        for f in ["average", "fastest", "slowest"] {
            assert!(v["details"][k][f].is_number(), "details.{k}.{f}");
        }
    }
    assert_eq!(v["statusCodeDistribution"]["200"], 50);
    assert!(v["errorDistribution"].as_object().unwrap().is_empty());
    assert!(v["rps"]["mean"].is_number());
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["hdrHistograms"]["latency"].as_str().unwrap())
        .unwrap();
    let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .unwrap();
    assert_eq!(h.len(), 50);
    let slowest_ns = v["summary"]["slowest"].as_f64().unwrap() * 1e9;
    assert!((h.max() as f64 - slowest_ns).abs() <= slowest_ns * 0.002 + 1.0);
}

#[test]
fn warmup_requests_are_sent_but_not_reported() {
    let s = ok_server(Duration::ZERO, "hi");
    let path = temp_path("warmup.jsonl");
    let v = json_of(&loadgen(&[
        &s.url(),
        "-n",
        "20",
        "--warmup",
        "7",
        "-c",
        "3",
        "--no-tui",
        "-j",
        "--records",
        path.to_str().unwrap(),
    ]));
    assert_eq!(s.peers().len(), 27);
    assert_eq!(v["statusCodeDistribution"]["200"], 20);
    let recs = records(&path);
    let warm = recs[1..].iter().filter(|r| r["warmup"] == true).count();
    assert_eq!((recs.len() - 1, warm), (27, 7));
}

#[test]
fn total_ends_with_the_last_request() {
    // 10 requests of 5 ms one after another: about 50 ms, and the run's end is the last
    // worker's, not the supervisor's next look 100 ms after the start (which made a short
    // run's requests/s low in steps).
    let s = ok_server(Duration::from_millis(5), "hi");
    let v = json_of(&loadgen(&[
        &s.url(),
        "-n",
        "10",
        "-c",
        "1",
        "--no-tui",
        "-j",
    ]));
    let total = v["summary"]["total"].as_f64().expect("total");
    let slowest = v["summary"]["slowest"].as_f64().expect("slowest");
    assert!(total >= 0.05, "total {total} s for 10 requests of 5 ms");
    // Each request's own time (at most `slowest`) and little else between them.
    assert!(
        total < 10.0 * slowest + 0.03,
        "total {total} s, slowest request {slowest} s: the end waited for something else"
    );
}

#[test]
fn duration_mode_stops() {
    let s = ok_server(Duration::from_millis(5), "hi");
    let started = std::time::Instant::now();
    let v = json_of(&loadgen(&[
        &s.url(),
        "-z",
        "400ms",
        "-c",
        "2",
        "--no-tui",
        "-j",
    ]));
    assert!(started.elapsed() < Duration::from_secs(10));
    let n = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    assert!(n > 0);
    assert!(v["summary"]["total"].as_f64().unwrap() >= 0.4);
}

#[test]
fn open_model_starts_requests_on_schedule() {
    // 100 requests/s against a server that takes 100 ms: requests overlap, so the open model
    // must open several connections instead of waiting for earlier requests.
    let s = ok_server(Duration::from_millis(100), "hi");
    let path = temp_path("open.jsonl");
    let out = loadgen(&[
        &s.url(),
        "-n",
        "20",
        "-q",
        "100",
        "--open-model",
        "--no-tui",
        "-j",
        "--threads",
        "1",
        "--records",
        path.to_str().unwrap(),
    ]);
    let v = json_of(&out);
    assert_eq!(v["statusCodeDistribution"]["200"], 20);
    let recs = records(&path);
    let mut sched: Vec<u64> = recs[1..]
        .iter()
        .map(|r| r["scheduled_ns"].as_u64().unwrap())
        .collect();
    sched.sort_unstable();
    for w in sched.windows(2) {
        assert_eq!(w[1] - w[0], 10_000_000);
    }
    let conns: std::collections::BTreeSet<u64> = recs[1..]
        .iter()
        .map(|r| r["conn"].as_u64().unwrap())
        .collect();
    assert!(conns.len() >= 5, "{} connections", conns.len());
    // Latency counts from the schedule, so it is at least the server's 100 ms.
    assert!(v["summary"]["fastest"].as_f64().unwrap() >= 0.1);
}

#[test]
fn several_targets_run_side_by_side() {
    let a = ok_server(Duration::ZERO, "a");
    let b = ok_server(Duration::ZERO, "bb");
    let ta = format!("a={}", a.url());
    let tb = format!("b={}", b.url());
    let v = json_of(&loadgen(&[
        "--target", &ta, "--target", &tb, "-n", "30", "-c", "2", "--no-tui", "-j",
    ]));
    assert_eq!(v["targets"]["a"]["summary"]["totalData"], 30);
    assert_eq!(v["targets"]["b"]["summary"]["totalData"], 60);
    assert_eq!((a.peers().len(), b.peers().len()), (30, 30));
    let out = loadgen(&[
        "--target", &ta, "--target", &tb, "-n", "5", "-c", "1", "--no-tui",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Side by side:"), "{text}");
}

#[test]
fn csv_streams_one_row_per_request() {
    let s = ok_server(Duration::ZERO, "hey");
    let out = loadgen(&[
        &s.url(),
        "-n",
        "12",
        "-c",
        "2",
        "--no-tui",
        "--output-format",
        "csv",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status"
    );
    assert_eq!(lines.len(), 13);
    assert!(lines[1..].iter().all(|l| l.ends_with(",3,200")));
}
