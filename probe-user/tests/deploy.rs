//! deploy/: every manifest parses as YAML and as the Kubernetes object it claims to be, the
//! DaemonSet gives hopprobe what `--kube` needs (NODE_NAME from the downward API, a service
//! account the ClusterRole is bound to, read access to pods, services and endpointslices), and
//! the Helm chart rendered with its defaults is the same as the plain manifests.

use std::path::Path;

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
mod chart;

use chart::{CHART, FILES, TEMPLATES, documents};
use serde_json::Value;

// Compiled in: the test VMs carry the test binaries, not the source tree.
const MANIFESTS: [(&str, &str); 2] = [
    (
        "rbac.yaml",
        include_str!("../../deploy/kubernetes/rbac.yaml"),
    ),
    (
        "daemonset.yaml",
        include_str!("../../deploy/kubernetes/daemonset.yaml"),
    ),
];
const POD_MONITOR: &str = include_str!("../../deploy/kubernetes/podmonitor.yaml");

fn manifests() -> Vec<Value> {
    MANIFESTS
        .iter()
        .flat_map(|(name, text)| documents(text, name))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

/// Each object also deserialises as its typed Kubernetes struct (field names and types).
fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{}: {e}", v["kind"]))
}

#[test]
fn the_manifests_give_hopprobe_what_kube_needs() {
    let docs = manifests();
    let _: Namespace = typed(of_kind(&docs, "Namespace"));
    let sa: ServiceAccount = typed(of_kind(&docs, "ServiceAccount"));
    let role: ClusterRole = typed(of_kind(&docs, "ClusterRole"));
    let binding: ClusterRoleBinding = typed(of_kind(&docs, "ClusterRoleBinding"));
    let ds: DaemonSet = typed(of_kind(&docs, "DaemonSet"));

    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    assert_eq!(pod.host_network, Some(true), "TC on the node's uplink");
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--kube"), "{args:?}");
    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(node_name.as_deref(), Some("spec.nodeName"));

    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.clone().expect("role name")
    );
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
    let rules = role.rules.unwrap_or_default();
    for (group, resource) in [
        ("", "pods"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        let rule = rules
            .iter()
            .find(|r| {
                r.api_groups.iter().flatten().any(|g| g == group)
                    && r.resources.iter().flatten().any(|x| x == resource)
            })
            .unwrap_or_else(|| panic!("no rule for {resource}"));
        for verb in ["get", "list", "watch"] {
            assert!(rule.verbs.iter().any(|v| v == verb), "{resource}: {verb}");
        }
        assert!(
            !rule
                .verbs
                .iter()
                .any(|v| ["create", "update", "patch", "delete", "*"].contains(&v.as_str())),
            "{resource}: read-only"
        );
    }
}

/// The DaemonSet serves `/metrics` on the port its annotations, its probes and the PodMonitor
/// name.
#[test]
fn the_daemonset_exports_metrics_where_prometheus_looks() {
    let docs = manifests();
    let ds: DaemonSet = typed(of_kind(&docs, "DaemonSet"));
    let template = &ds.spec.as_ref().expect("spec").template;
    let c = &template.spec.as_ref().expect("pod spec").containers[0];
    let args = c.args.clone().unwrap_or_default();
    let addr = args
        .iter()
        .position(|a| a == "--metrics-addr")
        .and_then(|i| args.get(i + 1))
        .expect("--metrics-addr in the DaemonSet's args");
    let port: i32 = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("a port");
    let declared = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"));
    assert_eq!(declared.map(|p| p.container_port), Some(port));
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&port.to_string())
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    let monitor = documents(POD_MONITOR, "podmonitor.yaml")
        .pop()
        .expect("PodMonitor");
    assert_eq!(monitor["kind"], "PodMonitor");
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(labels.get(k).map(String::as_str), v.as_str(), "{k}");
    }
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
}

#[test]
fn the_helm_chart_renders_to_the_same_objects_as_the_manifests() {
    let meta = documents(CHART, "Chart.yaml");
    assert_eq!(meta[0]["apiVersion"], "v2");
    assert_eq!(meta[0]["name"], "hopprobe");
    let values = chart::values(&[]);
    // Where the source tree is at hand, no template may be missing from TEMPLATES.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/hopprobe/templates");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut on_disk: Vec<String> = entries
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let listed: Vec<String> = TEMPLATES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, listed, "templates in {}", dir.display());
    }
    let rendered = chart::objects(&values);
    // The dashboard's ConfigMap is the chart's only: with the plain manifests it is imported
    // by hand. It carries the dashboard unchanged.
    let (dashboards, rendered): (Vec<Value>, Vec<Value>) =
        rendered.into_iter().partition(|d| d["kind"] == "ConfigMap");
    assert_eq!(dashboards.len(), 1, "one ConfigMap");
    let _: ConfigMap = typed(&dashboards[0]);
    let carried: Value = serde_json::from_str(
        dashboards[0]["data"]["hopprobe.json"]
            .as_str()
            .expect("data hopprobe.json"),
    )
    .expect("the ConfigMap's dashboard is JSON");
    let file: Value = serde_json::from_str(FILES[0].1).expect("the dashboard is JSON");
    assert_eq!(carried, file);
    assert_eq!(
        dashboards[0]["metadata"]["labels"]["grafana_dashboard"], "1",
        "the label Grafana's sidecar looks for"
    );
    // The plain manifests add only the Namespace, which a Helm release is installed into.
    let plain: Vec<Value> = manifests()
        .into_iter()
        .filter(|d| d["kind"] != "Namespace")
        .collect();
    let key = |d: &Value| format!("{}/{}", d["kind"], d["metadata"]["name"]);
    let mut a: Vec<_> = plain.iter().map(|d| (key(d), d.clone())).collect();
    let mut b: Vec<_> = rendered.iter().map(|d| (key(d), d.clone())).collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a.len(), b.len(), "same objects");
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert_eq!(
            va, vb,
            "{ka} differs between deploy/kubernetes and the chart"
        );
    }
}

/// `leastPrivilege: true`: not privileged, the capabilities the hooks need and nothing else, a
/// read-only root filesystem; everything else as the default DaemonSet.
#[test]
fn the_least_privilege_daemonset_drops_privilege_and_nothing_else() {
    let daemonset = |least: bool| -> Value {
        of_kind(
            &chart::objects(&chart::values(&[("leastPrivilege", Value::Bool(least))])),
            "DaemonSet",
        )
        .clone()
    };
    let (mut privileged, least) = (daemonset(false), daemonset(true));
    let _: DaemonSet = typed(&least);
    let context = &least["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(context["privileged"], false);
    assert_eq!(context["readOnlyRootFilesystem"], true);
    assert_eq!(context["allowPrivilegeEscalation"], false);
    assert_eq!(context["seccompProfile"]["type"], "Unconfined");
    assert_eq!(context["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added = context["capabilities"]["add"].as_array().expect("add");
    for cap in ["BPF", "PERFMON", "NET_ADMIN"] {
        assert!(added.iter().any(|c| c == cap), "{cap} in {added:?}");
    }
    assert!(!added.iter().any(|c| c == "SYS_ADMIN"), "{added:?}");
    privileged["spec"]["template"]["spec"]["containers"][0]["securityContext"] = context.clone();
    assert_eq!(privileged, least);
}
