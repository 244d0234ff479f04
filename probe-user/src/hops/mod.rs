//! Hop series from request/response exchanges seen at sockets.
//!
//! - `app`: on a server socket, first request byte in → first response byte out: the time the
//!   process that owns the socket took to answer, including its own upstream calls.
//! - `upstream`: on a client socket, first request byte out → first response byte in: a call
//!   the process made, per destination.
//! - `app_self`: `app` less the calls made for that request, per request (see `calls`).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use probe_common::{
    conn::AF_INET,
    exchange::{
        EXHOP_APP, EXHOP_APP_PROCESSING, EXHOP_APP_QUEUE, EXHOP_UPSTREAM, EXHOP_UPSTREAM_READ_WAIT,
        ExHistKey, Exchange, ROLE_SERVER,
    },
    hist::{HOP_DATAPATH_IN, HOP_DATAPATH_OUT, HOP_POD_DELIVERY, HOP_POD_SEND, HistKey},
};

pub mod addr;
pub mod calls;
pub mod datapath;
pub mod sidecar;
pub mod stream;
pub mod tls;

use calls::AppSelf;
use sidecar::{Direction, SidecarHop};

use crate::{
    names::{Metadata, cgroup::Resolver},
    series::latency::Latency,
};

/// The hops, their directions and what `--json` writes for each series are defined with the
/// rest of the summary.
pub use hopprobe_formats::summary::{Hop, HopSummary};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HopKey {
    pub hop: Hop,
    pub cgroup_id: u64,
    /// The serving port, for `app`.
    pub local_port: Option<u16>,
    /// The destination as this socket addressed it, for `upstream` (a ClusterIP before
    /// kube-proxy's DNAT, a sidecar's port after its REDIRECT).
    pub peer: Option<SocketAddr>,
    /// For `sidecar`: into the pod or out of it.
    pub direction: Option<Direction>,
}

impl HopKey {
    pub fn of(x: &Exchange) -> Self {
        if x.role == ROLE_SERVER {
            Self {
                hop: Hop::App,
                cgroup_id: x.cgroup_id,
                local_port: Some(x.flow.local_port),
                peer: None,
                direction: None,
            }
        } else {
            Self {
                hop: Hop::Upstream,
                cgroup_id: x.cgroup_id,
                local_port: None,
                peer: Some(addr::of_flow(&x.flow, false)),
                direction: None,
            }
        }
    }
}

/// Values recorded into the series wait in `HopAggregator::pending` until this many.
const PENDING: usize = 1024;

#[derive(Default)]
pub struct HopAggregator {
    /// Each series' slot in `latencies`. Hashed, not ordered: each exchange looks up to three
    /// series up, and a `BTreeMap`'s look-up compares the key with one stored key after
    /// another, a cache line each (10 % of hopprobe's CPU at c = 32 in the lab, perf,
    /// 2026-12-05). `series` orders them.
    series: HashMap<HopKey, u32, foldhash::fast::RandomState>,
    latencies: Vec<Latency>,
    /// Slots of `latencies` whose series were removed.
    free: Vec<u32>,
    /// `(slot, ns)` not yet in their histograms. A histogram's bucket is a cache line not
    /// loaded since the series' last value, about one miss per value wherever it comes: one
    /// at a time among the rest of the work, those misses were a fifth of hopprobe's CPU at
    /// c = 32 in the lab (perf, 2026-12-06); in a loop that does nothing else the processor
    /// waits for many of them at once.
    pending: Vec<(u32, u64)>,
    pub exchanges: u64,
    /// Exchanges that ended (FIN, RST) before any response byte.
    pub unanswered: u64,
    pub tls: tls::Counts,
}

impl HopAggregator {
    pub fn record(&mut self, x: &Exchange) {
        self.exchanges += 1;
        if x.resp_first_ns == 0 {
            self.unanswered += 1;
            return;
        }
        let key = HopKey::of(x);
        if key.hop == Hop::App && (x.req_first_ns..=x.resp_first_ns).contains(&x.first_read_ns) {
            for (hop, ns) in [
                (Hop::AppQueue, x.first_read_ns - x.req_first_ns),
                (Hop::AppProcessing, x.resp_first_ns - x.first_read_ns),
            ] {
                self.push(HopKey { hop, ..key.clone() }, ns);
            }
        }
        if key.hop == Hop::Upstream && x.first_read_ns != 0 && x.first_read_ns >= x.resp_first_ns {
            self.push(
                HopKey {
                    hop: Hop::UpstreamReadWait,
                    ..key.clone()
                },
                x.first_read_ns - x.resp_first_ns,
            );
        }
        self.push(key, x.resp_first_ns.saturating_sub(x.req_first_ns));
    }

    /// A TLS handshake (`KIND_TLS_HANDSHAKE`): its own series, not an exchange.
    pub fn record_tls(&mut self, x: &Exchange) {
        self.tls.add(x);
        let [handshake, finish] = tls::keys(x);
        self.push(handshake, tls::times(x).server_side_ns());
        if x.req_last_ns > x.resp_last_ns {
            self.push(finish, x.req_last_ns - x.resp_last_ns);
        }
    }

    /// A paired sidecar hop (see `sidecar::pair`).
    pub fn record_sidecar(&mut self, cgroup_id: u64, hop: SidecarHop) {
        let split = hop
            .queue_ns
            .map(|q| [(Hop::SidecarQueue, q), (Hop::SidecarProcessing, hop.ns - q)]);
        for (series, ns) in
            std::iter::once((Hop::Sidecar, hop.ns)).chain(split.into_iter().flatten())
        {
            self.push(
                HopKey {
                    hop: series,
                    cgroup_id,
                    local_port: None,
                    peer: None,
                    direction: Some(hop.direction),
                },
                ns,
            );
        }
    }

    /// A request's own time at an app that made calls (see `calls::app_self`).
    pub fn record_app_self(&mut self, a: AppSelf) {
        self.push(
            HopKey {
                hop: Hop::AppSelf,
                cgroup_id: a.cgroup_id,
                local_port: Some(a.local_port),
                peer: None,
                direction: None,
            },
            a.ns,
        );
    }

    /// Adds a kernel histogram of exchanges that had no record (`ExHistKey`) to its series,
    /// each value at its bucket's middle (within 1/64 of it).
    pub fn add_kernel(&mut self, k: &ExHistKey, counts: &[u64]) {
        if let Some(key) = HopKey::of_kernel(k) {
            let slot = self.slot(key);
            self.latencies[slot as usize].add(&Latency::from_buckets(counts));
        }
    }

    /// `app_self` of requests finished before their container made its first call, kept as
    /// a histogram until then (`stream`).
    pub fn add_app_self(&mut self, cgroup_id: u64, local_port: u16, l: &Latency) {
        let slot = self.slot(HopKey {
            hop: Hop::AppSelf,
            cgroup_id,
            local_port: Some(local_port),
            peer: None,
            direction: None,
        });
        self.latencies[slot as usize].add(l);
    }

    /// The series' slot in `latencies`, a new one for a new series.
    fn slot(&mut self, key: HopKey) -> u32 {
        let Self {
            series,
            latencies,
            free,
            ..
        } = self;
        *series.entry(key).or_insert_with(|| match free.pop() {
            Some(slot) => slot,
            None => {
                latencies.push(Latency::default());
                u32::try_from(latencies.len() - 1).expect("fewer than 2^32 series")
            }
        })
    }

    /// Records `ns` in the series of `key`, soon (`pending`).
    fn push(&mut self, key: HopKey, ns: u64) {
        let slot = self.slot(key);
        self.pending.push((slot, ns));
        if self.pending.len() >= PENDING {
            self.flush();
        }
    }

    fn flush(&mut self) {
        for (slot, ns) in self.pending.drain(..) {
            self.latencies[slot as usize].record(ns);
        }
    }

    /// In the order of the series' keys, as every other series.
    pub fn summaries(&mut self, resolver: &mut Resolver) -> Vec<HopSummary> {
        self.series()
            .map(|(k, l)| HopSummary {
                latency: l.summary(),
                ..k.unnamed(resolver)
            })
            .collect()
    }

    /// Every series with its histogram, in the order of their keys: `/metrics` keeps the
    /// first series up to its cap, and the same ones at every scrape.
    pub fn series(&mut self) -> impl Iterator<Item = (&HopKey, &Latency)> {
        self.flush();
        let mut all: Vec<_> = self
            .series
            .iter()
            .map(|(k, &slot)| (k, &self.latencies[slot as usize]))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }

    /// The owners with a series, in no order (unlike `series`, nothing is sorted).
    pub fn cgroups(&self) -> impl Iterator<Item = u64> + '_ {
        self.series.keys().map(|k| k.cgroup_id)
    }

    /// Keeps only the series `keep` says to (a deleted pod's go once exported as retired).
    pub fn retain(&mut self, mut keep: impl FnMut(&HopKey) -> bool) {
        self.flush();
        let Self {
            series,
            latencies,
            free,
            ..
        } = self;
        series.retain(|k, &mut slot| {
            let kept = keep(k);
            if !kept {
                latencies[slot as usize] = Latency::default();
                free.push(slot);
            }
            kept
        });
    }
}

impl HopKey {
    /// The series a kernel histogram of unsent exchanges belongs to (`ExHistKey`).
    pub fn of_kernel(k: &ExHistKey) -> Option<Self> {
        let hop = match k.hop {
            EXHOP_APP => Hop::App,
            EXHOP_APP_QUEUE => Hop::AppQueue,
            EXHOP_APP_PROCESSING => Hop::AppProcessing,
            EXHOP_UPSTREAM => Hop::Upstream,
            EXHOP_UPSTREAM_READ_WAIT => Hop::UpstreamReadWait,
            _ => return None,
        };
        let server = matches!(hop, Hop::App | Hop::AppQueue | Hop::AppProcessing);
        Some(Self {
            hop,
            cgroup_id: k.cgroup_id,
            local_port: server.then_some(k.port),
            peer: (!server).then(|| addr::from_bytes(k.remote_addr, k.port, k.family == AF_INET)),
            direction: None,
        })
    }

    /// The series' summary without names or latency (`name` adds the names).
    pub fn unnamed(&self, resolver: &mut Resolver) -> HopSummary {
        HopSummary {
            hop: self.hop,
            namespace: None,
            pod: None,
            container: None,
            direction: self.direction,
            interface: None,
            cgroup_id: self.cgroup_id,
            cgroup: resolver.resolve(self.cgroup_id),
            local_port: self.local_port,
            peer: self.peer.map(|p| p.to_string()),
            peer_service: None,
            peer_pod: None,
            latency: Default::default(),
        }
    }
}

/// Summaries of the histograms the kernel keeps per hop: `(hop, ifindex, cgroup) → counts`.
pub fn kernel_hops(
    hists: impl IntoIterator<Item = (HistKey, Vec<u64>)>,
    ifnames: &BTreeMap<u32, String>,
    resolver: &mut Resolver,
) -> Vec<HopSummary> {
    let mut out: Vec<HopSummary> = hists
        .into_iter()
        .filter_map(|(k, counts)| {
            Some(HopSummary {
                latency: Latency::from_buckets(&counts).summary(),
                ..kernel_unnamed(&k, ifnames, resolver)?
            })
        })
        .collect();
    out.sort_by(|a, b| (a.hop, &a.interface, a.cgroup_id).cmp(&(b.hop, &b.interface, b.cgroup_id)));
    out
}

/// A kernel histogram's summary without names or latency; `None` for a hop this build does
/// not know.
pub fn kernel_unnamed(
    k: &HistKey,
    ifnames: &BTreeMap<u32, String>,
    resolver: &mut Resolver,
) -> Option<HopSummary> {
    let hop = match k.hop {
        HOP_DATAPATH_IN => Hop::DatapathIn,
        HOP_DATAPATH_OUT => Hop::DatapathOut,
        HOP_POD_DELIVERY => Hop::PodDelivery,
        HOP_POD_SEND => Hop::PodSend,
        _ => return None,
    };
    Some(HopSummary {
        hop,
        namespace: None,
        pod: None,
        container: None,
        direction: None,
        interface: ifnames
            .get(&k.ifindex)
            .cloned()
            .or_else(|| (k.ifindex != 0).then(|| format!("ifindex {}", k.ifindex))),
        cgroup_id: k.cgroup_id,
        cgroup: resolver.resolve(k.cgroup_id),
        local_port: None,
        peer: None,
        peer_service: None,
        peer_pod: None,
        latency: Default::default(),
    })
}

/// Fills in namespace, pod and container names, and the peer's Service and pod, where the
/// metadata knows them, and each series' direction.
pub fn name(hops: &mut [HopSummary], metadata: &Metadata) {
    for h in hops {
        if h.direction.is_none() {
            h.direction = h.hop.direction();
        }
        if let Some(c) = h.cgroup.as_deref().and_then(|c| metadata.lookup(c)) {
            h.namespace = Some(c.namespace);
            h.pod = Some(c.pod);
            h.container = c.container;
        } else if let Some(i) = h.interface.as_deref().and_then(|i| metadata.interface(i)) {
            h.namespace = Some(i.namespace.clone());
            h.pod = Some(i.pod.clone());
        }
        if let Some(peer) = h.peer.as_deref().and_then(|p| p.parse().ok()) {
            let names = metadata.peer(peer);
            h.peer_service = names.service;
            h.peer_pod = names.pod;
        }
    }
}

/// One line of `--records`: an exchange with its CLOCK_MONOTONIC timestamps.
pub type Record = hopprobe_formats::records::SockExchange<&'static str>;

/// The records line of an exchange.
pub fn record(x: &Exchange) -> Record {
    let answered = x.resp_first_ns != 0;
    Record {
        cookie: x.cookie,
        cgroup_id: x.cgroup_id,
        role: if x.role == ROLE_SERVER {
            hopprobe_formats::records::SERVER
        } else {
            hopprobe_formats::records::CLIENT
        },
        local: addr::of_flow(&x.flow, true),
        remote: addr::of_flow(&x.flow, false),
        req_first_ns: x.req_first_ns,
        req_last_ns: x.req_last_ns,
        resp_first_ns: answered.then_some(x.resp_first_ns),
        resp_last_ns: answered.then_some(x.resp_last_ns),
        first_read_ns: (x.first_read_ns != 0).then_some(x.first_read_ns),
        req_bytes: x.req_bytes,
        resp_bytes: x.resp_bytes,
        tls: x.tls != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{
        conn::{AF_INET, FlowKey},
        exchange::{PHASE_RESPONSE, ROLE_CLIENT},
        hist::BUCKETS,
    };

    fn exchange(role: u8, req: u64, resp: u64) -> Exchange {
        let mut flow = FlowKey {
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 9080,
            remote_port: 40000,
            family: AF_INET,
            _pad: 0,
        };
        flow.local_addr[..4].copy_from_slice(&[10, 78, 0, 10]);
        flow.remote_addr[..4].copy_from_slice(&[10, 96, 0, 11]);
        Exchange {
            req_first_ns: req,
            req_last_ns: req,
            resp_first_ns: resp,
            resp_last_ns: resp,
            req_bytes: 10,
            resp_bytes: 20,
            first_read_ns: 0,
            cgroup_id: 5,
            cookie: 1,
            flow,
            role,
            phase: PHASE_RESPONSE,
            kind: 0,
            tls: 0,
            _pad: [0; 4],
        }
    }

    #[test]
    fn servers_are_app_hops_clients_are_upstream_per_peer() {
        assert_eq!(HopKey::of(&exchange(ROLE_SERVER, 1, 2)).hop, Hop::App);
        let up = HopKey::of(&exchange(ROLE_CLIENT, 1, 2));
        assert_eq!(up.hop, Hop::Upstream);
        assert_eq!(up.peer, Some("10.96.0.11:40000".parse().expect("addr")));
    }

    #[test]
    fn duration_is_first_request_byte_to_first_response_byte() {
        let mut agg = HopAggregator::default();
        agg.record(&exchange(ROLE_SERVER, 1_000_000, 3_000_000));
        agg.record(&exchange(ROLE_SERVER, 1_000_000, 0));
        let s = &agg.summaries(&mut Resolver::new("/nonexistent".into()))[0];
        assert_eq!(s.latency.count, 1);
        // A bucket's highest value, never above the exact maximum: here the value itself.
        assert!((s.latency.p50_us - 2000.0).abs() <= 20.0, "{:?}", s.latency);
        assert_eq!((agg.exchanges, agg.unanswered), (2, 1));
    }

    #[test]
    fn kernel_histograms_become_percentiles_per_interface() {
        let mut counts = vec![0u64; BUCKETS];
        counts[probe_common::hist::bucket(10_000)] = 9;
        counts[probe_common::hist::bucket(1_000_000)] = 1;
        let key = HistKey {
            hop: HOP_DATAPATH_IN,
            ifindex: 7,
            cgroup_id: 0,
        };
        let names = BTreeMap::from([(7, "eni0".to_owned())]);
        let s = &kernel_hops([(key, counts)], &names, &mut Resolver::new("/x".into()))[0];
        assert_eq!(
            (s.hop, s.interface.as_deref()),
            (Hop::DatapathIn, Some("eni0"))
        );
        assert_eq!(s.latency.count, 10);
        // Within the bucket's width (1/32) of the recorded values.
        assert!(
            (s.latency.p50_us - 10.0).abs() < 10.0 / 32.0,
            "{:?}",
            s.latency
        );
        assert!(
            (s.latency.max_us - 1000.0).abs() < 1000.0 / 32.0,
            "{:?}",
            s.latency
        );
    }

    #[test]
    fn a_seen_read_splits_the_app_hop_into_queue_and_processing() {
        let mut agg = HopAggregator::default();
        let mut x = exchange(ROLE_SERVER, 1_000_000, 11_000_000);
        x.first_read_ns = 4_000_000;
        agg.record(&x);
        let s = agg.summaries(&mut Resolver::new("/nonexistent".into()));
        let p50 = |hop| {
            s.iter()
                .find(|h| h.hop == hop)
                .map(|h| h.latency.p50_us)
                .expect("series")
        };
        // Within the histograms' 1 %.
        assert!((p50(Hop::App) - 10_000.0).abs() <= 100.0);
        assert!((p50(Hop::AppQueue) - 3_000.0).abs() <= 30.0);
        assert!((p50(Hop::AppProcessing) - 7_000.0).abs() <= 70.0);
    }

    #[test]
    fn a_call_read_after_its_answer_arrived_gives_the_callers_wait() {
        let mut agg = HopAggregator::default();
        let mut x = exchange(ROLE_CLIENT, 1_000_000, 3_000_000);
        x.first_read_ns = 3_150_000;
        agg.record(&x);
        // A read seen before the answer (not possible for this exchange's answer) is ignored.
        let mut early = exchange(ROLE_CLIENT, 1_000_000, 3_000_000);
        early.first_read_ns = 2_000_000;
        agg.record(&early);
        let mut s = agg.summaries(&mut Resolver::new("/nonexistent".into()));
        name(&mut s, &Metadata::default());
        let wait = s
            .iter()
            .find(|h| h.hop == Hop::UpstreamReadWait)
            .expect("series");
        assert_eq!(wait.latency.count, 1);
        assert!(
            (wait.latency.p50_us - 150.0).abs() <= 0.5,
            "{:?}",
            wait.latency
        );
        assert_eq!(wait.direction, Some(Direction::Outbound));
        let calls = s.iter().find(|h| h.hop == Hop::Upstream).expect("upstream");
        assert_eq!(calls.latency.count, 2);
    }

    #[test]
    fn a_sidecar_hop_with_its_read_splits_into_queue_and_processing() {
        let mut agg = HopAggregator::default();
        let hop = |ns, queue_ns| SidecarHop {
            direction: Direction::Inbound,
            ns,
            queue_ns,
        };
        agg.record_sidecar(5, hop(1_200_000, Some(200_000)));
        // Without a seen read the hop counts, the split does not.
        agg.record_sidecar(5, hop(1_200_000, None));
        let s = agg.summaries(&mut Resolver::new("/nonexistent".into()));
        let one = |hop| {
            let h = s.iter().find(|h| h.hop == hop).expect("series");
            assert_eq!(h.direction, Some(Direction::Inbound));
            (h.latency.count, h.latency.p50_us)
        };
        assert_eq!(one(Hop::Sidecar).0, 2);
        let (n, queue) = one(Hop::SidecarQueue);
        assert_eq!(n, 1);
        assert!((queue - 200.0).abs() <= 2.0, "{queue}");
        let (n, processing) = one(Hop::SidecarProcessing);
        assert_eq!(n, 1);
        assert!((processing - 1_000.0).abs() <= 10.0, "{processing}");
    }

    #[test]
    fn every_series_says_its_direction() {
        let mut agg = HopAggregator::default();
        agg.record(&exchange(ROLE_SERVER, 1, 2));
        agg.record(&exchange(ROLE_CLIENT, 1, 2));
        let mut s = agg.summaries(&mut Resolver::new("/nonexistent".into()));
        name(&mut s, &Metadata::default());
        let dirs: Vec<_> = s.iter().map(|h| (h.hop, h.direction)).collect();
        assert!(
            dirs.contains(&(Hop::App, Some(Direction::Inbound))),
            "{dirs:?}"
        );
        assert!(
            dirs.contains(&(Hop::Upstream, Some(Direction::Outbound))),
            "{dirs:?}"
        );
    }

    #[test]
    fn values_waiting_to_be_recorded_are_in_every_read_and_a_removed_series_leaves_none() {
        let mut agg = HopAggregator::default();
        let mut other = exchange(ROLE_SERVER, 0, 7_000);
        other.cgroup_id = 6;
        // Past `PENDING`, so some values were recorded on the way and the rest wait.
        for i in 0..PENDING as u64 + 10 {
            agg.record(&exchange(ROLE_SERVER, 0, 1_000 + i));
            agg.record(&other);
        }
        let counts = |agg: &mut HopAggregator| -> Vec<(u64, u64)> {
            agg.series()
                .filter(|(k, _)| k.hop == Hop::App)
                .map(|(k, l)| (k.cgroup_id, l.count()))
                .collect()
        };
        let n = PENDING as u64 + 10;
        assert_eq!(counts(&mut agg), [(5, n), (6, n)]);

        agg.record(&exchange(ROLE_SERVER, 0, 3_000));
        agg.retain(|k| k.cgroup_id != 5);
        assert_eq!(counts(&mut agg), [(6, n)]);
        // A new series takes the removed one's slot and starts empty.
        let mut third = exchange(ROLE_SERVER, 0, 9_000);
        third.cgroup_id = 4;
        agg.record(&third);
        assert_eq!(counts(&mut agg), [(4, 1), (6, n)]);
        let s = agg.summaries(&mut Resolver::new("/nonexistent".into()));
        let third = s.iter().find(|s| (s.cgroup_id, s.hop) == (4, Hop::App));
        let third = third.expect("the new series");
        assert_eq!((third.latency.min_us, third.latency.max_us), (9.0, 9.0));
    }

    #[test]
    fn records_say_when_there_was_no_response() {
        let r = record(&exchange(ROLE_CLIENT, 7, 0));
        assert_eq!((r.role, r.resp_first_ns), ("client", None));
        assert_eq!(r.local.to_string(), "10.78.0.10:9080");
    }
}
