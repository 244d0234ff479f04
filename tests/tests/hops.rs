//! Per-hop latency in the lab: the app and upstream hops hopprobe reports match the service
//! times the lab injected.

use std::{collections::HashMap, path::Path, time::Duration};

use nix::sys::signal::Signal;
use serde_json::Value;
use testkit::{
    lab::{
        Lab,
        config::{Delay, LabConfig},
    },
    probe::Hopprobe,
};

const REQUESTS: u64 = 20;

#[test]
fn app_and_upstream_hops_match_the_injected_service_times() {
    if !testkit::root::available("app_and_upstream_hops_match_the_injected_service_times") {
        return;
    }
    let name = format!("hpt{}h", std::process::id() % 100_000);
    let mut config = LabConfig::new(&name);
    let injected_ms = [
        ("productpage", 5),
        ("details", 2),
        ("reviews", 3),
        ("ratings", 4),
    ];
    for (s, ms) in injected_ms {
        config
            .app_delay
            .insert(s.into(), Delay::Fixed(Duration::from_millis(ms)));
    }
    let lab = Lab::up(config, Path::new(env!("CARGO_BIN_EXE_hoplab"))).expect("lab up");
    let app_cgroup: HashMap<u64, String> = lab
        .state
        .containers()
        .map(|(p, c)| (c.cgroup_id, p.service.clone()))
        .collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let (json, records) = (dir.path().join("s.json"), dir.path().join("r.jsonl"));
    let mut probe = Hopprobe::start(
        Path::new(env!("CARGO_BIN_EXE_hopprobe")),
        &[
            "run",
            "--json",
            json.to_str().expect("utf-8"),
            "--records",
            records.to_str().expect("utf-8"),
        ],
    );
    for _ in 0..REQUESTS {
        let resp = lab.get(lab.nodeport(), "/productpage").expect("GET");
        assert_eq!(resp.status(), Some(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    probe.signal(Signal::SIGINT);
    assert!(
        probe.wait(Duration::from_secs(15)).success(),
        "{}",
        probe.stderr()
    );
    drop(lab);

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("summary")).expect("JSON");
    let context = format!("{:#}", summary["hops"]);
    let hop = |kind: &str, service: &str, peer: Option<&str>| -> Value {
        summary["hops"]
            .as_array()
            .expect("hops")
            .iter()
            .find(|h| {
                h["hop"] == kind
                    && app_cgroup
                        .get(&h["cgroup_id"].as_u64().unwrap_or(0))
                        .map(String::as_str)
                        == Some(service)
                    && peer.is_none_or(|p| h["peer"] == p)
            })
            .unwrap_or_else(|| panic!("no {kind} hop for {service} {peer:?}: {context}"))
            .clone()
    };
    let p50_ms = |h: &Value| h["p50_us"].as_f64().expect("p50") / 1000.0;
    let mut app = HashMap::new();
    for (service, _) in injected_ms {
        let h = hop("app", service, None);
        assert_eq!(h["count"], REQUESTS, "{service}: {context}");
        app.insert(service, p50_ms(&h));
    }
    eprintln!("app hop p50 (ms): {app:?}");
    // Leaves: their service time, plus well under a millisecond of the app's own handling.
    for (service, injected) in [("details", 2.0), ("ratings", 4.0)] {
        let got = app[service];
        assert!(
            (injected..injected + 1.0).contains(&got),
            "{service}: {got} ms; {context}"
        );
    }
    // Callers include their calls: reviews ⊇ 3 ms + ratings; productpage ⊇ 5 ms + both calls.
    assert!(app["reviews"] >= 3.0 + app["ratings"], "{app:?}");
    assert!(
        app["productpage"] >= 5.0 + app["details"] + app["reviews"],
        "{app:?}"
    );
    // The caller's view of a call contains the callee's.
    let call = hop("upstream", "productpage", Some("10.96.0.11:9080"));
    assert_eq!(call["count"], REQUESTS, "{context}");
    assert!(p50_ms(&call) >= app["details"], "{context}");

    let sent = summary["counters"]["exchanges_sent"]
        .as_u64()
        .expect("counter");
    let lines = std::fs::read_to_string(&records).expect("records");
    let parsed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("each record is JSON"))
        .collect();
    assert_eq!(parsed.len() as u64, sent, "every exchange sent is recorded");
    assert_eq!(summary["counters"]["exchange_drops"], 0);
    assert_eq!(testkit::leftovers::all(), Vec::<String>::new());
}
