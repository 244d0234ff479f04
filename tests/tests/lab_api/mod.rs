//! The lab's objects as a Kubernetes API server serves them, for the tests that run hopprobe
//! with `--kube`.

use serde_json::json;
use testkit::lab::{Lab, state};

use crate::fake_api::{FakeApi, Kind};

/// Serves the lab's pods (on node `node`) and Services from the fake API server, listening on
/// 127.0.0.1 in network namespace `netns` (`/run/netns/<name>`; the caller's when `None`).
pub fn serve(lab: &Lab, node: &str, netns: Option<&str>) -> FakeApi {
    let netns = netns.map(|p| std::fs::File::open(p).expect("network namespace"));
    let api = FakeApi::start_on_thread(netns);
    for pod in &lab.state.pods {
        api.apply(
            Kind::Pod,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"uid": pod.uid, "namespace": state::NAMESPACE, "name": state::pod_name(&pod.service)},
                "spec": {"nodeName": node, "containers": pod.containers.iter().map(|c| json!({"name": c.name})).collect::<Vec<_>>()},
                "status": {
                    "podIP": pod.ip.to_string(), "podIPs": [{"ip": pod.ip.to_string()}],
                    "containerStatuses": pod.containers.iter().map(|c| json!({
                        "name": c.name, "containerID": format!("containerd://{}", c.container_id),
                        "image": "img", "imageID": "", "ready": true, "restartCount": 0
                    })).collect::<Vec<_>>(),
                }
            }),
        );
        api.apply(
            Kind::Service,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": state::NAMESPACE, "name": pod.service},
                "spec": {"clusterIP": pod.cluster_ip.to_string(), "clusterIPs": [pod.cluster_ip.to_string()], "ports": [{"port": 9080}]}
            }),
        );
    }
    api
}
