//! A request whose data segment completes the TCP handshake — the client's last handshake ACK
//! lost, or overtaken by the data on another CPU's backlog — passes the `cgroup_skb` program
//! while the kernel still files it under the listener, not the new connection. Here the loss
//! is made certain: iptables in the client's namespace drops every bare ACK the client sends.
//! The server's `app` hop must count and split every such request all the same.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;
use testkit::{leftovers, netns::Link, probe::measure};

const REQUESTS: usize = 10;
/// The server works this long on each request before it answers.
const PROCESSING_MS: f64 = 20.0;

fn serve(listener: TcpListener) {
    for _ in 0..REQUESTS {
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = [0u8; 3];
        s.read_exact(&mut req).expect("read");
        std::thread::sleep(Duration::from_secs_f64(PROCESSING_MS / 1000.0));
        s.write_all(b"ok").expect("write");
    }
}

fn hop<'a>(summary: &'a Value, name: &str, port: u16) -> Option<&'a Value> {
    summary["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .find(|h| h["hop"] == name && h["local_port"] == port)
}

#[test]
fn a_request_that_completes_the_handshake_is_timed() {
    if !testkit::root::available("a_request_that_completes_the_handshake_is_timed") {
        return;
    }
    let link = Link::new().expect("create namespaces");
    // Segments whose only flag is ACK: the handshake's last ACK among them. The request (a
    // short write: PSH) and the FIN pass. (No `-m length`: the test VMs' kernels lack it.)
    link.left
        .exec(&[
            "iptables",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--tcp-flags",
            "ALL",
            "ACK",
            "-j",
            "DROP",
        ])
        .expect("iptables in the client's namespace");
    let port = 20_000 + (std::process::id() % 20_000) as u16 + 7;
    let server_addr = SocketAddr::new(link.right_addr.into(), port);
    let measured = measure(&testkit::probe::binary(), &[], || {
        let listener = link
            .right
            .run(|| TcpListener::bind(server_addr))
            .expect("enter server namespace")
            .expect("bind");
        let server = std::thread::spawn(move || serve(listener));
        link.left
            .run(|| {
                for _ in 0..REQUESTS {
                    let mut c = TcpStream::connect_timeout(&server_addr, Duration::from_secs(5))
                        .expect("connect");
                    c.set_read_timeout(Some(Duration::from_secs(10)))
                        .expect("timeout");
                    c.write_all(b"req").expect("write");
                    let mut reply = [0u8; 2];
                    c.read_exact(&mut reply).expect("read");
                    assert_eq!(&reply, b"ok");
                }
            })
            .expect("enter client namespace");
        server.join().expect("server");
    });
    let summary = &measured.summary;
    let counters = &summary["counters"];
    let app = hop(summary, "app", port)
        .unwrap_or_else(|| panic!("no app hop for port {port}; counters {counters}"));
    assert_eq!(app["count"], REQUESTS, "{app:#}; counters {counters}");
    let p50_ms = app["p50_us"].as_f64().expect("p50") / 1000.0;
    assert!(p50_ms >= PROCESSING_MS, "app p50 {p50_ms} ms");
    // The request reached the connection before the process read it, so the read is timed too.
    for split in ["app_queue", "app_processing"] {
        let h = hop(summary, split, port).unwrap_or_else(|| panic!("no {split} hop"));
        assert_eq!(h["count"], REQUESTS, "{split}: {h:#}");
    }
    assert!(
        counters["lru_early_requests_inserted"].as_u64() >= Some(REQUESTS as u64),
        "every request went through the listener: {counters}"
    );
    assert_eq!(
        counters["evicted_early_requests"], 0,
        "every parked request was taken on: {counters}"
    );
    drop(link);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
