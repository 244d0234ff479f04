//! Aggregates connection events into latency series.

use std::collections::BTreeMap;

use probe_common::{
    conn::{
        ConnEvent, ConnEventKind, FLAG_PASSIVE, FLAG_START_FROM_SYN, SIDE_ACTIVE, SIDE_PASSIVE,
    },
    sockops::{METRIC_SRTT, SockHistKey},
};

/// What `--json` writes for one series (times in microseconds) is defined with the rest of
/// the summary.
pub use hopprobe_formats::summary::{ConnDirection as Direction, Metric, SeriesSummary};

use crate::{
    names::{Metadata, cgroup::Resolver},
    series::latency::Latency,
};

/// One latency series. The ephemeral port of a connection is left out (`None`) so that a
/// series is per service: the remote port for active sockets, the local port for passive ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub metric: Metric,
    pub direction: Direction,
    pub cgroup_id: u64,
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
}

impl SeriesKey {
    pub fn of(event: &ConnEvent) -> Option<Self> {
        let kind = ConnEventKind::from_u8(event.kind)?;
        let (metric, direction) = match kind {
            ConnEventKind::ActiveHandshake => (Metric::Handshake, Direction::Active),
            ConnEventKind::PassiveHandshake => (Metric::Handshake, Direction::Passive),
            ConnEventKind::FailedConnect => (Metric::FailedConnect, Direction::Active),
            ConnEventKind::Lifetime if event.flags & FLAG_PASSIVE != 0 => {
                (Metric::Lifetime, Direction::Passive)
            }
            ConnEventKind::Lifetime => (Metric::Lifetime, Direction::Active),
        };
        let (local_port, remote_port) = match direction {
            Direction::Active => (None, Some(event.remote_port)),
            Direction::Passive => (Some(event.local_port), None),
            Direction::Unknown => (None, None),
        };
        Some(Self {
            metric,
            direction,
            cgroup_id: event.cgroup_id,
            local_port,
            remote_port,
        })
    }
}

#[derive(Default)]
struct Series {
    latency: Latency,
    /// Passive handshakes timed from SYN_RECV only (no SYN stamp): they miss the round trip.
    from_syn_recv: u64,
}

/// Latency series, recorded in nanoseconds (`Latency`).
#[derive(Default)]
pub struct Aggregator {
    series: BTreeMap<SeriesKey, Series>,
    pub events: u64,
    /// Events this build cannot use: an unknown kind (kernel/user version mismatch).
    pub unknown: u64,
}

impl Aggregator {
    pub fn record(&mut self, event: &ConnEvent) {
        self.events += 1;
        let Some(key) = SeriesKey::of(event) else {
            self.unknown += 1;
            return;
        };
        let series = self.series.entry(key).or_default();
        series.latency.record(event.duration_ns);
        if key.metric == Metric::Handshake
            && key.direction == Direction::Passive
            && event.flags & FLAG_START_FROM_SYN == 0
        {
            series.from_syn_recv += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Every series with its histogram, for `/metrics`.
    pub fn latencies(&self) -> impl Iterator<Item = (&SeriesKey, &Latency)> {
        self.series.iter().map(|(k, s)| (k, &s.latency))
    }

    /// Keeps only the series `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&SeriesKey) -> bool) {
        self.series.retain(|k, _| keep(k));
    }

    pub fn summaries(&self, resolver: &mut Resolver) -> Vec<SeriesSummary> {
        self.series
            .iter()
            .map(|(key, s)| SeriesSummary {
                metric: key.metric,
                direction: key.direction,
                cgroup_id: key.cgroup_id,
                cgroup: resolver.resolve(key.cgroup_id),
                namespace: None,
                pod: None,
                container: None,
                local_port: key.local_port,
                remote_port: key.remote_port,
                latency: s.latency.summary(),
                timed_from_syn_recv: s.from_syn_recv,
            })
            .collect()
    }
}

/// Series of the histograms the `sock_ops` program keeps in the kernel (smoothed RTT), named
/// like the connection series: service port = remote port of active sockets, local port of
/// passive ones.
pub fn sock_series(
    hists: impl IntoIterator<Item = (SockHistKey, Vec<u64>)>,
    resolver: &mut Resolver,
) -> Vec<SeriesSummary> {
    let mut out: Vec<SeriesSummary> = hists
        .into_iter()
        .filter(|(k, _)| k.metric == METRIC_SRTT)
        .map(|(k, counts)| {
            let (direction, local_port, remote_port) = match k.side {
                SIDE_ACTIVE => (Direction::Active, None, Some(k.port)),
                SIDE_PASSIVE => (Direction::Passive, Some(k.port), None),
                _ => (Direction::Unknown, None, None),
            };
            SeriesSummary {
                metric: Metric::Srtt,
                direction,
                cgroup_id: k.cgroup_id,
                cgroup: resolver.resolve(k.cgroup_id),
                namespace: None,
                pod: None,
                container: None,
                local_port,
                remote_port,
                latency: Latency::from_buckets(&counts).summary(),
                timed_from_syn_recv: 0,
            }
        })
        .collect();
    out.sort_by_key(|s| (s.direction, s.cgroup_id, s.local_port, s.remote_port));
    out
}

/// Pod and container names for each series whose cgroup a names source knows.
pub fn name(series: &mut [SeriesSummary], metadata: &Metadata) {
    for s in series {
        if let Some(n) = s.cgroup.as_deref().and_then(|c| metadata.lookup(c)) {
            s.namespace = Some(n.namespace);
            s.pod = Some(n.pod);
            s.container = n.container;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: ConnEventKind, flags: u8, duration_ns: u64) -> ConnEvent {
        ConnEvent {
            ts_ns: 1,
            duration_ns,
            cgroup_id: 42,
            sock_id: 7,
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 8080,
            remote_port: 40000,
            family: probe_common::conn::AF_INET,
            kind: kind as u8,
            flags,
        }
    }

    fn resolver() -> Resolver {
        Resolver::new("/nonexistent".into())
    }

    #[test]
    fn kernel_srtt_histograms_become_series_per_service_port() {
        let mut counts = vec![0u64; probe_common::hist::BUCKETS];
        counts[probe_common::hist::bucket(20_000_000)] = 5;
        let key = SockHistKey {
            cgroup_id: 42,
            port: 8080,
            side: SIDE_PASSIVE,
            metric: METRIC_SRTT,
            _pad: 0,
        };
        let s = &sock_series([(key, counts)], &mut resolver())[0];
        assert_eq!(
            (s.metric, s.direction, s.local_port, s.remote_port),
            (Metric::Srtt, Direction::Passive, Some(8080), None)
        );
        assert_eq!(s.latency.count, 5);
        assert!((s.latency.p50_us - 20_000.0).abs() < 20_000.0 / 32.0);
    }

    #[test]
    fn series_drop_the_ephemeral_port() {
        let active = SeriesKey::of(&event(ConnEventKind::ActiveHandshake, 0, 1)).expect("key");
        assert_eq!((active.local_port, active.remote_port), (None, Some(40000)));
        let passive =
            SeriesKey::of(&event(ConnEventKind::PassiveHandshake, FLAG_PASSIVE, 1)).expect("key");
        assert_eq!(
            (passive.local_port, passive.remote_port),
            (Some(8080), None)
        );
    }

    #[test]
    fn lifetime_direction_follows_the_passive_flag() {
        let a = SeriesKey::of(&event(ConnEventKind::Lifetime, 0, 1)).expect("key");
        let p = SeriesKey::of(&event(ConnEventKind::Lifetime, FLAG_PASSIVE, 1)).expect("key");
        assert_eq!(a.direction, Direction::Active);
        assert_eq!(p.direction, Direction::Passive);
        assert_ne!(a, p);
    }

    #[test]
    fn unknown_kinds_are_counted_not_recorded() {
        let mut agg = Aggregator::default();
        let mut e = event(ConnEventKind::Lifetime, 0, 5);
        e.kind = 99;
        agg.record(&e);
        assert_eq!((agg.events, agg.unknown), (1, 1));
        assert!(agg.is_empty());
    }

    #[test]
    fn syn_recv_timed_handshakes_are_flagged() {
        let mut agg = Aggregator::default();
        agg.record(&event(ConnEventKind::PassiveHandshake, FLAG_PASSIVE, 10));
        agg.record(&event(
            ConnEventKind::PassiveHandshake,
            FLAG_PASSIVE | FLAG_START_FROM_SYN,
            10,
        ));
        let s = &agg.summaries(&mut resolver())[0];
        assert_eq!((s.latency.count, s.timed_from_syn_recv), (2, 1));
    }
}
