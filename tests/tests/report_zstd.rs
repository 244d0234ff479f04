//! `loadgen --records FILE.zst` read by `hopprobe report --requests`: loadgen (in-process)
//! against a local keep-alive server writes zstd-compressed records, and the report reads them
//! as it reads the plain file; a copy cut short (loadgen killed) reads up to its last complete
//! line, with a warning.

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::Path,
    process::Command,
};

use clap::Parser;
use hopprobe_formats::compressed;
use serde_json::Value;

const REQUESTS: usize = 20_000;

/// Answers every request with `200 ok`, keep-alive, one thread per connection.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if conn.write_all(answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}/")
}

/// `hopprobe report --loadgen RUN --requests REQS --json OUT`: the environment's JSON and
/// what it printed on stderr.
fn report(dir: &Path, run: &Path, requests: &Path) -> (Value, String) {
    let out = dir.join("report.json");
    let o = Command::new(testkit::probe::binary())
        .arg("report")
        .arg("--loadgen")
        .arg(run)
        .arg("--requests")
        .arg(requests)
        .arg("--json")
        .arg(&out)
        .output()
        .expect("hopprobe report runs");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{:?}: {stderr}", o.status);
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report.json")).expect("JSON");
    (v["environments"][0].clone(), stderr)
}

#[test]
fn the_report_reads_compressed_records_as_plain_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let (zst, run) = (
        dir.path().join("requests.jsonl.zst"),
        dir.path().join("loadgen.json"),
    );
    let url = serve();
    let opts = loadgen::cli::Opts::try_parse_from([
        "loadgen",
        &url,
        "-c",
        "4",
        "-n",
        &REQUESTS.to_string(),
        "--threads",
        "1",
        "--no-tui",
        "--output-format",
        "json",
        "-o",
        run.to_str().expect("utf-8"),
        "--records",
        zst.to_str().expect("utf-8"),
    ])
    .expect("loadgen flags");
    assert_eq!(loadgen::app::run(&opts).expect("loadgen runs"), 0);

    let raw = std::fs::read(&zst).expect("records");
    let text = compressed::read_text(&zst).expect("decompressed").text;
    assert!(
        raw.len() * 5 < text.len(),
        "{} bytes compressed, {} plain",
        raw.len(),
        text.len()
    );
    let plain = dir.path().join("requests.jsonl");
    std::fs::write(&plain, &text).expect("write");

    let (from_zst, warned) = report(dir.path(), &run, &zst);
    assert_eq!(from_zst["requests"], REQUESTS, "{from_zst}");
    assert!(warned.is_empty(), "{warned}");
    let (from_plain, _) = report(dir.path(), &run, &plain);
    assert_eq!(from_zst, from_plain);

    // loadgen killed: the stream ends inside the frame.
    let cut = dir.path().join("cut.jsonl.zst");
    std::fs::write(&cut, &raw[..raw.len() / 2]).expect("write");
    let (from_cut, warned) = report(dir.path(), &run, &cut);
    let n = from_cut["requests"].as_u64().expect("requests");
    assert!(n > 0 && n < REQUESTS as u64, "{n} requests read");
    assert!(warned.contains("cut short"), "{warned}");
}
