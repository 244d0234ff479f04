//! hopprobe counts every TCP handshake and connection lifetime between two network namespaces.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use probe_common::hist::{bucket, bucket_middle};
use serde_json::Value;
use testkit::{leftovers, netns::Link, probe::measure};

const CONNECTIONS: usize = 20;
const REFUSED: usize = 3;
/// The server leaves each connection this long in its accept queue.
const ACCEPT_DELAY: Duration = Duration::from_millis(30);

fn serve(listener: TcpListener, n: usize) {
    for _ in 0..n {
        // Wait for an established connection to be queued, then delay accepting it.
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll");
        assert_eq!(ready, 1, "no connection within 10 s");
        std::thread::sleep(ACCEPT_DELAY);
        let (mut s, _) = listener.accept().expect("accept");
        s.write_all(b"ok").expect("write");
    }
}

/// The cgroup v2 id (directory inode) of this process.
fn own_cgroup_id() -> u64 {
    let root = probe_user::names::cgroup::v2_mount().expect("cgroup v2 mounted");
    let rel = std::fs::read_to_string("/proc/self/cgroup")
        .expect("read /proc/self/cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .expect("a cgroup v2 line");
    let dir = root.join(rel.trim_start_matches('/'));
    std::fs::metadata(dir).expect("stat cgroup").ino()
}

fn series<'a>(summary: &'a Value, metric: &str, direction: &str, port: u16) -> Vec<&'a Value> {
    let port_field = if direction == "active" {
        "remote_port"
    } else {
        "local_port"
    };
    summary["series"]
        .as_array()
        .expect("series array")
        .iter()
        .filter(|s| {
            s["metric"] == metric && s["direction"] == direction && s[port_field] == u64::from(port)
        })
        .collect()
}

/// What the summary reports as the least value of a series whose least value is `us`: the
/// kernel counts lifetimes in µs into log-linear buckets (1/32 of a power of two wide) and
/// hopprobe reports a bucket by its middle, so a lifetime just past `us` can read up to half
/// a bucket below it (30 000 µs as 29 952).
fn reported_us(us: u64) -> f64 {
    bucket_middle(bucket(us)) as f64
}

fn count(series: &[&Value]) -> u64 {
    series
        .iter()
        .map(|s| s["count"].as_u64().expect("count"))
        .sum()
}

#[test]
fn counts_every_handshake_and_lifetime_across_a_veth_pair() {
    if !testkit::root::available("counts_every_handshake_and_lifetime_across_a_veth_pair") {
        return;
    }
    let link = Link::new().expect("create namespaces");
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let refused_port = port + 1;
    let started = Instant::now();
    let measured = measure(&testkit::probe::binary(), &["--interval", "1s"], || {
        let server_addr = SocketAddr::new(link.right_addr.into(), port);
        let listener = link
            .right
            .run(|| TcpListener::bind(server_addr))
            .expect("enter server namespace")
            .expect("bind");
        let server = std::thread::spawn(move || serve(listener, CONNECTIONS));
        link.left
            .run(|| {
                for _ in 0..CONNECTIONS {
                    let mut s = TcpStream::connect_timeout(&server_addr, Duration::from_secs(5))
                        .expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .expect("timeout");
                    let mut reply = Vec::new();
                    s.read_to_end(&mut reply).expect("read");
                    assert_eq!(reply, b"ok");
                }
                let refused = SocketAddr::new(link.right_addr.into(), refused_port);
                for _ in 0..REFUSED {
                    let err = TcpStream::connect_timeout(&refused, Duration::from_secs(5))
                        .expect_err("nobody listens there");
                    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
                }
            })
            .expect("enter client namespace");
        server.join().expect("server thread");
    });
    let elapsed_us = started.elapsed().as_micros() as f64;
    let summary = &measured.summary;
    let context = format!("summary:\n{summary:#}\nstderr:\n{}", measured.stderr);
    assert_eq!(summary["stopped_by"], "SIGINT", "{context}");
    assert_eq!(summary["counters"]["sock_hist_failed"], 0, "{context}");

    let n = CONNECTIONS as u64;
    let active_hs = series(summary, "handshake", "active", port);
    let passive_hs = series(summary, "handshake", "passive", port);
    assert_eq!(count(&active_hs), n, "active handshakes; {context}");
    assert_eq!(count(&passive_hs), n, "passive handshakes; {context}");
    // Every passive handshake was timed from its SYN, which the cgroup_skb hook stamped.
    for s in &passive_hs {
        assert!(s.get("timed_from_syn_recv").is_none(), "{context}");
    }
    let delay_us = reported_us(ACCEPT_DELAY.as_micros() as u64);
    for direction in ["active", "passive"] {
        let lifetimes = series(summary, "lifetime", direction, port);
        assert_eq!(count(&lifetimes), n, "{direction} lifetimes; {context}");
        for s in &lifetimes {
            let min = s["min_us"].as_f64().expect("min");
            assert!(
                min >= delay_us,
                "{direction} lifetime {min} µs < {delay_us}; {context}"
            );
            // Counted in microseconds by the kernel: a wrong unit would be off by 1000.
            let max = s["max_us"].as_f64().expect("max");
            assert!(
                max < elapsed_us,
                "{direction} lifetime {max} µs > the run's {elapsed_us} µs; {context}"
            );
        }
    }
    assert_eq!(
        count(&series(summary, "failed_connect", "active", refused_port)),
        REFUSED as u64,
        "refused connects; {context}"
    );

    // Each refused connect received a reset, counted for the connecting socket's cgroup.
    let resets: u64 = summary["tcp_events"]
        .as_array()
        .expect("tcp_events")
        .iter()
        .filter(|e| e["cgroup_id"] == own_cgroup_id())
        .map(|e| e["resets_received"].as_u64().expect("count"))
        .sum();
    assert!(
        resets >= REFUSED as u64,
        "resets received {resets}; {context}"
    );

    // Both sides belong to this test process, whose cgroup the probe must have found.
    let cgroup = own_cgroup_id();
    for s in active_hs.iter().chain(&passive_hs) {
        assert_eq!(s["cgroup_id"], cgroup, "cgroup attribution; {context}");
    }

    drop(link);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

#[test]
fn a_dual_stack_listener_taking_ipv4_clients_is_timed_from_the_syn() {
    if !testkit::root::available("a_dual_stack_listener_taking_ipv4_clients_is_timed_from_the_syn")
    {
        return;
    }
    let link = Link::new().expect("create namespaces");
    let port = 20_000 + (std::process::id() % 20_000) as u16 + 2;
    let measured = measure(&testkit::probe::binary(), &[], || {
        // `[::]` as nginx and Go servers bind by default: IPv4 clients reach a v6 socket.
        let listener = link
            .right
            .run(|| TcpListener::bind(SocketAddr::from(([0u16; 8], port))))
            .expect("enter server namespace")
            .expect("bind [::]");
        let server = std::thread::spawn(move || serve(listener, 5));
        let server_addr = SocketAddr::new(link.right_addr.into(), port);
        link.left
            .run(|| {
                for _ in 0..5 {
                    let mut s = TcpStream::connect_timeout(&server_addr, Duration::from_secs(5))
                        .expect("connect");
                    let _ = s.read_to_end(&mut Vec::new());
                }
            })
            .expect("enter client namespace");
        server.join().expect("server thread");
    });
    let passive = series(&measured.summary, "handshake", "passive", port);
    assert_eq!(count(&passive), 5, "{:#}", measured.summary);
    for s in &passive {
        assert!(
            s.get("timed_from_syn_recv").is_none(),
            "timed from SYN_RECV: {:#}",
            measured.summary
        );
    }
}
