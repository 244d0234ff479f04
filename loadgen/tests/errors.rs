//! Each failure is counted under its own name against a local server that misbehaves that
//! way, and the run still completes (exit 0) without hanging.

mod common;

use std::{io::Write, time::Duration};

use common::*;

fn errors_of(args: &[&str]) -> serde_json::Value {
    let mut full = args.to_vec();
    full.extend_from_slice(&["--no-tui", "--output-format", "json"]);
    let v = json_of(&loadgen(&full));
    v["errorDistribution"].clone()
}

#[test]
fn refused_connections() {
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let e = errors_of(&[&url, "-n", "5", "-c", "2"]);
    assert_eq!(e, serde_json::json!({"connection refused": 5}));
}

#[test]
fn reset_by_the_server() {
    let s = serve(|mut s, peer, log| {
        if read_head(&mut s) {
            log.lock().unwrap().push(peer);
            reset(s);
        }
    });
    let e = errors_of(&[&s.url(), "-n", "4", "-c", "2"]);
    assert_eq!(e, serde_json::json!({"connection reset": 4}));
}

#[test]
fn server_that_never_answers_times_out() {
    let s = serve(|mut s, _, _| {
        read_head(&mut s);
        std::thread::sleep(Duration::from_secs(20));
    });
    let started = std::time::Instant::now();
    let e = errors_of(&[&s.url(), "-n", "3", "-c", "3", "-t", "300ms"]);
    assert_eq!(e, serde_json::json!({"timeout: server never answered": 3}));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn response_that_stalls_midway_times_out() {
    let s = serve(|mut s, _, _| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab");
        std::thread::sleep(Duration::from_secs(20));
    });
    let e = errors_of(&[&s.url(), "-n", "2", "-c", "2", "-t", "300ms"]);
    assert_eq!(e, serde_json::json!({"timeout: response incomplete": 2}));
}

#[test]
fn malformed_status_line() {
    let s = raw_server(b"HTPP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let e = errors_of(&[&s.url(), "-n", "3", "-c", "1"]);
    assert_eq!(e, serde_json::json!({"malformed response": 3}));
}

#[test]
fn truncated_body() {
    let s = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
    let e = errors_of(&[&s.url(), "-n", "3", "-c", "1"]);
    assert_eq!(e, serde_json::json!({"truncated response": 3}));
}

#[test]
fn closed_without_a_response() {
    let s = raw_server(b"");
    let e = errors_of(&[&s.url(), "-n", "2", "-c", "1"]);
    assert_eq!(
        e,
        serde_json::json!({"connection closed before response": 2})
    );
}

#[test]
fn no_address_of_the_requested_family() {
    // A literal address keeps the lookup off the network; the family filter still fails it.
    let e = errors_of(&["http://127.0.0.1:1/", "--ipv6", "-n", "2", "-c", "1"]);
    assert_eq!(e, serde_json::json!({"dns lookup failed": 2}));
}

#[test]
fn invalid_input_exits_2_before_sending() {
    let s = ok_server(Duration::ZERO, "ok");
    for args in [
        vec!["not a url"],
        vec!["ftp://127.0.0.1/"],
        vec![&s.url(), "-n", "many"],
        vec![&s.url(), "--http-version", "3"],
        vec![&s.url(), "-p", "4"],
        vec![&s.url(), "-H", "bad header"],
        vec![&s.url(), "--records", "/nonexistent-dir/x.jsonl"],
    ] {
        let out = loadgen(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} says nothing");
    }
    assert!(s.peers().is_empty(), "a request was sent");
}

#[test]
fn errors_and_successes_mix_in_one_report() {
    // Every other connection is reset: the rest succeed and the success rate says so.
    let s = serve(|mut s, peer, log| {
        if !read_head(&mut s) {
            return;
        }
        let n = {
            let mut l = log.lock().unwrap();
            l.push(peer);
            l.len()
        };
        if n % 2 == 0 {
            reset(s);
        } else {
            let _ = s.write_all(b"HTTP/1.1 503 No\r\nContent-Length: 2\r\n\r\nno");
        }
    });
    let out = loadgen(&[
        &s.url(),
        "-n",
        "10",
        "-c",
        "1",
        "--disable-keepalive",
        "--no-tui",
        "-j",
    ]);
    let v = json_of(&out);
    assert_eq!(v["summary"]["successRate"], 0.5);
    assert_eq!(v["statusCodeDistribution"]["503"], 5);
    assert_eq!(v["errorDistribution"]["connection reset"], 5);
}
