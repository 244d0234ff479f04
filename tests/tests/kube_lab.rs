//! In the lab, with no `--metadata` file: hopprobe takes every name from a (fake) Kubernetes
//! API server that serves the lab's pods and Services as a cluster would. The app hops carry
//! namespace, pod and container; the sidecar hops appear, which needs the API's container names
//! to tell proxies apart; upstream calls to a ClusterIP name the Service.

#[path = "../../probe-user/tests/fake_api/mod.rs"]
#[expect(
    dead_code,
    reason = "this test serves the lab's objects, not the helpers' fixtures"
)]
mod fake_api;
mod lab_api;

use std::{collections::BTreeSet, path::Path};

use serde_json::Value;
use testkit::{
    lab::{Lab, config::LabConfig, state},
    probe::measure,
};

const NODE: &str = "lab-node";

#[test]
fn every_name_comes_from_the_api_server() {
    if !testkit::lab::available("every_name_comes_from_the_api_server") {
        return;
    }
    let name = format!("hpt{}k", std::process::id() % 100_000);
    let mut config = LabConfig::new(&name);
    config.mesh = testkit::lab::config::Mesh::Sidecar;
    let lab = Lab::up(config, Path::new(env!("CARGO_BIN_EXE_hoplab"))).expect("lab up");
    let api = lab_api::serve(&lab, NODE, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path());
    let netns = format!("/run/netns/{}", lab.state.node_netns);
    let measured = measure(
        &testkit::probe::binary(),
        &[
            "--netns",
            &netns,
            "--kube",
            "--node-name",
            NODE,
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8"),
        ],
        || {
            for _ in 0..10 {
                let resp = lab.get(lab.nodeport(), "/productpage").expect("GET");
                assert_eq!(resp.status(), Some(200));
            }
        },
    );
    drop(lab);
    let hops = measured.summary["hops"].as_array().expect("hops").clone();
    let context = format!("{:#}\n{}", measured.summary["hops"], measured.stderr);
    let named = |h: &Value| {
        (
            h["hop"].as_str().unwrap_or("").to_owned(),
            h["namespace"].as_str().unwrap_or("").to_owned(),
            h["pod"].as_str().unwrap_or("").to_owned(),
            h["container"].as_str().unwrap_or("").to_owned(),
        )
    };
    let seen: BTreeSet<_> = hops.iter().map(named).collect();
    for svc in ["productpage", "details", "reviews", "ratings"] {
        let pod = state::pod_name(svc);
        // The lab names each app container after its service.
        for (hop, container) in [("app", svc), ("sidecar", "istio-proxy")] {
            let want = (
                hop.to_owned(),
                state::NAMESPACE.to_owned(),
                pod.clone(),
                container.to_owned(),
            );
            assert!(seen.contains(&want), "no {want:?}: {context}");
        }
    }
    // productpage's app calls details through its sidecar's outbound port; the sidecar's own
    // upstream call goes to the ClusterIP, which the API names.
    let to_details: Vec<&Value> = hops
        .iter()
        .filter(|h| {
            h["hop"] == "upstream" && h["peer_service"] == format!("{}/details", state::NAMESPACE)
        })
        .collect();
    assert!(
        !to_details.is_empty(),
        "no upstream hop named bookinfo/details: {context}"
    );
    assert!(
        to_details
            .iter()
            .all(|h| h["peer"].as_str().is_some_and(|p| p.ends_with(":9080"))),
        "{context}"
    );
    let pod_requests = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("/api/v1/pods?"))
        .count();
    assert!(pod_requests > 0);
    assert_eq!(testkit::leftovers::all(), Vec::<String>::new());
}
