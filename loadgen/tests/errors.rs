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

/// A listener whose accept queue is full and that never accepts: the kernel drops further SYNs,
/// so connecting hangs until --connect-timeout, for HTTP/1.1 and HTTP/2 alike.
#[test]
fn full_accept_queue_is_a_connect_timeout() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket calls on a socket this test owns, with a correctly sized address.
    let (fd, port) = unsafe {
        let fd = OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0));
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len), 0);
        assert_eq!(libc::listen(fd.as_raw_fd(), 0), 0);
        let mut len = len;
        libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &mut len);
        (fd, u16::from_be(addr.sin_port))
    };
    // Fill the queue (backlog 0 still queues one connection).
    let _queued: Vec<_> = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_millis(200),
            )
            .ok()
        })
        .collect();
    let url = format!("http://127.0.0.1:{port}/");
    for extra in [&[][..], &["--http-version", "2"]] {
        let mut args = vec![&url[..], "-n", "2", "-c", "1", "--connect-timeout", "300ms"];
        args.extend_from_slice(extra);
        let started = std::time::Instant::now();
        let e = errors_of(&args);
        assert_eq!(e, serde_json::json!({"connect timeout": 2}), "{extra:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    drop(fd);
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

/// Runs `cmd`, sends it Ctrl-C (SIGINT) 0.7 s in, and returns what it printed; it must stop
/// within 10 s of the signal.
fn interrupted(cmd: &mut std::process::Command) -> std::process::Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("loadgen starts");
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let started = std::time::Instant::now();
    let out = child.wait_with_output().expect("loadgen exits");
    assert!(started.elapsed() < Duration::from_secs(10), "stopped late");
    out
}

/// Ctrl-C stops the run, prints the partial report and exits 130 (128 + SIGINT, as a shell
/// reports a process killed by Ctrl-C), not 3, which is hopprobe's "unsupported".
#[test]
fn ctrl_c_prints_the_partial_report_and_exits_130() {
    let server = ok_server(Duration::from_millis(20), "ok");
    let url = server.url();
    let out = interrupted(
        std::process::Command::new(env!("CARGO_BIN_EXE_loadgen")).args([
            &url[..],
            "-z",
            "30s",
            "-c",
            "2",
            "--no-tui",
            "--output-format",
            "json",
        ]),
    );
    assert_eq!(
        out.status.code(),
        Some(loadgen::exit::INTERRUPTED),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(loadgen::exit::INTERRUPTED, 130);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the partial report is JSON");
    let ok = report["statusCodeDistribution"]["200"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        ok > 0,
        "the partial report counts the requests done: {report}"
    );
}

/// Ctrl-C with `--records FILE.zst`: loadgen ends the zstd stream before it exits, so the file
/// is complete (not cut short) and holds one line per request the partial report counts.
#[test]
fn ctrl_c_leaves_complete_compressed_records() {
    let server = ok_server(Duration::from_millis(5), "ok");
    let url = server.url();
    let path = temp_path("ctrl-c.jsonl.zst");
    let out = interrupted(
        std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args([
                &url[..],
                "-z",
                "30s",
                "-c",
                "4",
                "--no-tui",
                "-j",
                "--records",
            ])
            .arg(&path),
    );
    assert_eq!(
        out.status.code(),
        Some(loadgen::exit::INTERRUPTED),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let sum = |k: &str| {
        report[k]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum::<u64>())
    };
    let counted = sum("statusCodeDistribution") + sum("errorDistribution");
    assert!(counted > 0, "{report}");
    let read = hopprobe_formats::compressed::read_text(&path).expect("records");
    assert!(!read.cut_short, "the zstd stream is ended before exit");
    let records = hopprobe_formats::loadgen_records::read(&read.text).expect("every line");
    assert!(records.header.is_some());
    assert_eq!(records.requests.len() as u64, counted, "{report}");
}
