//! Every name, address and cgroup path of a lab, derived from the lab's name.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

/// The node's uplink address, which the client reaches NodePorts at.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Pods' default gateway, answered by a static neighbour entry as AWS VPC CNI does.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const APP_PORT: u16 = 9080;
pub const INGRESS_PORT: u16 = 8080;
pub const NODEPORT_PRODUCTPAGE: u16 = 30080;
pub const NODEPORT_INGRESS: u16 = 30081;
/// Istio's ports: inbound capture and the proxy's user id, which its own traffic is exempt by.
pub const SIDECAR_INBOUND_PORT: u16 = 15006;
pub const SIDECAR_OUTBOUND_BASE: u16 = 15100;
pub const PROXY_UID: u32 = 1337;

/// A pod of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pod {
    pub service: &'static str,
    index: u8,
}

pub const INGRESS_SERVICE: &str = "ingress";

pub fn pod(service: &'static str) -> Pod {
    let index = match service {
        "productpage" => 0,
        "details" => 1,
        "reviews" => 2,
        "ratings" => 3,
        _ => 10,
    };
    Pod { service, index }
}

impl Pod {
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, 0, 10 + self.index)
    }

    pub fn cluster_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 96, 0, 10 + self.index)
    }

    pub fn port(&self) -> u16 {
        if self.service == INGRESS_SERVICE {
            INGRESS_PORT
        } else {
            APP_PORT
        }
    }

    pub fn service_addr(&self) -> SocketAddr {
        SocketAddr::new(self.cluster_ip().into(), self.port())
    }

    /// The outbound port a sidecar listens on for calls to this service.
    pub fn outbound_port(&self) -> u16 {
        SIDECAR_OUTBOUND_BASE + u16::from(self.index)
    }
}

/// FNV-1a: stable across builds, unlike std's hasher, so names stay the same between runs.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[derive(Debug, Clone)]
pub struct Names {
    pub lab: String,
}

impl Names {
    pub fn new(lab: &str) -> Self {
        Self {
            lab: lab.to_owned(),
        }
    }

    pub fn netns(&self, role: &str) -> String {
        format!("{}-{role}", self.lab)
    }

    /// Host-side veth of a pod, named as AWS VPC CNI names them (`eni` + hash).
    pub fn host_veth(&self, pod: &Pod) -> String {
        format!(
            "eni{:011x}",
            fnv(&[&self.lab, pod.service]) & 0xfff_ffff_ffff
        )
    }

    /// A pod UID in Kubernetes' UUID format.
    pub fn pod_uid(&self, pod: &Pod) -> String {
        let a = fnv(&[&self.lab, pod.service, "uid"]);
        let b = fnv(&[pod.service, &self.lab, "uid"]);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    pub fn container_id(&self, pod: &Pod, container: &str) -> String {
        (0..4)
            .map(|i| {
                format!(
                    "{:016x}",
                    fnv(&[&self.lab, pod.service, container, &i.to_string()])
                )
            })
            .collect()
    }

    pub fn cgroup_root(&self, v2: &Path) -> PathBuf {
        v2.join(format!("hopprobe-lab-{}", self.lab))
    }

    /// The path kubelet's systemd driver and containerd give a container, relative to the
    /// lab's cgroup root.
    pub fn container_cgroup(&self, pod: &Pod, container: &str) -> PathBuf {
        let uid = self.pod_uid(pod).replace('-', "_");
        PathBuf::from("kubepods.slice/kubepods-burstable.slice")
            .join(format!("kubepods-burstable-pod{uid}.slice"))
            .join(format!(
                "cri-containerd-{}.scope",
                self.container_id(pod, container)
            ))
    }

    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(STATE_DIR).join(&self.lab)
    }

    pub fn state_file(&self) -> PathBuf {
        PathBuf::from(STATE_DIR).join(format!("{}.json", self.lab))
    }
}

pub const STATE_DIR: &str = "/run/hopprobe-lab";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_look_like_a_kubernetes_node() {
        let n = Names::new("hpl");
        let pp = pod("productpage");
        let veth = n.host_veth(&pp);
        assert!(veth.starts_with("eni") && veth.len() == 14, "{veth}");
        let uid = n.pod_uid(&pp);
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.matches('-').count(), 4);
        assert_eq!(n.container_id(&pp, "productpage").len(), 64);
        let cg = n.container_cgroup(&pp, "istio-proxy");
        let s = cg.to_string_lossy();
        assert!(s.starts_with("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"));
        assert!(
            s.ends_with(".scope") && s.contains("/cri-containerd-"),
            "{s}"
        );
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let (a, b) = (Names::new("hpl"), Names::new("hpt1"));
        let pp = pod("productpage");
        assert_eq!(a.pod_uid(&pp), Names::new("hpl").pod_uid(&pp));
        assert_ne!(a.pod_uid(&pp), b.pod_uid(&pp));
        assert_ne!(a.host_veth(&pp), a.host_veth(&pod("details")));
        assert_ne!(pp.ip(), pod("details").ip());
    }
}
