//! What a real run writes is what `hopprobe-formats` defines: the records file (header from
//! the command line, requests, warm-up, failures) and the JSON output, one target and several,
//! are valid against the schemas in `formats/schemas` and read back by the shared readers into
//! the same bytes.

mod common;

use std::time::Duration;

use common::*;
use hopprobe_formats::{
    compressed, loadgen_output, loadgen_records, testing::Schema, to_pretty, write_line,
};
use serde_json::Value;

fn assert_valid(name: &str, v: &Value) {
    Schema::load(name).assert_valid(v);
}

/// Records text whose every line is valid against the schema and writes back to the same
/// bytes, read by the shared reader.
fn valid_records(text: &str) -> loadgen_records::Records {
    let schema = Schema::load("loadgen-records.schema.json");
    let mut again = Vec::new();
    for line in text.lines() {
        schema.assert_valid(&serde_json::from_str::<Value>(line).expect("JSON line"));
        write_line(
            &mut again,
            &loadgen_records::parse_line(line).expect("a line"),
        )
        .expect("write");
    }
    assert_eq!(String::from_utf8(again).expect("utf-8"), text);
    loadgen_records::read(text).expect("read")
}

#[test]
fn records_and_json_of_a_run_follow_the_schemas() {
    let s = ok_server(Duration::ZERO, "hello");
    let path = temp_path("schemas.jsonl");
    let out = loadgen(&[
        &s.url(),
        "-n",
        "20",
        "-c",
        "3",
        "--warmup",
        "2",
        "--no-tui",
        "-j",
        "--records",
        path.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8");
    assert_valid("loadgen-output.schema.json", &json_of(&out));
    let read = loadgen_output::read(&stdout).expect("read");
    assert_eq!(to_pretty(&read).expect("json"), stdout);

    let text = std::fs::read_to_string(&path).expect("records");
    let read = valid_records(&text);
    assert_eq!(read.header.and_then(|h| h.concurrency()), Some(3));
    assert_eq!(read.requests.iter().filter(|r| r.warmup).count(), 2);
}

#[test]
fn several_targets_and_failures_follow_the_schemas() {
    let s = ok_server(Duration::ZERO, "hello");
    let down = format!("down=http://127.0.0.1:{}/", closed_port());
    let up = format!("up={}", s.url());
    let path = temp_path("schemas-targets.jsonl");
    let out = loadgen(&[
        "--target",
        &up,
        "--target",
        &down,
        "-n",
        "6",
        "-c",
        "1",
        "--no-tui",
        "-j",
        "--records",
        path.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8");
    let v = json_of(&out);
    assert_valid("loadgen-output.schema.json", &v);
    assert!(
        v["targets"]["down"]["errorDistribution"]
            .as_object()
            .is_some_and(|e| !e.is_empty())
    );
    let read = loadgen_output::read(&stdout).expect("read");
    assert_eq!(to_pretty(&read).expect("json"), stdout);
    let text = std::fs::read_to_string(&path).expect("records");
    for line in text.lines() {
        assert_valid(
            "loadgen-records.schema.json",
            &serde_json::from_str(line).expect("JSON line"),
        );
    }
    let read = loadgen_records::read(&text).expect("read");
    assert!(read.requests.iter().any(|r| r.error.is_some()));
}

/// `--records FILE.zst`: the file is zstd (its first bytes say so), several times smaller than
/// the same run's plain records, and decompressed by the shared reader it is lines valid against
/// the schema that read back into the same bytes.
#[test]
fn compressed_records_follow_the_schema() {
    let s = ok_server(Duration::ZERO, "hello");
    let mut sizes = Vec::new();
    for name in ["schemas-zst.jsonl", "schemas-zst.jsonl.zst"] {
        let path = temp_path(name);
        let out = loadgen(&[
            &s.url(),
            "-n",
            "2000",
            "-c",
            "4",
            "--warmup",
            "10",
            "--no-tui",
            "-j",
            "--records",
            path.to_str().expect("utf-8 path"),
        ]);
        json_of(&out);
        let raw = std::fs::read(&path).expect("records");
        assert_eq!(
            raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
            name.ends_with(".zst")
        );
        sizes.push(raw.len());
        let read = compressed::read_text(&path).expect("read");
        assert!(!read.cut_short);
        let read = valid_records(&read.text);
        assert_eq!(read.requests.len(), 2010, "{name}");
        assert_eq!(read.header.and_then(|h| h.concurrency()), Some(4));
    }
    assert!(sizes[1] * 5 < sizes[0], "plain, zstd: {sizes:?}");
}
