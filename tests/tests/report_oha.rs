//! `hopprobe report` over results people already have: oha's text and JSON output, without
//! per-request records (distribution mode). The published oha v1.4.1 reports of a service-mesh
//! benchmark (`formats/tests/data/oha/livewyer-v3`, concurrency only in their names) and
//! oha 1.16.0's own text and JSON (`formats/tests/data/oha/oha-1.16.0`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../formats/tests/data/oha")
        .join(rel)
}

fn published(mesh: &str, c: u32) -> String {
    data(&format!("livewyer-v3/pod-{mesh}-c{c}.txt"))
        .display()
        .to_string()
}

fn report(args: &[String]) -> Output {
    Command::new(testkit::probe::binary())
        .arg("report")
        .args(args)
        .output()
        .expect("hopprobe report")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn close(v: &Value, want: f64, what: &str) {
    let got = v.as_f64().unwrap_or_else(|| panic!("{what}: {v}"));
    assert!(
        (got - want).abs() < 1e-9 * want.abs().max(1.0),
        "{what}: {got} ≠ {want}"
    );
}

const MESHES: [&str; 4] = ["baseline", "istio", "linkerd", "cilium"];

/// The published p50 (s) and requests/s at c = 32, as the files state them.
const C32: [(&str, f64, f64); 4] = [
    ("baseline", 0.2017, 157.4456),
    ("istio", 0.2641, 120.2747),
    ("linkerd", 0.2164, 146.7921),
    ("cilium", 0.2646, 119.9334),
];

#[test]
fn four_published_environments_at_c32_against_the_baseline() {
    let dir = tempfile::tempdir().expect("tmp");
    let (json, md) = (dir.path().join("r.json"), dir.path().join("r.md"));
    let mut args = Vec::new();
    for mesh in MESHES {
        args.extend(["--label".into(), mesh.into(), "--loadgen".into()]);
        args.push(published(mesh, 32));
    }
    args.extend(["--json".into(), json.display().to_string()]);
    args.extend(["--markdown".into(), md.display().to_string()]);
    let stdout = ok(&report(&args));
    // The overview: each environment's p50 and p99, throughput, Little's law ≈ c = 32.
    let row = |label: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no row {label}:\n{stdout}"))
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let istio = row("istio");
    assert_eq!(
        istio,
        [
            "istio",
            "distributions",
            "264.100",
            "-",
            "-",
            "-",
            "387.200",
            "-",
            "-",
            "-",
            "120.3",
            "31.99",
            "32"
        ],
        "{stdout}"
    );
    assert!(stdout.contains("against the baseline"), "{stdout}");
    assert!(
        stdout.contains("load generator concurrency 32: from the file name `pod-istio-c32.txt`"),
        "{stdout}"
    );
    // istio against the baseline: p50 264.1 / 201.7 = 1.31, throughput 120.27 / 157.45 = 0.76.
    let ratios = stdout
        .lines()
        .find(|l| l.starts_with("istio ") && l.contains(" baseline "))
        .unwrap_or_else(|| panic!("no ratio row:\n{stdout}"));
    let cells: Vec<&str> = ratios.split_whitespace().collect();
    assert_eq!(cells[..4], ["istio", "baseline", "32", "1.31"], "{ratios}");
    assert_eq!(cells.last(), Some(&"0.76"), "{ratios}");

    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parses");
    let envs = r["environments"].as_array().expect("environments");
    assert_eq!(envs.len(), 4);
    for (e, (mesh, p50, rps)) in envs.iter().zip(C32) {
        assert_eq!(e["label"], mesh);
        assert_eq!(e["mode"], "distributions");
        assert_eq!(e["littles_law"]["concurrency"], 32, "{mesh}");
        close(&e["littles_law"]["throughput_rps"], rps, mesh);
        let in_flight = e["littles_law"]["in_flight"].as_f64().expect("λ·W");
        assert!((in_flight - 32.0).abs() < 0.1, "{mesh}: saturated, λ·W ≈ c");
        let d = &e["distributions"];
        assert_eq!(d[0]["percentile"], "p50");
        close(&d[0]["e2e_ms"], p50 * 1e3, mesh);
        assert!(d[0]["node_ms"].is_null(), "no hopprobe records");
        let notes = e["notes"].to_string();
        assert!(notes.contains("oha's text output"), "{notes}");
        assert!(notes.contains("300000 requests"), "{notes}");
    }
    let versus = r["against_baseline"].as_array().expect("against_baseline");
    assert_eq!(versus.len(), 3);
    for (v, (mesh, p50, rps)) in versus.iter().zip(&C32[1..]) {
        assert_eq!(v["label"], *mesh);
        assert_eq!(v["baseline"], "baseline");
        assert_eq!(v["concurrency"], 32);
        assert_eq!(v["percentiles"][0]["percentile"], "p50");
        close(&v["percentiles"][0]["ratio"], p50 / C32[0].1, mesh);
        close(&v["throughput_ratio"], rps / C32[0].2, mesh);
    }
    let markdown = std::fs::read_to_string(&md).expect("md");
    assert!(
        markdown.contains("| istio | baseline | 32 | 1.31 |"),
        "{markdown}"
    );
}

/// Every concurrency at once: each mesh is compared with the baseline at its own.
#[test]
fn each_environment_is_compared_at_its_own_concurrency() {
    let mut args = Vec::new();
    for mesh in ["baseline", "istio"] {
        for c in [32, 64, 128] {
            args.extend(["--label".into(), format!("{mesh}-{c}"), "--loadgen".into()]);
            args.push(published(mesh, c));
        }
    }
    args.push("--json".into());
    let dir = tempfile::tempdir().expect("tmp");
    let json = dir.path().join("r.json");
    args.push(json.display().to_string());
    ok(&report(&args));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parses");
    let pairs: Vec<(String, String, u64)> = r["against_baseline"]
        .as_array()
        .expect("against_baseline")
        .iter()
        .map(|v| {
            (
                v["label"].as_str().expect("label").into(),
                v["baseline"].as_str().expect("baseline").into(),
                v["concurrency"].as_u64().expect("c"),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("istio-32".into(), "baseline-32".into(), 32),
            ("istio-64".into(), "baseline-64".into(), 64),
            ("istio-128".into(), "baseline-128".into(), 128),
        ]
    );
}

/// oha 1.16.0's JSON and text side by side; neither file states the concurrency nor has it
/// in its name, so it is unknown and the report says so.
#[test]
fn oha_1_16_json_and_text_with_the_concurrency_unknown() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = dir.path().join("r.json");
    let args: Vec<String> = [
        "--label",
        "json",
        "--loadgen",
        &data("oha-1.16.0/output.json").display().to_string(),
        "--label",
        "text",
        "--loadgen",
        &data("oha-1.16.0/sec.txt").display().to_string(),
        "--json",
        &json.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    ok(&report(&args));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parses");
    let envs = r["environments"].as_array().expect("environments");
    close(&envs[0]["distributions"][0]["e2e_ms"], 5.942194, "json p50");
    close(&envs[1]["distributions"][0]["e2e_ms"], 3.8, "text p50");
    for e in envs {
        assert!(e["littles_law"]["concurrency"].is_null(), "never invented");
        assert!(
            e["notes"].to_string().contains("concurrency unknown"),
            "{}",
            e["notes"]
        );
    }
    // Both unknown: the text run is compared with the JSON one.
    assert_eq!(r["against_baseline"][0]["baseline"], "json");
}

#[test]
fn cut_or_garbled_oha_text_exits_2_naming_the_file_and_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let text = std::fs::read_to_string(published("istio", 32)).expect("read");
    let cut = dir.path().join("istio-c32-cut.txt");
    // Cut short in the histogram, as a copy interrupted mid-way.
    std::fs::write(&cut, &text[..text.find("0.288 [").expect("histogram")]).expect("write");
    let garbled = dir.path().join("istio-c32-garbled.txt");
    std::fs::write(
        &garbled,
        text.replace("50.00% in 0.2641", "50.00% in 0.2641x"),
    )
    .expect("w");
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "just some notes\n").expect("write");
    for (path, says) in [
        (
            &cut,
            "line 19: the report ends here, before `Response time distribution:` (cut short?)",
        ),
        (&garbled, "line 30: `0.2641x` is not a number"),
        (&other, "no `Summary:`: not oha's text output"),
    ] {
        let out = report(&["--loadgen".into(), path.display().to_string()]);
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}: {says}", path.display())),
            "{}: {err}",
            path.display()
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
