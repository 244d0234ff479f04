//! TLS in the lab (root): HTTPS at the ingress for TLS 1.3 and 1.2, strict mutual TLS between
//! sidecars with pooled connections, resumption on and off seen by loadgen and by the proxy's
//! own handshake counts, haproxy's `ssl` both ways from the shipped templates, and nothing of
//! it (certificates, processes) left after teardown.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use clap::Parser;
use testkit::lab::{
    Lab, SIDECAR_CONTAINER,
    config::{LabConfig, Mesh, TlsVersion},
    http,
    names::{APP_PORT, INGRESS_SERVICE},
    teardown,
    tls::{self, TlsPolicy, mesh_name},
};

const HOPLAB: &str = env!("CARGO_BIN_EXE_hoplab");

fn lab_name(suffix: &str) -> String {
    format!("hpt{}{suffix}", std::process::id() % 100_000)
}

fn up(config: LabConfig) -> Lab {
    Lab::up(config, Path::new(HOPLAB)).expect("lab up")
}

fn assert_page(resp: &http::Message, what: &str) {
    let body = String::from_utf8_lossy(&resp.body);
    assert_eq!(resp.status(), Some(200), "{what}: {body}");
    for service in ["productpage", "details", "reviews", "ratings"] {
        assert!(
            body.contains(service),
            "{what}: {service} missing from\n{body}"
        );
    }
}

/// `requests` requests through the ingress with loadgen, a connection each, as the
/// published external test ran oha; `tls_resumed` of every request's record.
fn loadgen_resumed(lab: &Lab, requests: u32) -> Vec<Option<bool>> {
    let ingress = lab.ingress().expect("ingress");
    let url = lab.ingress_url().expect("ingress");
    assert!(url.starts_with("https://"), "{url}");
    let dir = tempfile::tempdir().expect("tmp");
    let records = dir.path().join("requests.jsonl");
    let n = requests.to_string();
    let mut args = vec![
        "loadgen",
        &url,
        "-c",
        "1",
        "-n",
        &n,
        "--no-tui",
        "--disable-keepalive",
        "--records",
        records.to_str().expect("utf-8"),
    ];
    args.extend(lab.loadgen_flags(ingress));
    let opts = loadgen::cli::Opts::try_parse_from(args).expect("loadgen flags");
    let code = testkit::netns::run_in(&lab.client_netns(), || loadgen::app::run(&opts))
        .expect("client namespace")
        .expect("loadgen runs");
    assert_eq!(code, 0, "loadgen exit code");
    let text = std::fs::read_to_string(&records).expect("records");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("seq").is_some())
        .collect();
    assert_eq!(lines.len(), requests as usize, "{text}");
    for l in &lines {
        assert_eq!(l["status"], 200, "{l}");
    }
    lines.iter().map(|l| l["tls_resumed"].as_bool()).collect()
}

/// A client pinned to the other TLS version is refused: the ingress speaks only the lab's.
fn assert_other_version_refused(lab: &Lab, version: TlsVersion) {
    let other = match version {
        TlsVersion::V1_3 => TlsVersion::V1_2,
        TlsVersion::V1_2 => TlsVersion::V1_3,
    };
    let policy = TlsPolicy {
        version: other,
        resumption: true,
    };
    let config = tls::client_config(&lab.tls_files(), None, policy).expect("client config");
    let ingress = lab.ingress().expect("ingress");
    let name = rustls::pki_types::ServerName::IpAddress(ingress.ip().into());
    let got = testkit::netns::run_in(&lab.client_netns(), || {
        http::get_tls(ingress, "/productpage", config, name)
    })
    .expect("client namespace");
    assert!(
        got.is_err(),
        "TLS {other} against a TLS {version} ingress: {got:?}"
    );
}

/// Plaintext HTTP to a TLS port gets no HTTP answer: a TLS alert (0x15) or a close.
fn assert_plaintext_refused(ns: &str, addr: SocketAddr) {
    let answer = testkit::netns::run_in(ns, || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /productpage HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")?;
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        Ok(answer)
    })
    .expect("namespace")
    .expect("connect");
    assert!(
        answer.first().is_none_or(|b| *b == 0x15),
        "{addr} answered plaintext with {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// A proxy's handshake counts once they are published (they are up to 50 ms old).
fn counts(lab: &Lab, service: &str, container: &str) -> tls::HandshakeCounts {
    std::thread::sleep(Duration::from_millis(200));
    lab.tls_counts(service, container)
        .unwrap_or_else(|| panic!("{service}/{container} published no handshake counts"))
}

/// The lab's TLS files exist while it is up and are gone after teardown, with the rest.
fn assert_torn_down(lab: Lab, name: &str) {
    let dir = lab.tls_files().dir;
    assert!(lab.tls_files().ca().exists(), "{}", dir.display());
    drop(lab);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_eq!(teardown::leftovers(name), Vec::<String>::new());
}

fn https_ingress(suffix: &str, version: TlsVersion, resumption: bool) {
    let name = lab_name(suffix);
    let mut config = LabConfig::new(&name);
    config.ingress = true;
    config.ingress_tls = true;
    config.tls_version = version;
    config.tls_resumption = resumption;
    // `up` is ready only once a page came through the ingress over HTTPS.
    let lab = up(config);
    let ingress = lab.ingress().expect("ingress");
    let (resp, kind) = lab.get_https(ingress, "/productpage").expect("HTTPS GET");
    assert_page(&resp, "https ingress");
    assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    assert_other_version_refused(&lab, version);
    assert_plaintext_refused(&lab.client_netns(), ingress);
    // The NodePort straight to productpage stays plaintext.
    assert_page(
        &lab.get(lab.nodeport(), "/productpage").expect("GET"),
        "nodeport",
    );

    let before = counts(&lab, INGRESS_SERVICE, "ingress");
    let requests = 12;
    let resumed = loadgen_resumed(&lab, requests);
    let after = counts(&lab, INGRESS_SERVICE, "ingress");
    let by_proxy = after.server_resumed - before.server_resumed;
    let full = after.server_full - before.server_full;
    let by_loadgen = resumed.iter().filter(|r| **r == Some(true)).count() as u64;
    assert!(resumed.iter().all(Option::is_some), "{resumed:?}");
    assert_eq!(full + by_proxy, u64::from(requests), "{after:?}");
    // Both sides agree on which handshakes resumed.
    assert_eq!(by_proxy, by_loadgen, "{after:?} {resumed:?}");
    if resumption {
        // The first connection has no session to resume; the rest do.
        assert!(by_loadgen >= u64::from(requests) - 2, "{resumed:?}");
    } else {
        assert_eq!(by_loadgen, 0, "{resumed:?}");
    }
    let status = Command::new(HOPLAB)
        .args(["status", "--name", &name])
        .output()
        .expect("status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("ingress   https://"), "{status}");
    assert!(status.contains(&format!("TLS {version}")), "{status}");
    assert_torn_down(lab, &name);
}

#[test]
fn https_ingress_tls13_with_resumption() {
    if !testkit::lab::available("https_ingress_tls13_with_resumption") {
        return;
    }
    https_ingress("t", TlsVersion::V1_3, true);
}

#[test]
fn https_ingress_tls12_without_resumption() {
    if !testkit::lab::available("https_ingress_tls12_without_resumption") {
        return;
    }
    https_ingress("u", TlsVersion::V1_2, false);
}

/// The details pod's IP and port: from the node, the connection a peer sidecar makes (the
/// pod's iptables send it to the inbound sidecar).
fn details(lab: &Lab) -> SocketAddr {
    let pod = lab
        .state
        .pods
        .iter()
        .find(|p| p.service == "details")
        .expect("details pod");
    SocketAddr::new(pod.ip.into(), APP_PORT)
}

/// A mesh member (ratings' certificate) reaches details' inbound sidecar over mutual TLS.
fn assert_mesh_member_served(lab: &Lab) {
    let config = tls::client_config(&lab.tls_files(), Some("ratings"), lab.tls_policy())
        .expect("client config");
    let name = tls::server_name(&mesh_name("details")).expect("name");
    let addr = details(lab);
    let (resp, _) = testkit::netns::run_in(&lab.state.node_netns, || {
        http::get_tls(addr, "/details", config, name)
    })
    .expect("node namespace")
    .expect("mutual TLS GET");
    assert_eq!(resp.status(), Some(200), "{resp:?}");
}

#[test]
fn mtls_between_sidecars_is_pooled_and_strict() {
    if !testkit::lab::available("mtls_between_sidecars_is_pooled_and_strict") {
        return;
    }
    let name = lab_name("v");
    let mut config = LabConfig::new(&name);
    config.mesh = Mesh::Sidecar;
    config.ingress = true;
    config.ingress_tls = true;
    config.mtls = true;
    let lab = up(config);
    assert_eq!(lab.entry_points(), vec![lab.ingress().expect("ingress")]);
    let requests = 20;
    for _ in 0..requests {
        assert_page(
            &lab.get(lab.ingress().expect("ingress"), "/productpage")
                .expect("GET"),
            "mtls",
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    // Every sidecar-to-sidecar hop carried these requests over pooled connections: a
    // handshake or two per pool, not one per request.
    let ingress = lab
        .tls_counts(INGRESS_SERVICE, "ingress")
        .expect("ingress counts");
    let product = lab
        .tls_counts("productpage", SIDECAR_CONTAINER)
        .expect("productpage sidecar counts");
    let reviews = lab
        .tls_counts("reviews", SIDECAR_CONTAINER)
        .expect("reviews sidecar counts");
    let client_handshakes = |c: &tls::HandshakeCounts| c.client_full + c.client_resumed;
    assert!(
        (1..=2).contains(&client_handshakes(&ingress)),
        "ingress → productpage: {ingress:?}"
    );
    assert!(
        (2..=4).contains(&client_handshakes(&product)),
        "productpage → details, reviews: {product:?}"
    );
    assert!(
        (1..=2).contains(&client_handshakes(&reviews)),
        "reviews → ratings: {reviews:?}"
    );
    assert!(
        product.server_full + product.server_resumed >= 1,
        "{product:?}"
    );
    // Strict: plaintext to a sidecar's inbound port gets a TLS alert, the NodePort straight
    // to productpage no page; a mesh member's certificate gets served.
    assert_plaintext_refused(&lab.state.node_netns, details(&lab));
    let via_nodeport = lab.get(lab.nodeport(), "/productpage");
    assert!(
        via_nodeport
            .as_ref()
            .map_or(true, |r| r.status() != Some(200)),
        "{via_nodeport:?}"
    );
    assert_mesh_member_served(&lab);
    let details = counts(&lab, "details", SIDECAR_CONTAINER);
    // The plaintext attempt; the mesh member's and productpage's pooled connection.
    assert!(details.failed >= 1, "{details:?}");
    assert!(
        details.server_full + details.server_resumed >= 2,
        "{details:?}"
    );
    assert_torn_down(lab, &name);
}

#[test]
fn haproxy_speaks_tls_both_ways_from_the_shipped_templates() {
    if !testkit::lab::available("haproxy_speaks_tls_both_ways_from_the_shipped_templates") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab");
    let name = lab_name("w");
    let mut config = LabConfig::new(&name);
    config.mesh = Mesh::Sidecar;
    config.ingress = true;
    config.ingress_tls = true;
    config.mtls = true;
    // The options the defaults leave out: TLS 1.2 pinned, no tickets, no session cache.
    config.tls_version = TlsVersion::V1_2;
    config.tls_resumption = false;
    config.sidecar_cmd = Some("haproxy -db -f {config}".into());
    config.sidecar_template = Some(dir.join("haproxy-sidecar.cfg").display().to_string());
    config.ingress_cmd = Some("haproxy -db -f {config}".into());
    config.ingress_template = Some(dir.join("haproxy-ingress.cfg").display().to_string());
    let lab = up(config);
    let proxies: Vec<String> = lab
        .state
        .containers()
        .filter(|(_, c)| c.name == SIDECAR_CONTAINER || c.name == "ingress")
        .map(|(_, c)| std::fs::read_to_string(format!("/proc/{}/comm", c.pid)).unwrap_or_default())
        .collect();
    assert_eq!(proxies.len(), 5);
    assert!(proxies.iter().all(|c| c.trim() == "haproxy"), "{proxies:?}");
    let ingress = lab.ingress().expect("ingress");
    let (resp, _) = lab.get_https(ingress, "/productpage").expect("HTTPS GET");
    assert_page(&resp, "haproxy https ingress");
    assert_other_version_refused(&lab, TlsVersion::V1_2);
    assert_plaintext_refused(&lab.client_netns(), ingress);
    assert_plaintext_refused(&lab.state.node_netns, details(&lab));
    assert_mesh_member_served(&lab);
    let resumed = loadgen_resumed(&lab, 6);
    assert!(resumed.iter().all(|r| *r == Some(false)), "{resumed:?}");
    assert_torn_down(lab, &name);
}

#[test]
fn tls_flags_that_cannot_work_are_rejected_with_a_message() {
    for (args, needle) in [
        (&["up", "--mtls"][..], "--mtls needs --mesh sidecar"),
        (
            &["up", "--mesh", "sidecar", "--mtls"][..],
            "--mtls needs --ingress",
        ),
        (
            &["up", "--ingress-tls"][..],
            "--ingress-tls needs --ingress",
        ),
        (
            &["up", "--tls-version", "1.2"][..],
            "need --ingress-tls or --mtls",
        ),
        (
            &["up", "--ingress", "--ingress-tls", "--tls-version", "1.1"][..],
            "invalid value",
        ),
        (
            &["up", "--ingress", "--mtls", "--tls-resumption", "maybe"][..],
            "on or off",
        ),
    ] {
        let o = Command::new(HOPLAB)
            .args(args)
            .output()
            .expect("run hoplab");
        let text = testkit::describe(&o);
        assert!(!o.status.success(), "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text}");
    }
}
