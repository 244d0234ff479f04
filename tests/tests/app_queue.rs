//! The `app` hop splits into queue wait and processing on every kernel: with
//! `sock:sock_recv_length` where it exists (6.12+), with syscall tracepoints elsewhere (6.1),
//! and with the syscall tracepoints on request (`--app-reads syscalls`) to compare the two.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsFd,
    path::Path,
    time::Duration,
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::Value;
use testkit::{leftovers, probe::measure};

const REQUESTS: usize = 10;
/// Each connection waits this long in the accept queue, its request with it.
const QUEUE_MS: f64 = 30.0;
/// Then the server reads the request and takes this long to answer.
const PROCESSING_MS: f64 = 20.0;

fn serve(listener: TcpListener) {
    for _ in 0..REQUESTS {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll");
        assert_eq!(ready, 1, "no connection within 10 s");
        std::thread::sleep(Duration::from_secs_f64(QUEUE_MS / 1000.0));
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = [0u8; 3];
        s.read_exact(&mut req).expect("read");
        std::thread::sleep(Duration::from_secs_f64(PROCESSING_MS / 1000.0));
        s.write_all(b"ok").expect("write");
    }
}

fn load(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let server = std::thread::spawn(move || serve(listener));
    for _ in 0..REQUESTS {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.write_all(b"req").expect("write");
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).expect("read");
        assert_eq!(reply, b"ok");
    }
    server.join().expect("server");
}

fn hop<'a>(summary: &'a Value, name: &str, port: u16) -> &'a Value {
    summary["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .find(|h| h["hop"] == name && h["local_port"] == port)
        .unwrap_or_else(|| panic!("no {name} hop for port {port}:\n{summary:#}"))
}

fn check_split(args: &[&str], port: u16) -> String {
    let mut full = vec!["--no-datapath"];
    full.extend_from_slice(args);
    let m = measure(
        Path::new(env!("CARGO_BIN_EXE_hopprobe-test")),
        &full,
        || load(port),
    );
    let s = &m.summary;
    let p50 = |h: &Value| h["p50_us"].as_f64().expect("p50") / 1000.0;
    let (queue, processing) = (hop(s, "app_queue", port), hop(s, "app_processing", port));
    eprintln!(
        "{args:?}: app {} ms = app_queue {} ms + app_processing {} ms",
        p50(hop(s, "app", port)),
        p50(queue),
        p50(processing)
    );
    for (h, expected) in [(queue, QUEUE_MS), (processing, PROCESSING_MS)] {
        assert_eq!(h["count"], REQUESTS as u64, "{h:#}");
        assert!(
            p50(h) >= expected && p50(h) <= expected + 10.0,
            "expected {expected} ms: {h:#}"
        );
    }
    s["hooks"].to_string()
}

#[test]
fn app_time_splits_into_queue_and_processing() {
    if !testkit::root::available("app_time_splits_into_queue_and_processing") {
        return;
    }
    let port = 22_000 + (std::process::id() % 20_000) as u16;
    let has_recv_length = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| Path::new(t).join("events/sock/sock_recv_length").exists());
    let hooks = check_split(&[], port);
    let expected = if has_recv_length {
        "sock:sock_recv_length"
    } else {
        "syscalls:sys_exit_recvfrom"
    };
    assert!(hooks.contains(expected), "{expected} not in {hooks}");

    let hooks = check_split(&["--app-reads", "syscalls"], port + 1);
    assert!(hooks.contains("syscalls:sys_exit_recvfrom"), "{hooks}");
    assert!(!hooks.contains("sock:sock_recv_length"), "{hooks}");
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
