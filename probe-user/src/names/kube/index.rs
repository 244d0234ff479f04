//! What hopprobe keeps from the Kubernetes API: compact maps from the IDs and addresses the
//! probe sees to names, updated by the watchers. Only the fields needed are kept, not whole
//! objects, and deleted pods are forgotten (after a short, bounded grace list, so that a summary
//! printed just after a pod went can still name its series).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};

use crate::names::cgroup_path::{CgroupIds, container_id_from_status};

/// Deleted pods still answered for; older ones are forgotten.
pub const DELETED_PODS_KEPT: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    ips: Vec<IpAddr>,
    /// (container ID as in the cgroup path, container name).
    containers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceInfo {
    ips: Vec<IpAddr>,
    ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceInfo {
    service: String,
    ips: Vec<IpAddr>,
}

/// Names for a container cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub namespace: String,
    pub pod: String,
    /// `None` while the pod's status does not list the container yet.
    pub container: Option<String>,
}

#[derive(Debug, Default)]
pub struct KubeIndex {
    pods: HashMap<String, PodInfo>,
    pod_ips: HashMap<IpAddr, String>,
    deleted: VecDeque<(String, PodInfo)>,
    services: HashMap<String, ServiceInfo>,
    cluster_ips: HashMap<IpAddr, String>,
    slices: HashMap<String, SliceInfo>,
    /// Endpoint IP → services whose slices list it (an IP can back several services).
    endpoint_ips: HashMap<IpAddr, Vec<String>>,
}

fn ns_name(ns: Option<&String>, name: Option<&String>) -> Option<String> {
    Some(format!(
        "{}/{}",
        ns.map_or("default", String::as_str),
        name?
    ))
}

fn parse_ips<'a>(ips: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = ips.into_iter().filter_map(|s| s.parse().ok()).collect();
    out.sort();
    out.dedup();
    out
}

impl KubeIndex {
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Names for the IDs of a cgroup path: by container ID, else by pod UID.
    pub fn names(&self, ids: &CgroupIds) -> Option<Names> {
        let find = |uid: &str, pod: &PodInfo| {
            let container = ids.container_id.as_ref().and_then(|id| {
                pod.containers
                    .iter()
                    .find(|(c, _)| c == id)
                    .map(|(_, n)| n.clone())
            });
            (uid == ids.pod_uid).then(|| Names {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                container,
            })
        };
        if let Some(pod) = self.pods.get(&ids.pod_uid) {
            return find(&ids.pod_uid, pod);
        }
        self.deleted
            .iter()
            .rev()
            .find_map(|(uid, pod)| find(uid, pod))
    }

    /// `namespace/pod` of a pod on this node with this IP.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<String> {
        let pod = self.pods.get(self.pod_ips.get(&ip)?)?;
        Some(format!("{}/{}", pod.namespace, pod.name))
    }

    /// `namespace/service` for a destination: a ClusterIP on one of the Service's ports, or an
    /// endpoint (pod) IP of exactly one Service (headless Services, or a peer after DNAT).
    pub fn service_by_addr(&self, addr: SocketAddr) -> Option<String> {
        let ip = canonical(addr.ip());
        if let Some(svc) = self.cluster_ips.get(&ip) {
            let ports = &self.services.get(svc)?.ports;
            return (ports.is_empty() || ports.contains(&addr.port())).then(|| svc.clone());
        }
        match self.endpoint_ips.get(&ip).map(Vec::as_slice) {
            Some([one]) => Some(one.clone()),
            _ => None,
        }
    }

    fn unindex_pod(&mut self, uid: &str) -> Option<PodInfo> {
        let old = self.pods.remove(uid)?;
        for ip in &old.ips {
            if self.pod_ips.get(ip).is_some_and(|u| u == uid) {
                self.pod_ips.remove(ip);
            }
        }
        Some(old)
    }

    pub fn upsert_pod(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.unindex_pod(&uid);
        let status = pod.status.as_ref();
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        // A host-network pod has the node's IP, which names no pod.
        let ips = if host_network {
            Vec::new()
        } else {
            parse_ips(
                status
                    .and_then(|s| s.pod_ips.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|p| &p.ip)
                    .chain(status.and_then(|s| s.pod_ip.as_ref())),
            )
        };
        let containers: Vec<(String, String)> = status
            .into_iter()
            .flat_map(|s| {
                [
                    &s.container_statuses,
                    &s.init_container_statuses,
                    &s.ephemeral_container_statuses,
                ]
            })
            .flatten()
            .flatten()
            .filter_map(|c| {
                Some((
                    container_id_from_status(c.container_id.as_deref()?)?,
                    c.name.clone(),
                ))
            })
            .collect();
        for ip in &ips {
            self.pod_ips.insert(*ip, uid.clone());
        }
        self.pods.insert(
            uid,
            PodInfo {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                ips,
                containers,
            },
        );
    }

    pub fn remove_pod(&mut self, uid: &str) {
        if let Some(old) = self.unindex_pod(uid) {
            if self.deleted.len() == DELETED_PODS_KEPT {
                self.deleted.pop_front();
            }
            self.deleted.push_back((uid.to_owned(), old));
        }
    }

    pub fn pod_keys(&self) -> HashSet<String> {
        self.pods.keys().cloned().collect()
    }

    pub fn upsert_service(&mut self, svc: &Service) {
        let Some(key) = ns_name(svc.metadata.namespace.as_ref(), svc.metadata.name.as_ref()) else {
            return;
        };
        self.remove_service(&key);
        let spec = svc.spec.as_ref();
        // Headless Services have the ClusterIP "None", which does not parse and is dropped.
        let ips = parse_ips(
            spec.and_then(|s| s.cluster_ips.as_ref())
                .into_iter()
                .flatten()
                .chain(spec.and_then(|s| s.cluster_ip.as_ref())),
        );
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| u16::try_from(p.port).ok())
            .collect();
        for ip in &ips {
            self.cluster_ips.insert(*ip, key.clone());
        }
        self.services.insert(key, ServiceInfo { ips, ports });
    }

    pub fn remove_service(&mut self, key: &str) {
        if let Some(old) = self.services.remove(key) {
            for ip in &old.ips {
                if self.cluster_ips.get(ip).is_some_and(|k| k == key) {
                    self.cluster_ips.remove(ip);
                }
            }
        }
    }

    pub fn service_keys(&self) -> HashSet<String> {
        self.services.keys().cloned().collect()
    }

    pub fn upsert_slice(&mut self, slice: &EndpointSlice) {
        let Some(key) = ns_name(
            slice.metadata.namespace.as_ref(),
            slice.metadata.name.as_ref(),
        ) else {
            return;
        };
        self.remove_slice(&key);
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            return;
        };
        let service = format!(
            "{}/{service}",
            slice.metadata.namespace.as_deref().unwrap_or("default")
        );
        let ips = parse_ips(slice.endpoints.iter().flat_map(|e| &e.addresses));
        for ip in &ips {
            let services = self.endpoint_ips.entry(*ip).or_default();
            if !services.contains(&service) {
                services.push(service.clone());
            }
        }
        self.slices.insert(key, SliceInfo { service, ips });
    }

    pub fn remove_slice(&mut self, key: &str) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        for ip in &old.ips {
            // Another slice of the same Service may still list the IP.
            let still = self
                .slices
                .values()
                .any(|s| s.service == old.service && s.ips.contains(ip));
            if still {
                continue;
            }
            if let Some(services) = self.endpoint_ips.get_mut(ip) {
                services.retain(|s| *s != old.service);
                if services.is_empty() {
                    self.endpoint_ips.remove(ip);
                }
            }
        }
    }

    pub fn slice_keys(&self) -> HashSet<String> {
        self.slices.keys().cloned().collect()
    }

    /// Entries in the maps, to show that memory follows the cluster, not the run's length.
    pub fn entries(&self) -> usize {
        self.pods.len()
            + self.pod_ips.len()
            + self.deleted.len()
            + self.services.len()
            + self.cluster_ips.len()
            + self.slices.len()
            + self.endpoint_ips.len()
    }
}

/// Sockets report IPv4 peers of dual-stack sockets as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UID: &str = "82c0a928-1df8-41d3-8c76-d2323d47e853";

    fn pod(uid: &str, name: &str, ip: &str, containers: &[(&str, &str)]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"uid": uid, "namespace": "shop", "name": name},
            "status": {
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "containerStatuses": containers.iter().map(|(n, id)| json!({
                    "name": n, "containerID": format!("containerd://{id}"),
                    "image": "i", "imageID": "", "ready": true, "restartCount": 0
                })).collect::<Vec<_>>(),
            }
        }))
        .expect("pod")
    }

    fn ids(container: Option<&str>) -> CgroupIds {
        CgroupIds {
            pod_uid: UID.into(),
            container_id: container.map(Into::into),
        }
    }

    #[test]
    fn pods_name_their_containers_and_ips_and_are_forgotten_when_deleted() {
        let mut idx = KubeIndex::default();
        idx.upsert_pod(&pod(
            UID,
            "productpage-0",
            "10.1.0.5",
            &[("app", "aa11"), ("istio-proxy", "bb22")],
        ));
        let n = idx.names(&ids(Some("bb22"))).expect("named");
        assert_eq!(
            (n.namespace.as_str(), n.pod.as_str(), n.container.as_deref()),
            ("shop", "productpage-0", Some("istio-proxy"))
        );
        // A container the status does not list yet still gets its pod's names.
        assert_eq!(
            idx.names(&ids(Some("cc33"))).and_then(|n| n.container),
            None
        );
        assert!(idx.names(&ids(Some("cc33"))).is_some());
        assert_eq!(
            idx.pod_by_ip("10.1.0.5".parse().expect("ip")).as_deref(),
            Some("shop/productpage-0")
        );

        idx.remove_pod(UID);
        assert_eq!(idx.pod_count(), 0);
        assert_eq!(idx.pod_by_ip("10.1.0.5".parse().expect("ip")), None);
        // Still named from the grace list.
        assert!(idx.names(&ids(Some("aa11"))).is_some());
    }

    #[test]
    fn memory_stays_bounded_as_pods_come_and_go() {
        let mut idx = KubeIndex::default();
        for i in 0..5000u32 {
            let uid = format!("{:08x}-0000-0000-0000-000000000000", i);
            idx.upsert_pod(&pod(
                &uid,
                &format!("job-{i}"),
                &format!("10.2.{}.{}", i / 250, i % 250),
                &[("c", &format!("{i:x}"))],
            ));
            idx.remove_pod(&uid);
        }
        assert_eq!(idx.pod_count(), 0);
        assert_eq!(idx.entries(), DELETED_PODS_KEPT);
    }

    #[test]
    fn cluster_ips_on_their_ports_and_single_service_endpoints_name_services() {
        let mut idx = KubeIndex::default();
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "details"},
            "spec": {"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11"], "ports": [{"port": 9080}]}
        }))
        .expect("svc");
        idx.upsert_service(&svc);
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
        }))
        .expect("svc");
        idx.upsert_service(&headless);
        let slice = |name: &str, svc: &str, ips: &[&str]| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": name, "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ips}],
            }))
            .expect("slice")
        };
        idx.upsert_slice(&slice("db-abc", "db", &["10.1.0.9"]));
        idx.upsert_slice(&slice("a-1", "a", &["10.1.0.7"]));
        idx.upsert_slice(&slice("b-1", "b", &["10.1.0.7"]));

        let at = |idx: &KubeIndex, s: &str| idx.service_by_addr(s.parse().expect("addr"));
        assert_eq!(at(&idx, "10.96.0.11:9080").as_deref(), Some("shop/details"));
        assert_eq!(
            at(&idx, "[::ffff:10.96.0.11]:9080").as_deref(),
            Some("shop/details")
        );
        assert_eq!(at(&idx, "10.96.0.11:22"), None);
        assert_eq!(at(&idx, "10.1.0.9:5432").as_deref(), Some("shop/db"));
        // Behind two Services: ambiguous, so unnamed.
        assert_eq!(at(&idx, "10.1.0.7:80"), None);
        idx.remove_slice("shop/b-1");
        assert_eq!(at(&idx, "10.1.0.7:80").as_deref(), Some("shop/a"));
        idx.remove_service("shop/details");
        assert_eq!(at(&idx, "10.96.0.11:9080"), None);
    }
}
