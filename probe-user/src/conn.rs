//! Aggregates connection events into latency series.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use probe_common::conn::{ConnEvent, ConnEventKind, FLAG_PASSIVE, FLAG_START_FROM_SYN};
use serde::Serialize;

use crate::cgroup::Resolver;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Handshake,
    Lifetime,
    FailedConnect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This side connected (client).
    Active,
    /// This side accepted (server).
    Passive,
}

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

struct Series {
    hist: Histogram<u64>,
    /// Passive handshakes timed from SYN_RECV only (no SYN stamp): they miss the round trip.
    from_syn_recv: u64,
}

/// Latency series, recorded in nanoseconds with three significant digits.
#[derive(Default)]
pub struct Aggregator {
    series: BTreeMap<SeriesKey, Series>,
    pub events: u64,
    /// Events this build cannot use: an unknown kind (kernel/user version mismatch) or a
    /// duration beyond the histogram's range.
    pub unknown: u64,
}

/// What `--json` writes for one series; times in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesSummary {
    pub metric: Metric,
    pub direction: Direction,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Passive handshakes timed from SYN_RECV because no SYN was stamped (cgroup_skb hook
    /// missing, or the connection began before hopprobe attached).
    #[serde(skip_serializing_if = "is_zero")]
    pub timed_from_syn_recv: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn us(ns: f64) -> f64 {
    (ns / 100.0).round() / 10.0
}

impl Aggregator {
    pub fn record(&mut self, event: &ConnEvent) {
        self.events += 1;
        let Some(key) = SeriesKey::of(event) else {
            self.unknown += 1;
            return;
        };
        let series = self.series.entry(key).or_insert_with(|| Series {
            hist: Histogram::new(3).expect("3 significant digits is valid"),
            from_syn_recv: 0,
        });
        // The histogram resizes itself to the largest value seen (`saturating_record` would clamp
        // to its initial range instead). Zero-length durations exist; its floor is 1 ns.
        if series.hist.record(event.duration_ns.max(1)).is_err() {
            self.unknown += 1;
        }
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

    pub fn summaries(&self, resolver: &mut Resolver) -> Vec<SeriesSummary> {
        self.series
            .iter()
            .map(|(key, s)| {
                let h = &s.hist;
                SeriesSummary {
                    metric: key.metric,
                    direction: key.direction,
                    cgroup_id: key.cgroup_id,
                    cgroup: resolver.resolve(key.cgroup_id),
                    local_port: key.local_port,
                    remote_port: key.remote_port,
                    count: h.len(),
                    min_us: us(h.min() as f64),
                    mean_us: us(h.mean()),
                    p50_us: us(h.value_at_quantile(0.50) as f64),
                    p90_us: us(h.value_at_quantile(0.90) as f64),
                    p99_us: us(h.value_at_quantile(0.99) as f64),
                    max_us: us(h.max() as f64),
                    timed_from_syn_recv: s.from_syn_recv,
                }
            })
            .collect()
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
    fn percentiles_in_microseconds() {
        let mut agg = Aggregator::default();
        for i in 1..=100u64 {
            agg.record(&event(ConnEventKind::Lifetime, 0, i * 1_000));
        }
        let s = &agg.summaries(&mut resolver())[0];
        assert_eq!(s.count, 100);
        assert_eq!(s.min_us, 1.0);
        assert_eq!(s.p50_us, 50.0);
        assert_eq!(s.p90_us, 90.0);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.max_us, 100.0);
        assert_eq!(s.mean_us, 50.5);
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
        assert_eq!((s.count, s.timed_from_syn_recv), (2, 1));
    }
}
