//! What a running lab consists of, kept in `/run/hopprobe-lab/<name>.json` so that `status`
//! and `down` work from any process, also after the creator was killed.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use probe_user::names::{ContainerMeta, InterfaceMeta, MetadataFile};
use serde::{Deserialize, Serialize};

use super::{
    LabError,
    config::{LabConfig, Mesh},
    io_err,
    names::{CLIENT_IP, NODE_IP, NODEPORT_INGRESS, NODEPORT_PRODUCTPAGE, Names},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub name: String,
    pub container_id: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub pid: u32,
    pub command: String,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub service: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub cluster_ip: Ipv4Addr,
    pub host_veth: String,
    pub uid: String,
    pub containers: Vec<ContainerState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub config: LabConfig,
    pub client_netns: String,
    pub node_netns: String,
    pub cgroup_root: PathBuf,
    pub pods: Vec<PodState>,
    /// Names of the lab's containers and veths for `hopprobe run --metadata`.
    pub metadata_file: PathBuf,
}

/// The Kubernetes namespace the lab's pods are in.
pub const NAMESPACE: &str = "bookinfo";

/// Pod names as a Deployment would give them.
pub fn pod_name(service: &str) -> String {
    if service == super::names::INGRESS_SERVICE {
        "istio-ingressgateway".into()
    } else {
        format!("{service}-v1")
    }
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; /proc/<pid>/stat says so with state Z.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

impl LabState {
    pub fn new(config: LabConfig, names: &Names, cgroup_root: PathBuf) -> Self {
        Self {
            client_netns: names.netns("client"),
            node_netns: names.netns("node"),
            config,
            cgroup_root,
            pods: Vec::new(),
            metadata_file: names.state_dir().join("metadata.json"),
        }
    }

    pub fn containers(&self) -> impl Iterator<Item = (&PodState, &ContainerState)> {
        self.pods
            .iter()
            .flat_map(|p| p.containers.iter().map(move |c| (p, c)))
    }

    /// `pod/container` of every container whose process is gone.
    pub fn dead_containers(&self) -> Vec<String> {
        self.containers()
            .filter(|(_, c)| !alive(c.pid))
            .map(|(p, c)| format!("{}/{}", p.service, c.name))
            .collect()
    }

    pub fn healthy(&self) -> bool {
        !self.pods.is_empty() && self.dead_containers().is_empty()
    }

    pub fn log_tail(&self, pod_container: &str) -> String {
        self.containers()
            .find(|(p, c)| format!("{}/{}", p.service, c.name) == pod_container)
            .and_then(|(_, c)| fs::read_to_string(&c.log).ok())
            .map(|log| {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            })
            .unwrap_or_default()
    }

    /// The lab as a Kubernetes API would name it, for `hopprobe run --metadata`.
    pub fn metadata(&self) -> MetadataFile {
        let mut m = MetadataFile::default();
        for p in &self.pods {
            let pod = pod_name(&p.service);
            m.interfaces.push(InterfaceMeta {
                interface: p.host_veth.clone(),
                namespace: NAMESPACE.into(),
                pod: pod.clone(),
            });
            for c in &p.containers {
                m.containers.push(ContainerMeta {
                    container_id: c.container_id.clone(),
                    namespace: NAMESPACE.into(),
                    pod: pod.clone(),
                    container: c.name.clone(),
                });
            }
        }
        m
    }

    /// What `lab status` prints.
    pub fn render(&self) -> String {
        let c = &self.config;
        let nodeport = format!("http://{NODE_IP}:{NODEPORT_PRODUCTPAGE}/productpage");
        let mut out = format!(
            "lab `{}`: mesh {}, ingress {}\n\n\
             client namespace {} ({CLIENT_IP}) reaches:\n",
            c.name,
            c.mesh,
            if c.ingress { "yes" } else { "no" },
            self.client_netns
        );
        // Under strict mTLS the NodePort straight to productpage is refused.
        let mut example = format!("curl {nodeport}");
        if !c.mtls {
            out.push_str(&format!("  NodePort  {nodeport}\n"));
        }
        if c.ingress {
            let scheme = if c.ingress_tls { "https" } else { "http" };
            let url = format!("{scheme}://{NODE_IP}:{NODEPORT_INGRESS}/productpage");
            out.push_str(&format!("  ingress   {url}\n"));
            if c.mtls {
                // -k: the ingress's certificate is signed by the lab's CA, not a public one.
                example = format!("curl {}{url}", if c.ingress_tls { "-k " } else { "" });
            }
        }
        out.push_str(&format!(
            "  e.g. ip netns exec {} {example}\n\n\
             node namespace {} (uplink eth0 {NODE_IP}), cgroup root {}\n\
             measure it: hopprobe run --netns /run/netns/{} --metadata {}\n\n",
            self.client_netns,
            self.node_netns,
            self.cgroup_root.display(),
            self.node_netns,
            self.metadata_file.display()
        ));
        out.push_str("injected:\n");
        if !c.link_delay.is_zero() {
            // The delay line is the only process in its cgroup; without it the link is gone.
            let procs = self
                .cgroup_root
                .join(super::WIRE_CGROUP)
                .join("cgroup.procs");
            let running = fs::read_to_string(procs).is_ok_and(|p| !p.trim().is_empty());
            out.push_str(&format!(
                "  client link  {:?} each way (delay line between TAP devices, {})\n",
                c.link_delay,
                if running { "up" } else { "DEAD" }
            ));
        }
        for p in &self.pods {
            if p.service != super::names::INGRESS_SERVICE {
                out.push_str(&format!(
                    "  {:<12} service time {}, {} workers\n",
                    p.service,
                    c.delay_of(&p.service),
                    c.workers_of(&p.service)
                ));
            }
        }
        if c.mesh == Mesh::Sidecar {
            match &c.sidecar_cmd {
                Some(cmd) => out.push_str(&format!("  sidecars     your proxy: {cmd}\n")),
                None => out.push_str(&format!(
                    "  sidecars     inbound {}, outbound {} per request\n",
                    c.sidecar_delay.inbound, c.sidecar_delay.outbound
                )),
            }
        }
        if c.ingress {
            match &c.ingress_cmd {
                Some(cmd) => out.push_str(&format!("  ingress      your proxy: {cmd}\n")),
                None => out.push_str(&format!("  ingress      {} per request\n", c.ingress_delay)),
            }
        }
        if c.any_tls() {
            let mut hops = Vec::new();
            if c.ingress_tls {
                hops.push("HTTPS at the ingress");
            }
            if c.mtls {
                hops.push(
                    "strict mTLS between sidecars and from the ingress (NodePort 30080 refused)",
                );
            }
            out.push_str(&format!(
                "  TLS          {}; TLS {}, resumption {}; CA and certs in {}\n",
                hops.join(", "),
                c.tls_version,
                if c.tls_resumption { "on" } else { "off" },
                super::tls::TlsFiles::new(&Names::new(&c.name).state_dir())
                    .dir
                    .display()
            ));
        }
        out.push_str("\npods:\n");
        for p in &self.pods {
            out.push_str(&format!(
                "  {:<12} netns {:<18} pod IP {:<12} ClusterIP {:<12} host veth {}  uid {}\n",
                p.service, p.netns, p.ip, p.cluster_ip, p.host_veth, p.uid
            ));
            for ct in &p.containers {
                let rel = ct
                    .cgroup
                    .strip_prefix(&self.cgroup_root)
                    .unwrap_or(&ct.cgroup)
                    .display()
                    .to_string();
                out.push_str(&format!(
                    "    {:<12} pid {:<7} {:<5} cgroup id {} …/{}\n",
                    ct.name,
                    ct.pid,
                    if alive(ct.pid) { "up" } else { "DEAD" },
                    ct.cgroup_id,
                    rel
                ));
            }
        }
        out
    }
}

pub fn save(state: &LabState) -> Result<(), LabError> {
    let names = Names::new(&state.config.name);
    let path = names.state_file();
    let text = serde_json::to_string_pretty(state).map_err(|e| LabError::Io {
        context: "serialising the lab state".into(),
        source: e.into(),
    })?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, text).map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(io_err(format!("writing {}", path.display())))
}

pub fn load(names: &Names) -> Option<LabState> {
    load_file(&names.state_file())
}

pub fn load_file(path: &Path) -> Option<LabState> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}
