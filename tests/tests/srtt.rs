//! The `sock_ops` program reports each socket's smoothed RTT, per cgroup and service port; with
//! a `tc netem` delay on the link it matches the injected round trip.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::Path,
    time::Duration,
};

use serde_json::Value;
use testkit::{leftovers, netns::Link, probe::measure};

/// Added to every packet the server's side sends: the round trip grows by this much.
const DELAY_MS: f64 = 20.0;
const ROUND_TRIPS: usize = 20;

/// The cgroup v2 id (directory inode) of this process.
fn own_cgroup_id() -> u64 {
    let root = probe_user::names::cgroup::v2_mount().expect("cgroup v2 mounted");
    let rel = std::fs::read_to_string("/proc/self/cgroup")
        .expect("read /proc/self/cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .expect("a cgroup v2 line");
    std::fs::metadata(root.join(rel.trim_start_matches('/')))
        .expect("stat cgroup")
        .ino()
}

/// The veth inside a namespace (its only interface besides `lo`).
fn veth(link: &testkit::netns::NetNs) -> String {
    let out = link
        .exec(&["ip", "-o", "link", "show", "type", "veth"])
        .expect("ip link");
    out.split(':')
        .nth(1)
        .and_then(|n| n.trim().split('@').next())
        .expect("a veth")
        .to_owned()
}

/// Runs ROUND_TRIPS request/response pairs over one connection, and a few new connections.
fn traffic(link: &Link, port: u16) {
    let addr = SocketAddr::new(link.right_addr.into(), port);
    let listener = link
        .right
        .run(|| TcpListener::bind(addr))
        .expect("enter server namespace")
        .expect("bind");
    let server = std::thread::spawn(move || {
        for _ in 0..3 {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4];
            while s.read_exact(&mut buf).is_ok() {
                s.write_all(b"pong").expect("write");
            }
        }
    });
    link.left
        .run(|| {
            for _ in 0..3 {
                let mut c =
                    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut buf = [0u8; 4];
                for _ in 0..ROUND_TRIPS {
                    c.write_all(b"ping").expect("write");
                    c.read_exact(&mut buf).expect("read");
                }
            }
        })
        .expect("enter client namespace");
    server.join().expect("server");
}

fn srtt<'a>(summary: &'a Value, direction: &str, port: u16) -> &'a Value {
    let field = if direction == "active" {
        "remote_port"
    } else {
        "local_port"
    };
    summary["series"]
        .as_array()
        .expect("series")
        .iter()
        .find(|s| s["metric"] == "srtt" && s["direction"] == direction && s[field] == port)
        .unwrap_or_else(|| panic!("no {direction} srtt series for port {port}:\n{summary:#}"))
}

#[test]
fn smoothed_rtt_matches_the_injected_delay() {
    if !testkit::root::available("smoothed_rtt_matches_the_injected_delay") {
        return;
    }
    let link = Link::new().expect("create namespaces");
    let port = 21_000 + (std::process::id() % 20_000) as u16;
    let bin = testkit::probe::binary();
    let cgroup = own_cgroup_id();
    let p50 = |s: &Value| s["p50_us"].as_f64().expect("p50") / 1000.0;

    // Without a delay: a veth's round trip, well under a millisecond on an idle machine.
    let plain = measure(&bin, &["--no-datapath"], || traffic(&link, port));
    for direction in ["active", "passive"] {
        let s = srtt(&plain.summary, direction, port);
        assert!(
            s["count"].as_u64().expect("count") >= ROUND_TRIPS as u64,
            "{s:#}"
        );
        assert_eq!(s["cgroup_id"], cgroup, "{s:#}");
        eprintln!("{direction} srtt without delay: p50 {} ms", p50(s));
        assert!(p50(s) < DELAY_MS / 2.0, "{direction}: {s:#}");
    }
    let hooks = plain.summary["hooks"].to_string();
    assert!(hooks.contains("hp_sock_ops"), "{hooks}");
    // No TC program watches the veth, so no sighting at a socket could end a hop: the socket
    // programs must not have kept any (docs/overhead.md, `--no-datapath`).
    assert_eq!(
        plain.summary["counters"]["lru_pkt_seen_inserted"], 0,
        "packets remembered without a datapath"
    );

    let ifname = veth(&link.right);
    let delay = format!("{DELAY_MS}ms");
    if let Err(e) = link.right.exec(&[
        "tc", "qdisc", "add", "dev", &ifname, "root", "netem", "delay", &delay,
    ]) {
        // Where the module is loaded (the VM matrix loads it), netem must work.
        assert!(
            !Path::new("/sys/module/sch_netem").exists(),
            "sch_netem is loaded but: {e}"
        );
        eprintln!("SKIPPED the netem half of smoothed_rtt_matches_the_injected_delay: {e}");
    } else {
        let port = port + 1;
        let delayed = measure(&bin, &["--no-datapath"], || traffic(&link, port));
        for direction in ["active", "passive"] {
            let s = srtt(&delayed.summary, direction, port);
            let (p50, min) = (p50(s), s["min_us"].as_f64().expect("min") / 1000.0);
            eprintln!("{direction} srtt with {delay}: p50 {p50} ms, min {min} ms");
            // netem delays by at least DELAY_MS; histogram buckets are 1/32 wide.
            assert!(p50 >= DELAY_MS * 0.97, "{direction}: {s:#}");
            assert!(p50 <= DELAY_MS + 10.0, "{direction}: {s:#}");
        }
    }
    drop(link);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
