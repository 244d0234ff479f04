//! Who a cgroup belongs to: the pod UID and container ID that kubelet and the container runtime
//! write into cgroup paths (`cgroup_path`), and the names (namespace, pod, container, peer
//! service) for them from two sources: the Kubernetes API (`kube`, on a real node) and a JSON
//! file (`--metadata`, which the lab writes). Where both know a container or interface, the
//! file wins: it is what an operator wrote on purpose. Without names, series carry the IDs.

pub mod cgroup;
pub mod cgroup_path;
pub mod kube;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use serde::{Deserialize, Serialize};

pub use cgroup_path::{CgroupIds, parse_cgroup_path};
pub use kube::{KubeNames, Names};

/// Names of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub container_id: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// The pod behind a host-side veth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceMeta {
    pub interface: String,
    pub namespace: String,
    pub pod: String,
}

/// The `--metadata` file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetadataFile {
    pub containers: Vec<ContainerMeta>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceMeta>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a metadata file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Metadata {
    by_container: HashMap<String, ContainerMeta>,
    by_interface: HashMap<String, InterfaceMeta>,
    /// Live names from the API server; the watchers update them while hopprobe runs.
    kube: Option<KubeNames>,
}

/// Names for a destination (`peer` of a hop).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames {
    /// `namespace/service`.
    pub service: Option<String>,
    /// `namespace/pod`, for a pod on this node.
    pub pod: Option<String>,
}

/// Container names that are proxies: their exchanges pair into sidecar hops.
pub const DEFAULT_PROXY_CONTAINERS: &str = "istio-proxy,linkerd-proxy,envoy,cilium-envoy";

impl Metadata {
    pub fn load(path: &Path) -> Result<Self, MetadataError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| MetadataError::Read {
            path: p.clone(),
            source,
        })?;
        let file: MetadataFile = serde_json::from_str(&text)
            .map_err(|source| MetadataError::Parse { path: p, source })?;
        Ok(Self::from_file(file))
    }

    pub fn from_file(file: MetadataFile) -> Self {
        Self {
            by_container: file
                .containers
                .into_iter()
                .map(|c| (c.container_id.clone(), c))
                .collect(),
            by_interface: file
                .interfaces
                .into_iter()
                .map(|i| (i.interface.clone(), i))
                .collect(),
            kube: None,
        }
    }

    /// Adds the API server's names, behind the file's.
    pub fn with_kube(mut self, names: KubeNames) -> Self {
        self.kube = Some(names);
        self
    }

    /// Names for a cgroup path, when it is a container's (or a pod's) and a source knows it.
    /// Asked again each time, so names that arrive while hopprobe runs apply from then on.
    pub fn lookup(&self, cgroup_path: &str) -> Option<Names> {
        let ids = parse_cgroup_path(cgroup_path)?;
        if let Some(c) = ids
            .container_id
            .as_deref()
            .and_then(|id| self.by_container.get(id))
        {
            return Some(Names {
                namespace: c.namespace.clone(),
                pod: c.pod.clone(),
                container: Some(c.container.clone()),
            });
        }
        self.kube.as_ref()?.read(|idx| idx.names(&ids))
    }

    /// Whether names can still arrive while hopprobe runs (from the API server).
    pub fn is_live(&self) -> bool {
        self.kube.is_some()
    }

    pub fn interface(&self, name: &str) -> Option<&InterfaceMeta> {
        self.by_interface.get(name)
    }

    /// The Service (and, on this node, the pod) a destination address belongs to.
    pub fn peer(&self, addr: SocketAddr) -> PeerNames {
        let Some(kube) = &self.kube else {
            return PeerNames::default();
        };
        kube.read(|idx| PeerNames {
            service: idx.service_by_addr(addr),
            pod: idx.pod_by_ip(match addr.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr.ip(), IpAddr::V4),
                v4 => v4,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "82c0a928-1df8-41d3-8c76-d2323d47e853";

    #[test]
    fn looks_names_up_by_container_id() {
        let m = Metadata::from_file(MetadataFile {
            containers: vec![ContainerMeta {
                container_id: "ac39119b".into(),
                namespace: "default".into(),
                pod: "productpage-v1".into(),
                container: "istio-proxy".into(),
            }],
            interfaces: vec![],
        });
        let p = format!(
            "/x/kubepods-pod{}.slice/cri-containerd-ac39119b.scope",
            UID.replace('-', "_")
        );
        assert_eq!(
            m.lookup(&p).and_then(|c| c.container),
            Some("istio-proxy".to_owned())
        );
        assert!(m.lookup("/user.slice").is_none());
    }
}
