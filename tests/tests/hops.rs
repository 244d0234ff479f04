//! Per-hop latency in the lab: the app and upstream hops hopprobe reports match the service
//! times the lab injected.

use std::{collections::HashMap, path::Path, time::Duration};

use serde_json::Value;
use testkit::{
    emulation::assert_timing,
    lab::{
        Lab,
        config::{Delay, LabConfig},
    },
    probe::measure,
};

const REQUESTS: u64 = 20;

#[test]
fn app_and_upstream_hops_match_the_injected_service_times() {
    if !testkit::lab::available("app_and_upstream_hops_match_the_injected_service_times") {
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

    let measured = measure(&testkit::probe::binary(), &[], || {
        for _ in 0..REQUESTS {
            let resp = lab.get(lab.nodeport(), "/productpage").expect("GET");
            assert_eq!(resp.status(), Some(200));
        }
    });
    drop(lab);
    let (summary, records) = (&measured.summary, &measured.records);
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
    // With `--json` (which `measure` passes) every container's CPU is sampled for the report:
    // at the start, every 500 ms and at the end. (Without it nothing is sampled: the samples
    // are only for the report.)
    let cpu = summary["cpu"].as_array().expect("cpu series");
    assert!(
        cpu.len() >= app_cgroup.len(),
        "{} CPU series for {} containers",
        cpu.len(),
        app_cgroup.len()
    );
    for series in cpu {
        let usage: Vec<u64> = series["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| s[1].as_u64().expect("usage_usec"))
            .collect();
        assert!(usage.len() >= 2, "{series}");
        assert!(usage.windows(2).all(|w| w[0] <= w[1]), "{series}");
    }
    let p50_ms = |h: &Value| h["p50_us"].as_f64().expect("p50") / 1000.0;
    let mut app = HashMap::new();
    for (service, _) in injected_ms {
        let h = hop("app", service, None);
        assert_eq!(h["count"], REQUESTS, "{service}: {context}");
        app.insert(service, p50_ms(&h));
    }
    eprintln!("app hop p50 (ms): {app:?}");
    // Leaves: their service time, plus well under a millisecond of the app's own handling (not
    // asserted on an emulated CPU: testkit::emulation).
    for (service, injected) in [("details", 2.0), ("ratings", 4.0)] {
        let got = app[service];
        assert!(got >= injected, "{service}: {got} ms; {context}");
        assert_timing(got < injected + 1.0, || {
            format!("{service}: {got} ms for {injected} ms; {context}")
        });
    }
    // Callers include their calls: reviews ⊇ 3 ms + ratings; productpage ⊇ 5 ms + both calls.
    assert!(app["reviews"] >= 3.0 + app["ratings"], "{app:?}");
    assert!(
        app["productpage"] >= 5.0 + app["details"] + app["reviews"],
        "{app:?}"
    );
    // A caller's own time, request by request: `app` less the calls made for that request
    // (`app_self`): its service time, plus connecting for each call (the handshake comes
    // before a call's first request byte) and waking after it — up to 1.04 ms in all for
    // productpage's two calls over the pods' veths in CI, with the calls themselves at 10 ms.
    // A leaf's `app` is its own time already and gets no such series.
    for (service, injected, calls) in [("productpage", 5.0, 2.0), ("reviews", 3.0, 1.0)] {
        let h = hop("app_self", service, None);
        assert_eq!(h["count"], REQUESTS, "{service}: {context}");
        let got = p50_ms(&h);
        assert!(got >= injected, "{service} app_self {got} ms; {context}");
        assert_timing(got < injected + calls, || {
            format!("{service} app_self {got} ms for {injected} ms and {calls} calls; {context}")
        });
    }
    let leaves_self = summary["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .filter(|h| h["hop"] == "app_self")
        .filter_map(|h| app_cgroup.get(&h["cgroup_id"].as_u64().unwrap_or(0)))
        .filter(|s| ["details", "ratings"].contains(&s.as_str()))
        .count();
    assert_eq!(leaves_self, 0, "{context}");
    // The caller's view of a call contains the callee's.
    let call = hop("upstream", "productpage", Some("10.96.0.11:9080"));
    assert_eq!(call["count"], REQUESTS, "{context}");
    assert!(p50_ms(&call) >= app["details"], "{context}");

    let sent = summary["counters"]["exchanges_sent"]
        .as_u64()
        .expect("counter");
    let lines = std::fs::read_to_string(records).expect("records");
    let parsed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("each record is JSON"))
        // The TC points' per-connection lines (`"record":"datapath"`) are not socket exchanges.
        .filter(|r| r.get("record").is_none())
        .collect();
    assert_eq!(parsed.len() as u64, sent, "every exchange sent is recorded");
    assert_eq!(summary["counters"]["exchange_drops"], 0);
    assert_eq!(testkit::leftovers::all(), Vec::<String>::new());
}

/// Sidecar hop (count, min ms, p50 ms) per pod and direction, from a run of `requests` page
/// loads.
#[expect(clippy::type_complexity, reason = "a test helper's result")]
fn sidecar_hops(lab: &Lab, requests: usize) -> (HashMap<(String, String), (u64, f64, f64)>, Value) {
    let netns = format!("/run/netns/{}", lab.state.node_netns);
    let metadata = lab.state.metadata_file.display().to_string();
    let summary = measure(
        &testkit::probe::binary(),
        &["--netns", &netns, "--metadata", &metadata],
        || {
            for _ in 0..requests {
                let resp = lab.get(lab.nodeport(), "/productpage").expect("GET");
                assert_eq!(resp.status(), Some(200));
            }
        },
    )
    .summary;
    (per_pod_and_direction(&summary, "sidecar"), summary)
}

/// (count, min ms, p50 ms) of every `hop` series, per pod and direction.
fn per_pod_and_direction(summary: &Value, hop: &str) -> HashMap<(String, String), (u64, f64, f64)> {
    summary["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .filter(|h| h["hop"] == hop)
        .map(|h| {
            let key = (
                h["pod"].as_str().unwrap_or("?").to_owned(),
                h["direction"].as_str().unwrap_or("?").to_owned(),
            );
            let ms = |f: &str| h[f].as_f64().expect("latency") / 1000.0;
            let count = h["count"].as_u64().expect("count");
            (key, (count, ms("min_us"), ms("p50_us")))
        })
        .collect()
}

#[test]
fn the_sidecar_hop_grows_by_the_injected_sidecar_delay() {
    if !testkit::lab::available("the_sidecar_hop_grows_by_the_injected_sidecar_delay") {
        return;
    }
    let mut p50 = Vec::new();
    for (suffix, delay) in [("s", "0"), ("t", "2ms")] {
        let name = format!("hpt{}{suffix}", std::process::id() % 100_000);
        let mut config = LabConfig::new(&name);
        config.mesh = testkit::lab::config::Mesh::Sidecar;
        config.sidecar_delay = delay.parse().expect("delay");
        let lab = Lab::up(config, Path::new(env!("CARGO_BIN_EXE_hoplab"))).expect("lab up");
        let (hops, summary) = sidecar_hops(&lab, 30);
        eprintln!("sidecar delay {delay}: {hops:?}");
        // Inbound in all four pods; outbound where the app calls others.
        assert_eq!(hops.len(), 6, "{:#}", summary["hops"]);
        assert_eq!(summary["counters"]["sidecar_unpaired"], 0);
        // Every proxy reads each request before it forwards it, and the read hook (whichever
        // this kernel runs) sees it: every hop splits into its queue wait and the rest, and
        // the rest holds the whole delay (the sleep comes after the read).
        let queue = per_pod_and_direction(&summary, "sidecar_queue");
        let processing = per_pod_and_direction(&summary, "sidecar_processing");
        for (key, &(n, _, _)) in &hops {
            assert_eq!(
                queue.get(key).map(|q| q.0),
                Some(n),
                "{key:?} sidecar_queue"
            );
            let (m, min, _) = processing.get(key).copied().expect("sidecar_processing");
            assert_eq!(m, n, "{key:?} sidecar_processing");
            if delay != "0" {
                assert!(min >= 2.0, "{key:?}: processing min {min:.3} ms < 2 ms");
            }
        }
        // Every call an app makes (a fresh connection, redirected to its sidecar by iptables,
        // answered with `Connection: close`) is read by the caller after its answer arrived:
        // the caller's wake-up is timed for each one.
        let calls: Vec<&Value> = summary["hops"]
            .as_array()
            .expect("hops")
            .iter()
            .filter(|h| {
                h["hop"] == "upstream" && h["container"] != "istio-proxy" && h["pod"].is_string()
            })
            .collect();
        assert!(
            calls.len() >= 3,
            "productpage's two calls and reviews' one: {calls:?}"
        );
        for call in calls {
            let waits = summary["hops"].as_array().expect("hops").iter().find(|h| {
                h["hop"] == "upstream_read_wait"
                    && h["cgroup_id"] == call["cgroup_id"]
                    && h["peer"] == call["peer"]
            });
            assert_eq!(
                waits.map(|w| &w["count"]),
                Some(&call["count"]),
                "upstream_read_wait of {call}"
            );
        }
        p50.push(hops);
    }
    for (key, &(_, min_with, p50_with)) in &p50[1] {
        let (_, min_without, _) = p50[0][key];
        let growth = min_with - min_without;
        // The minimum over 30 requests: scheduling delays on a busy machine only add time, so
        // the fastest request of each run shows what the proxy itself did. A sleep never ends
        // early, so the growth is at least the 2 ms injected (150 µs for measurement noise),
        // and at most half a millisecond more. The strict max(10 %, 150 µs) goal on p50s
        // belongs to the accuracy matrix on a quiet machine.
        //
        // Under emulation even the fastest of 30 requests carries milliseconds of the
        // emulator's own time (minima of 2.3–3.4 ms without delay in the VMs), so the growth
        // is only printed there; what still holds is that the delayed run's fastest request
        // contains the whole sleep.
        assert!(
            min_with >= 2.0,
            "{key:?}: min {min_with:.3} ms < the 2 ms injected"
        );
        assert_timing((-0.15..=0.5).contains(&(growth - 2.0)), || {
            format!("{key:?}: min {min_without:.3} → {min_with:.3} ms")
        });
        assert!(
            p50_with >= 2.0,
            "{key:?}: p50 {p50_with:.3} ms < the 2 ms injected"
        );
    }
}

#[test]
fn without_a_mesh_there_is_no_sidecar_hop() {
    if !testkit::lab::available("without_a_mesh_there_is_no_sidecar_hop") {
        return;
    }
    let name = format!("hpt{}n", std::process::id() % 100_000);
    let lab = Lab::up(
        LabConfig::new(&name),
        Path::new(env!("CARGO_BIN_EXE_hoplab")),
    )
    .expect("lab up");
    let (hops, summary) = sidecar_hops(&lab, 5);
    assert!(hops.is_empty(), "{hops:?}");
    let kinds: std::collections::BTreeSet<&str> = summary["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .filter_map(|h| h["hop"].as_str())
        .collect();
    for hop in [
        "datapath_in",
        "pod_delivery",
        "app",
        "upstream",
        "pod_send",
        "datapath_out",
    ] {
        assert!(kinds.contains(hop), "{hop} missing: {kinds:?}");
    }
}

#[test]
fn a_saturated_one_worker_app_shows_queue_wait_not_processing() {
    if !testkit::lab::available("a_saturated_one_worker_app_shows_queue_wait_not_processing") {
        return;
    }
    // The split runs on every kernel: sock:sock_recv_length (6.12+) or the syscall fallback.
    let name = format!("hpt{}q", std::process::id() % 100_000);
    let mut config = LabConfig::new(&name);
    config.app_delay.insert(
        "productpage".into(),
        Delay::Fixed(Duration::from_millis(10)),
    );
    config
        .app_workers
        .insert("productpage".into(), testkit::lab::config::Workers(1));
    let lab = Lab::up(config, Path::new(env!("CARGO_BIN_EXE_hoplab"))).expect("lab up");
    let netns = format!("/run/netns/{}", lab.state.node_netns);
    let metadata = lab.state.metadata_file.display().to_string();
    let (ns, addr) = (lab.client_netns(), lab.nodeport());
    let summary = measure(
        &testkit::probe::binary(),
        &["--netns", &netns, "--metadata", &metadata],
        || {
            let start = std::time::Instant::now();
            let clients: Vec<_> = (0..8)
                .map(|_| {
                    let ns = ns.clone();
                    std::thread::spawn(move || {
                        testkit::netns::run_in(&ns, || {
                            while start.elapsed() < Duration::from_secs(2) {
                                let resp =
                                    testkit::lab::http::get(addr, "/productpage").expect("GET");
                                assert_eq!(resp.status(), Some(200));
                            }
                        })
                        .expect("client namespace");
                    })
                })
                .collect();
            for c in clients {
                c.join().expect("client");
            }
        },
    )
    .summary;
    let productpage = |hop: &str| {
        summary["hops"]
            .as_array()
            .expect("hops")
            .iter()
            .find(|h| h["hop"] == hop && h["container"] == "productpage")
            .cloned()
    };
    let p50 = |hop: &str| -> f64 {
        productpage(hop).unwrap_or_else(|| panic!("no {hop}: {:#}", summary["hops"]))["p50_us"]
            .as_f64()
            .expect("p50")
            / 1000.0
    };
    let total = p50("app");
    let (queue, processing) = (p50("app_queue"), p50("app_processing"));
    eprintln!(
        "productpage p50: queue {queue:.2} ms + processing {processing:.2} ms; app {total:.2} ms"
    );
    // Processing is the 10 ms service time plus two fast calls (slower on an emulated CPU); the
    // rest is waiting.
    assert!(processing >= 10.0, "processing {processing}");
    assert_timing(processing < 13.0, || format!("processing {processing} ms"));
    assert!(
        queue > 3.0 * processing,
        "queue {queue} vs processing {processing}"
    );
}
