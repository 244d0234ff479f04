//! Who a cgroup belongs to: the pod UID and container ID that kubelet and the container runtime
//! write into cgroup paths, and the names (namespace, pod, container) from a metadata source.
//!
//! Sources today: a JSON file (`--metadata`, which the lab writes); the Kubernetes API is the
//! source on a real node (not built yet). Without names, series still carry the IDs.

use std::{collections::HashMap, path::Path};

use serde::{Deserialize, Serialize};

/// IDs parsed from a kubelet-made cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupIds {
    pub pod_uid: String,
    pub container_id: Option<String>,
}

/// Parses both kubelet cgroup drivers:
/// systemd `…/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
/// (also `crio-`, `docker-`), and cgroupfs `…/kubepods/burstable/pod<uid>/<id>`.
pub fn parse_cgroup_path(path: &str) -> Option<CgroupIds> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (i, uid) = parts.iter().enumerate().find_map(|(i, p)| {
        let p = p.strip_suffix(".slice").unwrap_or(p);
        let at = p.rfind("pod")?;
        let uid = &p[at + 3..];
        let uid = uid.replace('_', "-");
        (uid.len() == 36 && uid.matches('-').count() == 4).then_some((i, uid))
    })?;
    let container_id = parts.get(i + 1).map(|c| {
        let c = c.strip_suffix(".scope").unwrap_or(c);
        c.rsplit('-').next().unwrap_or(c).to_owned()
    });
    Some(CgroupIds {
        pod_uid: uid,
        container_id,
    })
}

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
        }
    }

    /// Names for a cgroup path, when it is a container's and the source knows it.
    pub fn lookup(&self, cgroup_path: &str) -> Option<&ContainerMeta> {
        let ids = parse_cgroup_path(cgroup_path)?;
        self.by_container.get(ids.container_id.as_deref()?)
    }
}

impl Metadata {
    pub fn interface(&self, name: &str) -> Option<&InterfaceMeta> {
        self.by_interface.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "82c0a928-1df8-41d3-8c76-d2323d47e853";

    #[test]
    fn parses_the_systemd_driver_layout() {
        let p = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod82c0a928_1df8_41d3_8c76_d2323d47e853.slice/cri-containerd-ac39119b.scope";
        let ids = parse_cgroup_path(p).expect("parsed");
        assert_eq!(ids.pod_uid, UID);
        assert_eq!(ids.container_id.as_deref(), Some("ac39119b"));
    }

    #[test]
    fn parses_the_cgroupfs_layout_and_pod_level_cgroups() {
        let p = format!("/kubepods/besteffort/pod{UID}/0123abcd");
        let ids = parse_cgroup_path(&p).expect("parsed");
        assert_eq!(
            (ids.pod_uid.as_str(), ids.container_id.as_deref()),
            (UID, Some("0123abcd"))
        );
        let pod_only = parse_cgroup_path(&format!("/kubepods/pod{UID}")).expect("parsed");
        assert_eq!(pod_only.container_id, None);
        assert_eq!(parse_cgroup_path("/system.slice/sshd.service"), None);
    }

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
            m.lookup(&p).map(|c| c.container.as_str()),
            Some("istio-proxy")
        );
        assert!(m.lookup("/user.slice").is_none());
    }
}
