//! HTTP/2 against a local h2 server (the `h2` crate's server side, on 127.0.0.1): h2c prior
//! knowledge, ALPN over TLS, streams multiplexed per connection, records that match the peer
//! addresses the server saw, and the error cases.

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use common::*;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Clone, Copy)]
enum Mode {
    /// 200 with body "h2 ok" after the delay.
    Answer(Duration),
    /// RST_STREAM on every request.
    Reset,
}

struct H2Server {
    addr: SocketAddr,
    /// The client address of every request (stream) served, in order.
    requests: Arc<Mutex<Vec<SocketAddr>>>,
    /// The client address of every connection accepted.
    conns: Arc<Mutex<Vec<SocketAddr>>>,
    /// Most streams in flight on one connection at once.
    max_streams: Arc<AtomicUsize>,
}

struct Shared {
    requests: Arc<Mutex<Vec<SocketAddr>>>,
    conns: Arc<Mutex<Vec<SocketAddr>>>,
    max_streams: Arc<AtomicUsize>,
    mode: Mode,
}

/// `alpn`: `None` serves h2c; `Some(protocols)` serves TLS offering those ALPN protocols.
fn h2_server(mode: Mode, alpn: Option<Vec<Vec<u8>>>) -> H2Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(Shared {
        requests: Default::default(),
        conns: Default::default(),
        max_streams: Default::default(),
        mode,
    });
    let server = H2Server {
        addr,
        requests: shared.requests.clone(),
        conns: shared.conns.clone(),
        max_streams: shared.max_streams.clone(),
    };
    let acceptor = alpn.map(|protocols| {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = protocols;
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, peer)) = l.accept().await else {
                    continue;
                };
                shared.conns.lock().unwrap().push(peer);
                let (shared, acceptor) = (shared.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_conn(tcp, peer, shared).await,
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                serve_conn(tls, peer, shared).await;
                            }
                        }
                    }
                });
            }
        });
    });
    server
}

async fn serve_conn<T>(io: T, peer: SocketAddr, shared: Arc<Shared>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    let in_flight = Arc::new(AtomicUsize::new(0));
    while let Some(Ok((_req, mut respond))) = conn.accept().await {
        shared.requests.lock().unwrap().push(peer);
        let now = in_flight.fetch_add(1, SeqCst) + 1;
        shared.max_streams.fetch_max(now, SeqCst);
        let (in_flight, mode) = (in_flight.clone(), shared.mode);
        tokio::spawn(async move {
            match mode {
                Mode::Answer(delay) => {
                    tokio::time::sleep(delay).await;
                    let resp = http::Response::builder().status(200).body(()).unwrap();
                    if let Ok(mut body) = respond.send_response(resp, false) {
                        let _ = body.send_data(Bytes::from_static(b"h2 ok"), true);
                    }
                }
                Mode::Reset => respond.send_reset(h2::Reason::INTERNAL_ERROR),
            }
            in_flight.fetch_sub(1, SeqCst);
        });
    }
}

fn count_by<T: std::hash::Hash + Eq>(items: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

#[test]
fn h2c_multiplexes_p_streams_per_connection_and_records_match_the_server() {
    let srv = h2_server(Mode::Answer(Duration::from_millis(20)), None);
    let url = format!("http://{}/", srv.addr);
    let path = temp_path("h2c.jsonl");
    let path_s = path.to_str().unwrap();
    let out = loadgen(&[
        &url,
        "--http-version",
        "2",
        "-c",
        "2",
        "-p",
        "4",
        "-n",
        "40",
        "--no-tui",
        "-j",
        "--records",
        path_s,
    ]);
    let v = json_of(&out);
    assert_eq!(v["summary"]["successRate"], 1.0);
    assert_eq!(v["statusCodeDistribution"]["200"], 40);
    assert_eq!(v["summary"]["sizePerRequest"], 5);
    // Two connections, each carrying four streams at once.
    assert_eq!(srv.conns.lock().unwrap().len(), 2);
    assert_eq!(srv.max_streams.load(SeqCst), 4);

    let recs = records(&path);
    let reqs: Vec<_> = recs.iter().skip(1).collect();
    assert_eq!(reqs.len(), 40);
    // Per client socket, as many records as the server served streams from that peer.
    let ours = count_by(
        reqs.iter()
            .map(|r| r["local"].as_str().unwrap().parse::<SocketAddr>().unwrap()),
    );
    let theirs = count_by(srv.requests.lock().unwrap().iter().copied());
    assert_eq!(ours, theirs);
    // Each connection is opened by exactly one request, which carries the dial's timings.
    let opened: Vec<_> = reqs.iter().filter(|r| r["reused"] == false).collect();
    assert_eq!(opened.len(), 2);
    for r in &opened {
        assert!(r["connect_end_ns"].as_u64().unwrap() >= r["connect_start_ns"].as_u64().unwrap());
    }
    for r in &reqs {
        let (start, written, first, end) = (
            r["start_ns"].as_u64().unwrap(),
            r["written_ns"].as_u64().unwrap(),
            r["first_byte_ns"].as_u64().unwrap(),
            r["end_ns"].as_u64().unwrap(),
        );
        assert!(start <= written && written <= first && first <= end, "{r}");
        assert_eq!(r["bytes"], 5);
    }
}

#[test]
fn h2_over_tls_is_negotiated_by_alpn() {
    let srv = h2_server(
        Mode::Answer(Duration::from_millis(1)),
        Some(vec![b"h2".to_vec()]),
    );
    let url = format!("https://localhost:{}/", srv.addr.port());
    let path = temp_path("h2tls.jsonl");
    let out = loadgen(&[
        &url,
        "--http2",
        "--insecure",
        "-c",
        "1",
        "-p",
        "2",
        "-n",
        "10",
        "--no-tui",
        "-j",
        "--records",
        path.to_str().unwrap(),
    ]);
    let v = json_of(&out);
    assert_eq!(v["statusCodeDistribution"]["200"], 10);
    assert_eq!(srv.conns.lock().unwrap().len(), 1);
    let recs = records(&path);
    let opener = recs
        .iter()
        .skip(1)
        .find(|r| r["reused"] == false)
        .expect("one request opened the connection");
    assert!(opener["tls_end_ns"].as_u64().unwrap() >= opener["connect_end_ns"].as_u64().unwrap());

    // A TLS server that does not choose h2 cannot be spoken to with HTTP/2.
    let plain = h2_server(Mode::Answer(Duration::ZERO), Some(Vec::new()));
    let url = format!("https://localhost:{}/", plain.addr.port());
    let out = loadgen(&[
        &url,
        "--http2",
        "--insecure",
        "-c",
        "1",
        "-n",
        "3",
        "--no-tui",
        "-j",
    ]);
    let v = json_of(&out);
    assert_eq!(
        v["errorDistribution"],
        serde_json::json!({"http/2 error": 3})
    );
}

#[test]
fn h2_errors_are_counted_by_name() {
    // Every stream reset by the server.
    let srv = h2_server(Mode::Reset, None);
    let out = loadgen(&[
        &format!("http://{}/", srv.addr),
        "--http-version",
        "2",
        "-c",
        "1",
        "-p",
        "2",
        "-n",
        "6",
        "--no-tui",
        "-j",
    ]);
    let v = json_of(&out);
    assert_eq!(
        v["errorDistribution"],
        serde_json::json!({"http/2 error": 6})
    );

    // Nothing listening.
    let port = closed_port();
    let out = loadgen(&[
        &format!("http://127.0.0.1:{port}/"),
        "--http-version",
        "2",
        "-c",
        "1",
        "-n",
        "3",
        "--no-tui",
        "-j",
    ]);
    let v = json_of(&out);
    assert_eq!(
        v["errorDistribution"],
        serde_json::json!({"connection refused": 3})
    );

    // A server that never answers: each stream times out, none hangs the run.
    let srv = h2_server(Mode::Answer(Duration::from_secs(3600)), None);
    let out = loadgen(&[
        &format!("http://{}/", srv.addr),
        "--http-version",
        "2",
        "-c",
        "1",
        "-p",
        "2",
        "-n",
        "2",
        "-t",
        "300ms",
        "--no-tui",
        "-j",
    ]);
    let v = json_of(&out);
    assert_eq!(
        v["errorDistribution"],
        serde_json::json!({"timeout: server never answered": 2})
    );
}

#[test]
fn h2_without_keepalive_opens_a_connection_per_request() {
    let srv = h2_server(Mode::Answer(Duration::ZERO), None);
    let out = loadgen(&[
        &format!("http://{}/", srv.addr),
        "--http-version",
        "2",
        "--disable-keepalive",
        "-c",
        "1",
        "-n",
        "6",
        "--no-tui",
        "-j",
    ]);
    let v = json_of(&out);
    assert_eq!(v["statusCodeDistribution"]["200"], 6);
    assert_eq!(srv.conns.lock().unwrap().len(), 6);
}
