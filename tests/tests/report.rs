//! `hopprobe report` as a user runs it: synthetic inputs in the formats loadgen and
//! `hopprobe run` write, the HTML rendered by headless Chromium, bad input refused.

use std::{path::Path, process::Command};

use serde_json::{Value, json};

fn hopprobe() -> Command {
    Command::new(testkit::probe::binary())
}

/// Writes one environment's inputs into `dir`: `n` requests through an uplink, a front pod
/// (masqueraded) that calls a back pod once; `service_us` is the front's own service time.
fn write_env(dir: &Path, tag: &str, n: u64, service_us: u64) {
    let us = 1_000u64;
    let mut reqs = vec![
        json!({"record":"header","version":1,"clock":"CLOCK_MONOTONIC",
        "monotonic_ns":1,"realtime_unix_ns":1,"targets":[],"args":["loadgen","-c","4"]}),
    ];
    let mut probe = Vec::new();
    let pod_of = |ifx: u64| if ifx == 2 { "front-v1" } else { "back-v1" };
    let dp = |point: &str, ifx: u64, c: &str, s: &str, isn: u64, t: [u64; 3]| {
        json!({"record":"datapath","point":point,"ifindex":ifx,"interface":format!("eni{ifx}"),
            "pod":pod_of(ifx),"client":c,"server":s,"isn":isn,"index":0,"syn_ns":t[0],
            "req_first_ns":t[1],"req_last_ns":t[1],"resp_first_ns":t[2],"resp_last_ns":t[2],
            "req_bytes":80,"resp_bytes":100})
    };
    let sock = |cg: u64, role: &str, l: &str, r: &str, t: [u64; 3], read: Option<u64>| {
        json!({"cookie":1,"cgroup_id":cg,"role":role,"local":l,"remote":r,"req_first_ns":t[0],
            "req_last_ns":t[0],"resp_first_ns":t[1],"resp_last_ns":t[2],"first_read_ns":read,
            "req_bytes":80,"resp_bytes":100})
    };
    let mut e2e = Vec::new();
    for i in 0..n {
        let t0 = 5_000_000_000 + i * 30_000 * us;
        // Some queueing that grows with i, so percentiles differ.
        let queue = (i % 10) * 300 * us;
        let node_in = t0 + 1_000 * us;
        let call = node_in + 30 * us + queue + service_us * us / 2;
        let call_end = call + 2_000 * us;
        let resp = call_end + service_us * us / 2;
        let node_out = resp + 40 * us;
        let (cport, mport, kport) = (40_000 + i, 50_000 + i, 60_000 + i);
        let start = node_in - 700 * us;
        let end = node_out + 700 * us;
        e2e.push(end - start);
        reqs.push(json!({"target":"default","seq":i,"warmup":false,"conn":i,"reused":false,
            "local":format!("10.77.0.2:{cport}"),"remote":"10.77.0.1:30080","scheduled_ns":null,
            "start_ns":start,"dns_ns":0,"connect_start_ns":start,"connect_end_ns":start + 300 * us,
            "tls_end_ns":null,"tls_resumed":null,"written_ns":node_in - 350 * us,
            "first_byte_ns":node_out + 350 * us,"end_ns":end,"status":200,"bytes":100,"error":null}));
        let client = format!("10.77.0.2:{cport}");
        let masq = format!("10.78.0.1:{mport}");
        let kaddr = format!("10.78.0.10:{kport}");
        probe.push(dp(
            "node_in",
            1,
            &client,
            "10.77.0.1:30080",
            i,
            [t0, node_in, node_out],
        ));
        probe.push(dp(
            "pod_in",
            2,
            &masq,
            "10.78.0.10:9080",
            i,
            [t0, node_in + 10 * us, node_out - 10 * us],
        ));
        probe.push(sock(
            1,
            "server",
            "10.78.0.10:9080",
            &masq,
            [node_in + 20 * us, resp, resp],
            Some(node_in + 20 * us + queue),
        ));
        probe.push(sock(
            1,
            "client",
            &kaddr,
            "10.96.0.11:9080",
            [call, call_end, call_end],
            None,
        ));
        probe.push(dp(
            "pod_out",
            2,
            &kaddr,
            "10.96.0.11:9080",
            100_000 + i,
            [call, call + 10 * us, call_end - 10 * us],
        ));
        probe.push(dp(
            "pod_in",
            3,
            &kaddr,
            "10.78.0.11:9080",
            100_000 + i,
            [call, call + 20 * us, call_end - 20 * us],
        ));
        probe.push(sock(
            2,
            "server",
            "10.78.0.11:9080",
            &kaddr,
            [call + 30 * us, call_end - 30 * us, call_end - 30 * us],
            Some(call + 40 * us),
        ));
    }
    let lines = |v: &[Value]| v.iter().map(|l| l.to_string() + "\n").collect::<String>();
    std::fs::write(dir.join(format!("{tag}-requests.jsonl")), lines(&reqs)).expect("write");
    std::fs::write(dir.join(format!("{tag}-records.jsonl")), lines(&probe)).expect("write");
    e2e.sort_unstable();
    let p = |q: f64| e2e[((q * n as f64).ceil() as usize).clamp(1, n as usize) - 1] as f64 / 1e9;
    let total = (n * 30_000 * us) as f64 / 1e9;
    let loadgen = json!({"summary":{"successRate":1.0,"total":total,"requestsPerSec":n as f64 / total,
        "average":e2e.iter().sum::<u64>() as f64 / n as f64 / 1e9},
        "latencyPercentiles":{"p50":p(0.5),"p90":p(0.9),"p99":p(0.99),"p99.9":p(0.999)}});
    std::fs::write(dir.join(format!("{tag}-loadgen.json")), loadgen.to_string()).expect("write");
    let cpu = |pod: &str, c: &str, rate: u64| {
        json!({"cgroup":format!("/{pod}"),"namespace":"default","pod":pod,
        "container":c,"samples":(0..6).map(|k| (5_000_000_000u64 + k * 500_000_000, k * rate)).collect::<Vec<_>>()})
    };
    let summary = json!({"hops":[
        {"hop":"app","cgroup_id":1,"pod":"front-v1","container":"front"},
        {"hop":"app","cgroup_id":2,"pod":"back-v1","container":"back"}],
        "cpu":[cpu("front-v1","front",200_000), cpu("back-v1","back",50_000)]});
    std::fs::write(
        dir.join(format!("{tag}-hopprobe.json")),
        summary.to_string(),
    )
    .expect("write");
}

fn env_args(dir: &Path, tag: &str) -> Vec<String> {
    let f = |s: &str| dir.join(format!("{tag}-{s}")).display().to_string();
    vec![
        "--label".into(),
        tag.into(),
        "--loadgen".into(),
        f("loadgen.json"),
        "--requests".into(),
        f("requests.jsonl"),
        "--probe".into(),
        f("records.jsonl"),
        "--summary".into(),
        f("hopprobe.json"),
    ]
}

#[test]
fn report_writes_every_format_and_the_html_renders_in_chromium() {
    let dir = tempfile::tempdir().expect("tmp");
    write_env(dir.path(), "fast", 400, 2_000);
    write_env(dir.path(), "slow", 400, 6_000);
    let (html, json_out, md) = (
        dir.path().join("report.html"),
        dir.path().join("report.json"),
        dir.path().join("report.md"),
    );
    let mut args = vec!["report".to_string()];
    args.extend(env_args(dir.path(), "fast"));
    args.extend(env_args(dir.path(), "slow"));
    // The same load generator report without per-request records: the fallback.
    args.extend([
        "--label".into(),
        "oha-only".into(),
        "--loadgen".into(),
        dir.path().join("slow-loadgen.json").display().to_string(),
    ]);
    for (flag, p) in [
        ("--html", &html),
        ("--json", &json_out),
        ("--markdown", &md),
    ] {
        args.push(flag.into());
        args.push(p.display().to_string());
    }
    let out = hopprobe().args(&args).output().expect("hopprobe report");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("=== hopprobe report: fast ==="), "{stdout}");
    assert!(stdout.contains("joined 400 (100.00 %)"), "{stdout}");
    assert!(stdout.contains("front-v1 app_processing"), "{stdout}");
    assert!(stdout.contains("mode: distributions"), "{stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_out).expect("json")).expect("parses");
    let envs = report["environments"].as_array().expect("environments");
    assert_eq!(envs.len(), 3);
    // The slower service shows up in the front's processing hop, not elsewhere.
    let processing = |e: &Value| {
        let i = e["hops"]
            .as_array()
            .expect("hops")
            .iter()
            .position(|h| h == "front-v1 app_processing")
            .expect("hop");
        e["percentiles"][0]["hops_ms"][i].as_f64().expect("ms")
    };
    let (fast, slow) = (processing(&envs[0]), processing(&envs[1]));
    assert!((slow - fast - 4.0).abs() < 0.01, "fast {fast} slow {slow}");
    assert_eq!(envs[2]["mode"], "distributions");
    let markdown = std::fs::read_to_string(&md).expect("md");
    assert!(
        markdown.contains("| hop (ms) | p50 | p90 | p99 | p99.9 |"),
        "{markdown}"
    );

    let page = std::fs::read_to_string(&html).expect("html");
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("<script"),
        "the HTML must be self-contained"
    );
    let Some(browser) = testkit::browser::chromium("report_html") else {
        return;
    };
    let dom = testkit::browser::dump_dom(&browser, &html);
    assert!(dom.contains("<h1>hopprobe report</h1>"), "{dom}");
    // One table per environment, the bars (3 percentiles' worth of segments at least for
    // each of two environments), one CDF line per environment with records, the CPU lines.
    assert_eq!(dom.matches("<table>").count(), 3, "{dom}");
    assert!(dom.matches(r#"class="seg""#).count() >= 2 * 4 * 3, "{dom}");
    let cdf = &dom[dom.find(r#"class="cdf""#).expect("cdf chart")..];
    let cdf = &cdf[..cdf.find("</svg>").expect("end")];
    assert_eq!(cdf.matches("<polyline").count(), 3, "{cdf}");
    assert_eq!(
        dom.matches(r#"class="cpu""#).count(),
        2,
        "a CPU chart per environment with samples"
    );
    let png = dir.path().join("report.png");
    testkit::browser::screenshot(&browser, &html, &png);
    let bytes = std::fs::read(&png).expect("png");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "{} bytes",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("HOPPROBE_KEEP_SCREENSHOT") {
        std::fs::copy(&png, keep).expect("copy");
    }
}

#[test]
fn bad_report_arguments_exit_2_with_a_message() {
    let dir = tempfile::tempdir().expect("tmp");
    for (args, says) in [
        (vec!["report"], "no environment"),
        (
            vec!["report", "--label", "x"],
            "neither --loadgen nor --requests",
        ),
        (
            vec!["report", "--loadgen", "/nonexistent/run.json"],
            "reading /nonexistent/run.json",
        ),
        (vec!["report", "--loadgen"], "needs a value"),
        (vec!["report", "--frobnicate", "1"], "unknown argument"),
    ] {
        let out = hopprobe().args(&args).output().expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let garbage = dir.path().join("g.jsonl");
    std::fs::write(&garbage, "{not json\n").expect("write");
    let out = hopprobe()
        .args(["report", "--requests"])
        .arg(&garbage)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}
