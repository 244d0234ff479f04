//! hopprobe's Kubernetes API source against a fake API server (no cluster, no root): the names
//! it maps, that it asks only for this node's pods, that changes while it runs are picked up,
//! and what it does when the API server refuses it or cannot be reached.

mod fake_api;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use fake_api::{FakeApi, Kind, cgroup_path, endpoint_slice, pod, service};
use probe_user::names::{
    Metadata,
    kube::{self, KubeError, KubeOptions},
};

const U1: &str = "11111111-1df8-41d3-8c76-d2323d47e853";
const U2: &str = "22222222-1df8-41d3-8c76-d2323d47e853";
const U3: &str = "33333333-1df8-41d3-8c76-d2323d47e853";

fn options(node: &str, timeout: Duration) -> KubeOptions {
    KubeOptions {
        kubeconfig: None,
        node: node.into(),
        timeout,
    }
}

/// Polls `f` until it holds or 3 s pass.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "not within 3 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

#[tokio::test]
async fn names_pods_containers_and_services_of_this_node_and_follows_changes() {
    let api = FakeApi::start().await;
    api.apply(
        Kind::Pod,
        pod(
            U1,
            "productpage-0",
            "node-a",
            "10.1.0.5",
            &[("app", "aa11"), ("istio-proxy", "bb22")],
        ),
    );
    api.apply(
        Kind::Pod,
        pod(U2, "elsewhere-0", "node-b", "10.1.1.5", &[("app", "cc33")]),
    );
    api.apply(Kind::Service, service("details", "10.96.0.11", 9080));
    api.apply(Kind::Service, service("db", "None", 5432));
    api.apply(
        Kind::EndpointSlice,
        endpoint_slice("db-x1", "db", &["10.1.1.9"]),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let config = kube::config_from_file(&api.kubeconfig(dir.path()))
        .await
        .expect("config");
    let source = kube::start(config, &options("node-a", Duration::from_secs(5)))
        .await
        .expect("started");
    let m = Metadata::default().with_kube(source.names.clone());

    // Mapped at once: start-up returns only after the first list of every kind.
    let n = m.lookup(&cgroup_path(U1, "bb22")).expect("named");
    assert_eq!(
        (n.namespace.as_str(), n.pod.as_str(), n.container.as_deref()),
        ("shop", "productpage-0", Some("istio-proxy"))
    );
    assert_eq!(
        m.lookup(&cgroup_path(U1, "aa11"))
            .and_then(|n| n.container)
            .as_deref(),
        Some("app")
    );
    let peer = m.peer("10.96.0.11:9080".parse().expect("addr"));
    assert_eq!(peer.service.as_deref(), Some("shop/details"));
    let peer = m.peer("10.1.0.5:9080".parse().expect("addr"));
    assert_eq!(peer.pod.as_deref(), Some("shop/productpage-0"));
    assert_eq!(
        m.peer("10.1.1.9:5432".parse().expect("addr"))
            .service
            .as_deref(),
        Some("shop/db")
    );

    // Only this node's pods: asked with the field selector, and the other node's pod is unknown.
    let pod_requests: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("/api/v1/pods?"))
        .collect();
    assert!(!pod_requests.is_empty());
    for r in &pod_requests {
        assert!(r.contains("fieldSelector=spec.nodeName%3Dnode-a"), "{r}");
    }
    assert!(m.lookup(&cgroup_path(U2, "cc33")).is_none());
    assert!(m.peer("10.1.1.5:80".parse().expect("addr")).pod.is_none());

    // A pod added while running: first without a started container, then with it.
    api.apply(
        Kind::Pod,
        pod(U3, "reviews-0", "node-a", "10.1.0.7", &[("app", "")]),
    );
    let took = eventually("the new pod is named", || {
        m.lookup(&cgroup_path(U3, "dd44")).is_some()
    })
    .await;
    println!("a pod added mid-run was named after {took:?}");
    assert_eq!(
        m.lookup(&cgroup_path(U3, "dd44")).and_then(|n| n.container),
        None
    );
    api.apply(
        Kind::Pod,
        pod(U3, "reviews-0", "node-a", "10.1.0.7", &[("app", "dd44")]),
    );
    eventually("the started container is named", || {
        m.lookup(&cgroup_path(U3, "dd44"))
            .and_then(|n| n.container)
            .as_deref()
            == Some("app")
    })
    .await;
    // The other node's new pod does not arrive.
    api.apply(
        Kind::Pod,
        pod(
            "44444444-1df8-41d3-8c76-d2323d47e853",
            "x",
            "node-b",
            "10.1.1.8",
            &[("app", "ee55")],
        ),
    );

    // A Service added while running, and one deleted.
    api.apply(Kind::Service, service("ratings", "10.96.0.13", 9080));
    eventually("the new service is named", || {
        m.peer("10.96.0.13:9080".parse().expect("addr"))
            .service
            .as_deref()
            == Some("shop/ratings")
    })
    .await;
    api.delete(Kind::Service, "shop", "details");
    eventually("the deleted service is forgotten", || {
        m.peer("10.96.0.11:9080".parse().expect("addr"))
            .service
            .is_none()
    })
    .await;

    // A deleted pod leaves the live maps (its IP names nothing) and its count drops.
    api.delete(Kind::Pod, "shop", "productpage-0");
    eventually("the deleted pod is forgotten", || {
        m.peer("10.1.0.5:9080".parse().expect("addr")).pod.is_none()
    })
    .await;
    assert_eq!(
        source.names.read(|i| i.pod_count()),
        1,
        "only reviews-0 is left"
    );
    assert!(
        m.lookup(&cgroup_path("44444444-1df8-41d3-8c76-d2323d47e853", "ee55"))
            .is_none()
    );
}

#[tokio::test]
async fn a_file_entry_wins_over_the_api() {
    let api = FakeApi::start().await;
    api.apply(
        Kind::Pod,
        pod(
            U1,
            "productpage-0",
            "node-a",
            "10.1.0.5",
            &[("app", "aa11")],
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kube::config_from_file(&api.kubeconfig(dir.path()))
        .await
        .expect("config");
    let source = kube::start(config, &options("node-a", Duration::from_secs(5)))
        .await
        .expect("started");
    let file = probe_user::names::MetadataFile {
        containers: vec![probe_user::names::ContainerMeta {
            container_id: "aa11".into(),
            namespace: "from-file".into(),
            pod: "pp".into(),
            container: "app-renamed".into(),
        }],
        interfaces: vec![],
    };
    let m = Metadata::from_file(file).with_kube(source.names.clone());
    let n = m.lookup(&cgroup_path(U1, "aa11")).expect("named");
    assert_eq!(
        (n.namespace.as_str(), n.container.as_deref()),
        ("from-file", Some("app-renamed"))
    );
}

#[tokio::test]
async fn forbidden_stops_at_once_with_the_rbac_it_needs() {
    let api = FakeApi::start().await;
    api.deny_everything();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kube::config_from_file(&api.kubeconfig(dir.path()))
        .await
        .expect("config");
    let t = Instant::now();
    let err = kube::start(config, &options("node-a", Duration::from_secs(10)))
        .await
        .expect_err("refused");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(matches!(err, KubeError::Denied { code: 403, .. }), "{err}");
    assert_eq!(err.exit_code(), 3);
    let text = err.to_string();
    assert!(
        text.contains("endpointslices") && text.contains("rbac.yaml"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_fails_within_the_timeout() {
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
        ),
    )
    .expect("write");
    let config = kube::config_from_file(&path).await.expect("config");
    let t = Instant::now();
    let err = kube::start(config, &options("node-a", Duration::from_millis(1500)))
        .await
        .expect_err("unreachable");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert!(matches!(err, KubeError::Timeout { .. }), "{err}");
    assert_eq!(err.exit_code(), 1);
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

/// A server that accepts connections and never answers must not hang start-up either.
#[tokio::test]
async fn a_silent_api_server_fails_within_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
        ),
    )
    .expect("write");
    let config = kube::config_from_file(&path).await.expect("config");
    let t = Instant::now();
    let err = kube::start(config, &options("node-a", Duration::from_secs(1)))
        .await
        .expect_err("silent");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert!(matches!(err, KubeError::Timeout { .. }), "{err}");
    held.abort();
}

/// The binary: 403 exits 3 before anything is attached (so no root is needed to see it), a
/// missing node name exits 2, and neither hangs.
#[test]
fn hopprobe_run_exits_3_when_forbidden_and_2_without_a_node_name() {
    // The server runs on its own thread while this one waits for the child processes.
    let api = FakeApi::start_on_thread(None);
    api.deny_everything();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path());
    let hopprobe = env!("CARGO_BIN_EXE_hopprobe");

    let t = Instant::now();
    let out = Command::new(hopprobe)
        .args([
            "run",
            "--kube",
            "--node-name",
            "node-a",
            "--duration",
            "5s",
            "--kube-timeout",
            "5s",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("403") && stderr.contains("endpointslices"),
        "{stderr}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        !api.requests().is_empty(),
        "hopprobe never asked the fake API server"
    );

    let out = Command::new(hopprobe)
        .args(["run", "--kube", "--duration", "1s"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env_remove("NODE_NAME")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("NODE_NAME"), "{stderr}");

    // Inside a pod without --kube the API is used too, so NODE_NAME is needed there as well.
    let out = Command::new(hopprobe)
        .args(["run", "--duration", "1s"])
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env_remove("NODE_NAME")
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
