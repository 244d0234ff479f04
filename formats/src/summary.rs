//! hopprobe's summary (`hopprobe run --json FILE`, read by `hopprobe report --summary`): one
//! JSON document with the run's connection series, per-hop series, counters, TCP events, each
//! container's CPU and the attached programs. Latencies are in microseconds, rounded to 0.1 µs.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::ReadError;

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Ord + Default"))]
pub struct Summary<S = String> {
    pub duration_s: f64,
    /// `duration`, `SIGINT` or `SIGTERM`.
    pub stopped_by: S,
    pub cgroup_root: PathBuf,
    pub hooks: Vec<Hook<S>>,
    pub counters: BTreeMap<S, u64>,
    pub series: Vec<SeriesSummary>,
    pub hops: Vec<HopSummary>,
    pub tcp_events: Vec<TcpEvents>,
    /// Each container's cumulative CPU (cgroup `usage_usec`), sampled every 500 ms.
    pub cpu: Vec<CpuSeries>,
    /// With `--bpf-stats`: each program's runs and run time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramCost>,
}

/// Where a program is attached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct Hook<S = String> {
    pub program: S,
    pub hook: S,
    pub target: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Handshake,
    Lifetime,
    FailedConnect,
    /// The socket's smoothed RTT at each RTT update (`sock_ops`), kept in the kernel.
    Srtt,
}

/// Which side of a connection a series is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnDirection {
    /// This side connected (client).
    Active,
    /// This side accepted (server).
    Passive,
    /// Not known: the socket's flow was no longer (or never) in `FLOW_SOCK`.
    Unknown,
}

/// One connection series: a metric of a cgroup's sockets, per service port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSummary {
    pub metric: Metric,
    pub direction: ConnDirection,
    #[serde(default)]
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// The cgroup's pod and container where a names source knows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
    #[serde(flatten)]
    pub latency: LatencySummary,
    /// Passive handshakes timed from SYN_RECV because no SYN was stamped (cgroup_skb hook
    /// missing, or the connection began before hopprobe attached).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timed_from_syn_recv: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Count and percentiles in microseconds, rounded to 0.1 µs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    /// Node uplink (or another pod's veth) → the pod's veth.
    DatapathIn,
    /// The pod's veth → the receiving socket (the pod's interception rules).
    PodDelivery,
    /// What a proxy container added to a request it forwarded.
    Sidecar,
    /// The part of `sidecar` before the proxy read the request (its socket's queue).
    SidecarQueue,
    /// `sidecar` less `sidecar_queue`: the proxy's own work and delay, both ways.
    SidecarProcessing,
    App,
    /// Server side: request arrived → the process first read it (accept and receive queues).
    AppQueue,
    /// Server side: the process first read the request → first response byte.
    AppProcessing,
    /// `app` less the `upstream` calls the process made for that request.
    AppSelf,
    Upstream,
    /// Client side: the call's response arrived → the caller first read it (its wake-up).
    UpstreamReadWait,
    /// The sending socket → the pod's veth.
    PodSend,
    /// The pod's veth → the node's uplink.
    DatapathOut,
    /// A TLS handshake at a socket: the ClientHello → the server's last handshake record (the
    /// server's work, and on the client's side the round trip too). Never a request.
    TlsHandshake,
    /// The server's last handshake record → the client's Finished, where the client finishes
    /// last (TLS 1.3, resumed TLS 1.2).
    TlsClientFinish,
}

impl Hop {
    /// The way a request travels through this hop, relative to the pod: into it (towards the
    /// serving app) or out of it (the pod's own calls and responses). The sidecar hop has both,
    /// per series.
    pub fn direction(self) -> Option<HopDirection> {
        match self {
            Hop::DatapathIn
            | Hop::PodDelivery
            | Hop::App
            | Hop::AppQueue
            | Hop::AppProcessing
            | Hop::AppSelf => Some(HopDirection::Inbound),
            Hop::Upstream | Hop::UpstreamReadWait | Hop::PodSend | Hop::DatapathOut => {
                Some(HopDirection::Outbound)
            }
            Hop::Sidecar | Hop::SidecarQueue | Hop::SidecarProcessing => None,
            // Per series: the side that accepted the connection, or the side that made it.
            Hop::TlsHandshake | Hop::TlsClientFinish => None,
        }
    }

    /// The name in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Hop::DatapathIn => "datapath_in",
            Hop::DatapathOut => "datapath_out",
            Hop::PodDelivery => "pod_delivery",
            Hop::PodSend => "pod_send",
            Hop::Sidecar => "sidecar",
            Hop::SidecarQueue => "sidecar_queue",
            Hop::SidecarProcessing => "sidecar_processing",
            Hop::App => "app",
            Hop::AppQueue => "app_queue",
            Hop::AppProcessing => "app_processing",
            Hop::AppSelf => "app_self",
            Hop::Upstream => "upstream",
            Hop::UpstreamReadWait => "upstream_read_wait",
            Hop::TlsHandshake => "tls_handshake",
            Hop::TlsClientFinish => "tls_client_finish",
        }
    }
}

/// Which way a request crossed a hop: into the pod (to the app) or out of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HopDirection {
    Inbound,
    Outbound,
}

impl HopDirection {
    pub fn name(self) -> &'static str {
        match self {
            HopDirection::Inbound => "inbound",
            HopDirection::Outbound => "outbound",
        }
    }
}

/// One hop series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HopSummary {
    pub hop: Hop,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub direction: Option<HopDirection>,
    /// The pod's host-side veth, for datapath and pod hops.
    pub interface: Option<String>,
    #[serde(default)]
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// The serving port, for `app`.
    pub local_port: Option<u16>,
    /// The destination as the socket addressed it, for `upstream`.
    pub peer: Option<String>,
    /// `namespace/service` of `peer`, from the Kubernetes API (ClusterIP or endpoint IP).
    pub peer_service: Option<String>,
    /// `namespace/pod` of `peer`, when it is a pod on this node.
    pub peer_pod: Option<String>,
    #[serde(flatten)]
    pub latency: LatencySummary,
}

/// Retransmits and resets of the sockets of one cgroup (0: sockets opened before hopprobe
/// attached, or resets answering no socket).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpEvents {
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
}

/// One container's CPU over the run: `(monotonic ns, cumulative usage µs)` pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuSeries {
    /// Path under the cgroup v2 root.
    pub cgroup: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub samples: Vec<(u64, u64)>,
}

/// One program's runs and the time they took, while run-time statistics were on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramCost {
    pub fn ns_per_run(&self) -> f64 {
        self.run_time_ns as f64 / self.runs.max(1) as f64
    }
}

/// Reads a summary's text.
pub fn read(text: &str) -> Result<Summary, ReadError> {
    serde_json::from_str(text).map_err(|e| ReadError::document("a hopprobe summary", e))
}
