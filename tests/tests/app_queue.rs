//! The `app` hop splits into queue wait and processing on every kernel: with
//! `sock:sock_recv_length` where it exists (6.12+), with syscall tracepoints elsewhere (6.1),
//! and with the syscall tracepoints on request (`--app-reads syscalls`) to compare the two —
//! also on kept-alive connections opened before hopprobe attached and on fds the server
//! dup'ed (read through `tcp:tcp_rcv_space_adjust`).

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

/// One kept-alive connection served `REQUESTS / 2` times: each request waits `QUEUE_MS` in
/// the receive queue, then the server reads it from `reader` and works `PROCESSING_MS`.
fn serve_kept_alive(mut reader: TcpStream, mut writer: TcpStream) {
    for _ in 0..REQUESTS / 2 {
        let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll");
        assert_eq!(ready, 1, "no request within 10 s");
        std::thread::sleep(Duration::from_secs_f64(QUEUE_MS / 1000.0));
        let mut req = [0u8; 3];
        reader.read_exact(&mut req).expect("read");
        std::thread::sleep(Duration::from_secs_f64(PROCESSING_MS / 1000.0));
        writer.write_all(b"ok").expect("write");
    }
}

fn ask_kept_alive(c: &mut TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for _ in 0..REQUESTS / 2 {
        c.write_all(b"req").expect("write");
        let mut reply = [0u8; 2];
        c.read_exact(&mut reply).expect("read");
        assert_eq!(&reply, b"ok");
    }
}

/// Two kept-alive connections, as a proxy keeps to its app: one opened (and used once)
/// before hopprobe attaches — the lab's first request makes these — and one opened after it
/// whose server reads through a dup'ed fd (`try_clone`, as the lab's proxies read). Both
/// were invisible to the read hooks: the first to both, the second to the syscall fallback.
fn check_kept_alive(args: &[&str], port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let mut early = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (served, _) = listener.accept().expect("accept");
    early.write_all(b"req").expect("write");
    let mut req = [0u8; 3];
    (&served).read_exact(&mut req).expect("read");
    (&served).write_all(b"ok").expect("write");
    let mut reply = [0u8; 2];
    early.read_exact(&mut reply).expect("read");
    let hooks = check_split_with(args, port, || {
        let first =
            std::thread::spawn(move || serve_kept_alive(served.try_clone().expect("dup"), served));
        ask_kept_alive(&mut early);
        drop(early);
        first.join().expect("server");
        let mut late = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (s, _) = listener.accept().expect("accept");
        let second = std::thread::spawn(move || serve_kept_alive(s.try_clone().expect("dup"), s));
        ask_kept_alive(&mut late);
        drop(late);
        second.join().expect("server");
    });
    assert!(hooks.contains("tcp:tcp_rcv_space_adjust"), "{hooks}");
}

fn check_split(args: &[&str], port: u16) -> String {
    check_split_with(args, port, || load(port))
}

/// Measures `load` and checks that the `app` hop on `port` split into queue wait and
/// processing for each of its `REQUESTS` exchanges.
fn check_split_with(args: &[&str], port: u16, load: impl FnOnce()) -> String {
    let mut full = vec!["--no-datapath"];
    full.extend_from_slice(args);
    let m = measure(&testkit::probe::binary(), &full, load);
    let s = &m.summary;
    let p50 = |h: &Value| h["p50_us"].as_f64().expect("p50") / 1000.0;
    let (queue, processing) = (hop(s, "app_queue", port), hop(s, "app_processing", port));
    eprintln!(
        "{args:?}: app {} ms = app_queue {} ms + app_processing {} ms",
        p50(hop(s, "app", port)),
        p50(queue),
        p50(processing)
    );
    assert_eq!(hop(s, "app", port)["count"], REQUESTS as u64, "{s:#}");
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

#[test]
fn kept_alive_connections_opened_before_attach_split_too() {
    if !testkit::root::available("kept_alive_connections_opened_before_attach_split_too") {
        return;
    }
    // Past the two ports of `app_time_splits_into_queue_and_processing`.
    let port = 22_002 + (std::process::id() % 20_000) as u16;
    check_kept_alive(&[], port);
    check_kept_alive(&["--app-reads", "syscalls"], port + 1);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
