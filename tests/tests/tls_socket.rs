//! TLS at a socket (root): an HTTPS server on loopback, loadgen's HTTPS client, hopprobe in
//! between. Handshake flights must not count as requests: the app and upstream hops count
//! exactly the requests and time them from the request's first record, and each connection's
//! handshake is a `tls_handshake` of its own, on both sides.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::Arc,
    time::Duration,
};

use clap::Parser;
use rustls::{
    ServerConfig, ServerConnection, StreamOwned, SupportedProtocolVersion,
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
};
use serde_json::Value;
use testkit::probe::{binary, measure};

/// The server's service time per request: what the app hop must recover.
const SERVICE: Duration = Duration::from_millis(3);

fn server_config(version: &'static SupportedProtocolVersion) -> Arc<ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("version")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    Arc::new(config)
}

/// Serves HTTP/1.1 over TLS on a loopback port until the process ends: each request waits
/// [`SERVICE`], then gets a short answer; `connection: close` closes after it.
fn serve(config: Arc<ServerConfig>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || connection(config, tcp));
        }
    });
    port
}

fn connection(config: Arc<ServerConfig>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = BufReader::new(StreamOwned::new(conn, tcp));
    loop {
        let mut close = false;
        let mut line = String::new();
        loop {
            line.clear();
            match tls.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => close |= line.to_ascii_lowercase().starts_with("connection: close"),
            }
        }
        std::thread::sleep(SERVICE);
        let head = if close { "connection: close\r\n" } else { "" };
        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{head}\r\nok");
        let s = tls.get_mut();
        if s.write_all(answer.as_bytes())
            .and_then(|()| s.flush())
            .is_err()
            || close
        {
            s.conn.send_close_notify();
            let _ = s.flush();
            return;
        }
    }
}

fn loadgen(port: u16, requests: u32, keepalive: bool) {
    let url = format!("https://127.0.0.1:{port}/");
    let n = requests.to_string();
    let mut args = vec![
        "loadgen",
        &url,
        "-c",
        "2",
        "-n",
        &n,
        "--insecure",
        "--no-tui",
        "--threads",
        "1",
    ];
    if !keepalive {
        args.push("--disable-keepalive");
    }
    let opts = loadgen::cli::Opts::try_parse_from(args).expect("loadgen flags");
    assert_eq!(loadgen::app::run(&opts).expect("loadgen runs"), 0);
}

fn series<'a>(summary: &'a Value, hop: &str, port: u16, server: bool) -> Option<&'a Value> {
    summary["hops"].as_array()?.iter().find(|h| {
        h["hop"] == hop
            && if server {
                h["local_port"] == port
            } else {
                h["peer"] == format!("127.0.0.1:{port}")
            }
    })
}

fn count(summary: &Value, hop: &str, port: u16, server: bool) -> u64 {
    series(summary, hop, port, server).map_or(0, |h| h["count"].as_u64().unwrap_or(0))
}

/// Under qemu's emulated CPU (the VM matrix) the verifier takes minutes over the TLS record
/// walk (docs/tls.md, "Cost"): the test says so and the runner counts it as not run there.
fn host_only(test: &str) -> bool {
    if testkit::emulation::emulated() {
        eprintln!("HOST-ONLY {test}: --tls takes the verifier minutes on an emulated CPU");
        return true;
    }
    false
}

fn check(version: &'static SupportedProtocolVersion, keepalive: bool) {
    const REQUESTS: u32 = 40;
    let what = format!("{version:?}, keep-alive {keepalive}");
    let port = serve(server_config(version));
    let measured = measure(&binary(), &["--tls"], || loadgen(port, REQUESTS, keepalive));
    let s = &measured.summary;
    let context = format!("{what}: counters {:#}\nhops {:#}", s["counters"], s["hops"]);
    let n = u64::from(REQUESTS);
    assert_eq!(
        count(s, "app", port, true),
        n,
        "app hop counts requests: {context}"
    );
    assert_eq!(
        count(s, "upstream", port, false),
        n,
        "upstream too: {context}"
    );
    let handshakes = count(s, "tls_handshake", port, true);
    if keepalive {
        assert!(
            (1..=4).contains(&handshakes),
            "one per connection: {context}"
        );
    } else {
        assert_eq!(handshakes, n, "one per connection: {context}");
    }
    assert_eq!(
        count(s, "tls_handshake", port, false),
        handshakes,
        "{context}"
    );
    assert_eq!(s["counters"]["tls_lost"], 0, "{context}");
    let p50_ms = series(s, "app", port, true).expect("app")["p50_us"]
        .as_f64()
        .expect("p50")
        / 1e3;
    let service = SERVICE.as_secs_f64() * 1e3;
    assert!(
        p50_ms >= service && p50_ms < service + 2.0,
        "the app hop is the service time, not the handshake: p50 {p50_ms} ms; {context}"
    );
    if !keepalive {
        assert!(
            s["counters"]["tls_resumed"].as_u64().unwrap_or(0) > 0,
            "loadgen resumes sessions: {context}"
        );
    }
    eprintln!(
        "{what}: app p50 {p50_ms:.3} ms, {handshakes} handshakes; {}",
        s["counters"]
    );
}

#[test]
fn tls13_handshakes_are_not_requests() {
    if !testkit::root::available("tls13_handshakes_are_not_requests")
        || host_only("tls13_handshakes_are_not_requests")
    {
        return;
    }
    check(&rustls::version::TLS13, false);
    check(&rustls::version::TLS13, true);
}

#[test]
fn tls12_handshakes_are_not_requests() {
    if !testkit::root::available("tls12_handshakes_are_not_requests")
        || host_only("tls12_handshakes_are_not_requests")
    {
        return;
    }
    check(&rustls::version::TLS12, false);
    check(&rustls::version::TLS12, true);
}

/// A connection that starts like TLS and then is not (non-TLS bytes after a ClientHello
/// record): counted in `tls_lost` and left out, not turned into requests.
#[test]
fn a_stream_that_stops_being_tls_is_counted_and_left_out() {
    if !testkit::root::available("a_stream_that_stops_being_tls_is_counted_and_left_out")
        || host_only("a_stream_that_stops_being_tls_is_counted_and_left_out")
    {
        return;
    }
    use std::io::Read;
    const CONNECTIONS: usize = 5;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // Answer every read in plaintext until the client closes.
                while let Ok(n) = tcp.read(&mut buf) {
                    if n == 0
                        || tcp
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    let measured = measure(&binary(), &["--tls"], || {
        for _ in 0..CONNECTIONS {
            let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            // A ClientHello record header and the start of its message, then plain HTTP where
            // the server's ServerHello should have been answered.
            c.write_all(&[22, 3, 1, 0, 4, 1, 0, 0, 0]).expect("hello");
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf);
            for _ in 0..3 {
                c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                    .expect("request");
                let _ = c.read(&mut buf);
            }
        }
    });
    let s = &measured.summary;
    let context = format!("counters {:#}\nhops {:#}", s["counters"], s["hops"]);
    assert!(
        s["counters"]["tls_lost"].as_u64().unwrap_or(0) >= CONNECTIONS as u64,
        "every such connection is lost: {context}"
    );
    assert_eq!(
        count(s, "app", port, true),
        0,
        "and none of it is a request: {context}"
    );
    assert_eq!(
        count(s, "tls_handshake", port, true),
        0,
        "nor a handshake: {context}"
    );
}
