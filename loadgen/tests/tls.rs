//! TLS against a local rustls server with a self-signed certificate: rejected without
//! `--insecure`, accepted with it, handshakes timed and resumed sessions reported.

mod common;

use std::{io::Write, net::TcpListener, sync::Arc};

use common::*;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A blocking TLS 1.3 server on 127.0.0.1 answering every request with 200 and "tls".
fn tls_server() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let pem = cert.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(mut conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                loop {
                    match std::io::Read::read(&mut tls, &mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntls";
                        if tls.write_all(r).and_then(|()| tls.flush()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("https://127.0.0.1:{port}/"), pem)
}

#[test]
fn self_signed_certificate_is_rejected_without_insecure() {
    let (url, _) = tls_server();
    let out = loadgen(&[&url, "-n", "3", "-c", "1", "--no-tui", "-j"]);
    let v = json_of(&out);
    assert_eq!(
        v["errorDistribution"],
        serde_json::json!({"tls certificate rejected": 3})
    );
}

#[test]
fn insecure_accepts_it_and_sessions_resume() {
    let (url, _) = tls_server();
    let path = temp_path("tls.jsonl");
    let out = loadgen(&[
        &url,
        "-n",
        "6",
        "-c",
        "1",
        "--insecure",
        "--disable-keepalive",
        "--no-tui",
        "-j",
        "--records",
        path.to_str().unwrap(),
    ]);
    let v = json_of(&out);
    assert_eq!(v["statusCodeDistribution"]["200"], 6);
    assert_eq!(v["summary"]["totalData"], 18);
    let recs = records(&path);
    let reqs = &recs[1..];
    for r in reqs {
        assert!(r["tls_end_ns"].as_u64().unwrap() >= r["connect_end_ns"].as_u64().unwrap());
    }
    // The first handshake is full; later ones resume the session it left.
    let first = reqs.iter().find(|r| r["seq"] == 0).unwrap();
    assert_eq!(first["tls_resumed"], false);
    assert!(reqs.iter().any(|r| r["tls_resumed"] == true));
    assert!(v["details"]["tlsHandshake"]["average"].as_f64().unwrap() > 0.0);
}

#[test]
fn cacert_makes_the_certificate_trusted() {
    let (url, pem) = tls_server();
    let ca = temp_path("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    // The certificate names localhost, so connect by that name (resolved by /etc/hosts).
    let url = url.replace("127.0.0.1", "localhost");
    let v = json_of(&loadgen(&[
        &url,
        "-n",
        "2",
        "-c",
        "1",
        "--ipv4",
        "--cacert",
        ca.to_str().unwrap(),
        "--no-tui",
        "-j",
    ]));
    assert_eq!(v["statusCodeDistribution"]["200"], 2, "{v}");
}
