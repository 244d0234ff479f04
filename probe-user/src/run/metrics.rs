//! The run loop's side of `/metrics`: a `Snapshot` of everything aggregated so far, read when
//! a scrape asks, named with the run's metadata and bounded by `Limits`.

use std::collections::{BTreeMap, BTreeSet, HashSet, btree_map::Entry};

use super::{Maps, sink::Collector};
use crate::{
    attach::probe::{read_counters, read_hists, read_tcp_events},
    export::{
        Labels, Limits, Snapshot, TcpCounts,
        buckets::Buckets,
        retired::{Retired, merge_tcp},
        workload_of,
    },
    hops::{self, Hop, HopKey, HopSummary, datapath as tcflow, kernel_unnamed},
    names::Metadata,
    series::conn::{Direction, Metric, SeriesKey},
};

/// Who a series belongs to, as labels; empty values where no names source knows.
#[derive(Default)]
struct Who {
    namespace: String,
    pod: String,
    container: String,
}

impl Who {
    fn labels(&self, limits: Limits) -> Labels {
        let mut l = vec![
            ("k8s_namespace", self.namespace.clone()),
            ("k8s_workload", workload_of(&self.pod).to_owned()),
        ];
        if limits.pod_labels {
            l.push(("k8s_pod", self.pod.clone()));
        }
        l.push(("k8s_container", self.container.clone()));
        l
    }

    fn of_cgroup(cgroup_id: u64, c: &mut Collector<'_>, metadata: &Metadata) -> Self {
        c.resolver
            .resolve(cgroup_id)
            .and_then(|p| metadata.lookup(&p))
            .map(|n| Self {
                namespace: n.namespace,
                pod: n.pod,
                container: n.container.unwrap_or_default(),
            })
            .unwrap_or_default()
    }

    fn of_hop(h: &HopSummary) -> Self {
        Self {
            namespace: h.namespace.clone().unwrap_or_default(),
            pod: h.pod.clone().unwrap_or_default(),
            container: h.container.clone().unwrap_or_default(),
        }
    }
}

/// Adds series up to the cap; what the cap keeps out is counted.
struct Series {
    left: usize,
    dropped: u64,
}

impl Series {
    /// Room for one more series; counts it as dropped when there is none.
    fn take(&mut self) -> bool {
        if self.left == 0 {
            self.dropped += 1;
            return false;
        }
        self.left -= 1;
        true
    }

    fn add<V: Clone>(
        &mut self,
        family: &mut BTreeMap<Labels, V>,
        labels: Labels,
        value: &V,
        merge: impl FnOnce(&mut V, &V),
    ) {
        match family.entry(labels) {
            Entry::Occupied(mut e) => merge(e.get_mut(), value),
            Entry::Vacant(_) if self.left == 0 => self.dropped += 1,
            Entry::Vacant(e) => {
                self.left -= 1;
                e.insert(value.clone());
            }
        }
    }
}

/// Where a call went, as bounded labels: the Service, else the pod's workload on this node,
/// else `unknown` (addresses are never labels).
fn destination(h: &HopSummary) -> String {
    if let Some(s) = &h.peer_service {
        return s.clone();
    }
    if let Some((ns, pod)) = h.peer_pod.as_deref().and_then(|p| p.split_once('/')) {
        return format!("{ns}/{}", workload_of(pod));
    }
    "unknown".to_owned()
}

/// Which owners' series a pass reads: all, or only those of owners found gone.
#[derive(Clone, Copy)]
pub enum Scope<'a> {
    All,
    Gone(&'a Gone),
}

/// Owners removed from the node: cgroups (containers, pods) and interfaces (their veths).
#[derive(Debug, Default)]
pub struct Gone {
    pub cgroups: HashSet<u64>,
    pub ifindexes: HashSet<u32>,
}

impl Scope<'_> {
    pub fn has(self, cgroup_id: u64, ifindex: u32) -> bool {
        match self {
            Scope::All => true,
            Scope::Gone(g) => g.cgroups.contains(&cgroup_id) || g.ifindexes.contains(&ifindex),
        }
    }
}

/// What a scrape exports: the live owners' series, the retired ones' counts added.
pub fn snapshot(
    maps: &Maps,
    c: &mut Collector<'_>,
    metadata: &Metadata,
    limits: Limits,
    retired: &Retired,
) -> Snapshot {
    let mut series = Series {
        left: limits.max_series,
        dropped: 0,
    };
    let mut s = latency_series(maps, c, metadata, limits, Scope::All, &mut series);
    retired.merge_into(&mut s, &mut || series.take());
    s.events = read_counters(&maps.stats);
    s.events.extend(tcflow::read_counters(&maps.tc_flow_stats));
    s.events.insert("unknown_events", c.unknown);
    s.events.insert("exchanges_received", c.sink.hops.exchanges);
    s.events
        .insert("unanswered_exchanges", c.sink.hops.unanswered);
    let pairing = &c.sink.pairing;
    s.events.insert("pairing_overflow", pairing.overflow);
    s.events.insert("pairing_late", pairing.late);
    s.events
        .insert("sidecar_unpaired", pairing.sidecar_unpaired);
    s.events.insert("series_retired", retired.removed);
    s.pairing_pending = pairing.pending() as u64;
    s.series_dropped = series.dropped;
    s.process = crate::export::Process::now();
    s
}

/// The latency and TCP families of the owners in `scope`, with no cap.
pub fn series_of(
    maps: &Maps,
    c: &mut Collector<'_>,
    metadata: &Metadata,
    limits: Limits,
    scope: Scope<'_>,
) -> Snapshot {
    let mut series = Series {
        left: usize::MAX,
        dropped: 0,
    };
    latency_series(maps, c, metadata, limits, scope, &mut series)
}

fn latency_series(
    maps: &Maps,
    c: &mut Collector<'_>,
    metadata: &Metadata,
    limits: Limits,
    scope: Scope<'_>,
    series: &mut Series,
) -> Snapshot {
    let mut s = Snapshot::default();
    hop_series(&mut s, series, maps, c, metadata, limits, scope);
    conn_series(&mut s, series, maps, c, metadata, limits, scope);
    for e in read_tcp_events(&maps.tcp_counters, &mut c.resolver) {
        if !scope.has(e.cgroup_id, 0) {
            continue;
        }
        let labels = Who::of_cgroup(e.cgroup_id, c, metadata).labels(limits);
        let counts = TcpCounts {
            retransmits: e.retransmits,
            resets_sent: e.resets_sent,
            resets_received: e.resets_received,
        };
        series.add(&mut s.tcp, labels, &counts, merge_tcp);
    }
    s
}

fn hop_series(
    s: &mut Snapshot,
    series: &mut Series,
    maps: &Maps,
    c: &mut Collector<'_>,
    metadata: &Metadata,
    limits: Limits,
    scope: Scope<'_>,
) {
    let mut named: Vec<HopSummary> = Vec::new();
    let mut buckets: Vec<Buckets> = Vec::new();
    for (k, l) in c
        .sink
        .hops
        .series()
        .filter(|(k, _)| scope.has(k.cgroup_id, 0))
    {
        named.push(k.unnamed(&mut c.resolver));
        buckets.push(Buckets::from_latency(l));
    }
    // Exchanges without a record, in the same series as those with one.
    for (k, counts) in read_hists(&maps.ex_hists) {
        if !scope.has(k.cgroup_id, 0) {
            continue;
        }
        if let Some(key) = HopKey::of_kernel(&k) {
            named.push(key.unnamed(&mut c.resolver));
            buckets.push(Buckets::from_kernel(&counts));
        }
    }
    for (k, counts) in read_hists(&maps.hists) {
        if !scope.has(k.cgroup_id, k.ifindex) {
            continue;
        }
        if let Some(h) = kernel_unnamed(&k, &c.ifnames, &mut c.resolver) {
            named.push(h);
            buckets.push(Buckets::from_kernel(&counts));
        }
    }
    hops::name(&mut named, metadata);
    let mut destinations: BTreeMap<Labels, BTreeSet<String>> = BTreeMap::new();
    for (h, b) in named.iter().zip(&buckets) {
        let who = Who::of_hop(h).labels(limits);
        if h.hop == Hop::Upstream {
            let seen = destinations.entry(who.clone()).or_default();
            let mut dest = destination(h);
            if !seen.contains(&dest) && seen.len() >= limits.max_destinations {
                dest = "other".to_owned();
            }
            seen.insert(dest.clone());
            let mut labels = who.clone();
            labels.push(("destination", dest));
            series.add(&mut s.upstream, labels, b, Buckets::merge);
        }
        let mut labels = vec![
            ("hop", h.hop.name().to_owned()),
            (
                "direction",
                h.direction.map(|d| d.name()).unwrap_or_default().to_owned(),
            ),
        ];
        labels.extend(who);
        labels.push((
            "port",
            h.local_port.map(|p| p.to_string()).unwrap_or_default(),
        ));
        series.add(&mut s.hops, labels, b, Buckets::merge);
    }
}

fn conn_series(
    s: &mut Snapshot,
    series: &mut Series,
    maps: &Maps,
    c: &mut Collector<'_>,
    metadata: &Metadata,
    limits: Limits,
    scope: Scope<'_>,
) {
    for (k, counts) in read_hists(&maps.sock_hists) {
        let Some((key, _)) = SeriesKey::of(&k) else {
            continue;
        };
        // Lifetimes and failed connects are in `--json` only.
        let to = match key.metric {
            Metric::Handshake => &mut s.handshake,
            Metric::Srtt => &mut s.srtt,
            Metric::Lifetime | Metric::FailedConnect => continue,
        };
        if !scope.has(key.cgroup_id, 0) {
            continue;
        }
        let (direction, port) = match key.direction {
            Direction::Active => ("active", key.remote_port),
            Direction::Passive => ("passive", key.local_port),
            Direction::Unknown => ("", None),
        };
        let who = Who::of_cgroup(key.cgroup_id, c, metadata);
        let labels = conn_labels(direction, port, who, limits);
        series.add(to, labels, &Buckets::from_kernel(&counts), Buckets::merge);
    }
}

/// A connection series' labels: the side, the service port (remote for active sockets, local
/// for passive ones; never the ephemeral one) and the owner.
fn conn_labels(direction: &str, port: Option<u16>, who: Who, limits: Limits) -> Labels {
    let mut labels = vec![("direction", direction.to_owned())];
    labels.extend(who.labels(limits));
    labels.push(("port", port.map(|p| p.to_string()).unwrap_or_default()));
    labels
}
