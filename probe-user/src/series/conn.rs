//! The connection series: the socket histograms the kernel keeps (`SOCK_HIST`: handshakes,
//! lifetimes, failed connects, smoothed RTT) as summaries.

use std::collections::BTreeMap;

use probe_common::{
    conn::{SIDE_ACTIVE, SIDE_PASSIVE},
    sockops::{
        METRIC_FAILED_CONNECT, METRIC_HANDSHAKE, METRIC_HANDSHAKE_FROM_SYN_RECV, METRIC_LIFETIME,
        METRIC_SRTT, SockHistKey, unit_ns,
    },
};

/// What `--json` writes for one series (times in microseconds) is defined with the rest of
/// the summary.
pub use hopprobe_formats::summary::{ConnDirection as Direction, Metric, SeriesSummary};

use crate::{
    names::{Metadata, cgroup::Resolver},
    series::latency::Latency,
};

/// One series: the service port is the remote port of active sockets, the local port of
/// passive ones (never the ephemeral one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub metric: Metric,
    pub direction: Direction,
    pub cgroup_id: u64,
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
}

impl SeriesKey {
    /// The series of a socket histogram, and whether its values are passive handshakes timed
    /// from SYN_RECV; `None` for a metric this build does not know.
    pub fn of(k: &SockHistKey) -> Option<(Self, bool)> {
        let (metric, from_syn_recv) = match k.metric {
            METRIC_SRTT => (Metric::Srtt, false),
            METRIC_HANDSHAKE => (Metric::Handshake, false),
            METRIC_HANDSHAKE_FROM_SYN_RECV => (Metric::Handshake, true),
            METRIC_LIFETIME => (Metric::Lifetime, false),
            METRIC_FAILED_CONNECT => (Metric::FailedConnect, false),
            _ => return None,
        };
        let (direction, local_port, remote_port) = match k.side {
            SIDE_ACTIVE => (Direction::Active, None, Some(k.port)),
            SIDE_PASSIVE => (Direction::Passive, Some(k.port), None),
            _ => (Direction::Unknown, None, None),
        };
        Some((
            Self {
                metric,
                direction,
                cgroup_id: k.cgroup_id,
                local_port,
                remote_port,
            },
            from_syn_recv,
        ))
    }
}

/// One series' histogram, and how many of its passive handshakes were timed from SYN_RECV
/// (no SYN stamp): they miss the round trip.
#[derive(Default)]
struct Series {
    latency: Latency,
    from_syn_recv: u64,
}

/// The socket histograms by series (a handshake series joins both of its kernel histograms).
fn series(hists: impl IntoIterator<Item = (SockHistKey, Vec<u64>)>) -> BTreeMap<SeriesKey, Series> {
    let mut out: BTreeMap<SeriesKey, Series> = BTreeMap::new();
    for (k, counts) in hists {
        let Some((key, from_syn_recv)) = SeriesKey::of(&k) else {
            continue;
        };
        let latency = Latency::from_buckets_in(&counts, unit_ns(k.metric));
        let s = out.entry(key).or_default();
        if from_syn_recv {
            s.from_syn_recv += latency.count();
        }
        s.latency.add(&latency);
    }
    out
}

/// Every series as `--json` writes it.
pub fn summaries(
    hists: impl IntoIterator<Item = (SockHistKey, Vec<u64>)>,
    resolver: &mut Resolver,
) -> Vec<SeriesSummary> {
    series(hists)
        .into_iter()
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

    fn key(metric: u8, side: u8) -> SockHistKey {
        SockHistKey {
            cgroup_id: 42,
            port: 8080,
            side,
            metric,
            _pad: 0,
        }
    }

    fn counts(ns: u64, n: u64) -> Vec<u64> {
        let mut counts = vec![0u64; probe_common::hist::BUCKETS];
        counts[probe_common::hist::bucket(ns)] = n;
        counts
    }

    fn resolver() -> Resolver {
        Resolver::new("/nonexistent".into())
    }

    #[test]
    fn kernel_srtt_histograms_become_series_per_service_port() {
        let s = &summaries(
            [(key(METRIC_SRTT, SIDE_PASSIVE), counts(20_000_000, 5))],
            &mut resolver(),
        )[0];
        assert_eq!(
            (s.metric, s.direction, s.local_port, s.remote_port),
            (Metric::Srtt, Direction::Passive, Some(8080), None)
        );
        assert_eq!(s.latency.count, 5);
        assert!((s.latency.p50_us - 20_000.0).abs() < 20_000.0 / 32.0);
    }

    #[test]
    fn the_service_port_is_the_remote_one_of_active_sockets() {
        let (active, _) = SeriesKey::of(&key(METRIC_HANDSHAKE, SIDE_ACTIVE)).expect("key");
        assert_eq!((active.local_port, active.remote_port), (None, Some(8080)));
        let (passive, _) = SeriesKey::of(&key(METRIC_LIFETIME, SIDE_PASSIVE)).expect("key");
        assert_eq!(
            (passive.local_port, passive.remote_port),
            (Some(8080), None)
        );
        assert_eq!(passive.direction, Direction::Passive);
    }

    #[test]
    fn lifetimes_count_in_microseconds_and_reach_past_the_nanosecond_buckets() {
        // A pooled connection's 10 minutes: past 2^36 ns, where a nanosecond histogram ends.
        let ten_minutes_us = 600_000_000;
        let s = &summaries(
            [(key(METRIC_LIFETIME, SIDE_ACTIVE), counts(ten_minutes_us, 3))],
            &mut resolver(),
        )[0];
        assert_eq!((s.metric, s.latency.count), (Metric::Lifetime, 3));
        let want = ten_minutes_us as f64;
        assert!(
            (s.latency.p50_us - want).abs() < want / 32.0,
            "p50 {} µs",
            s.latency.p50_us
        );
    }

    #[test]
    fn unknown_metrics_are_left_out() {
        assert!(SeriesKey::of(&key(99, SIDE_ACTIVE)).is_none());
        assert!(summaries([(key(99, SIDE_ACTIVE), counts(5, 1))], &mut resolver()).is_empty());
    }

    #[test]
    fn syn_recv_timed_handshakes_join_their_series_and_are_counted() {
        let s = summaries(
            [
                (key(METRIC_HANDSHAKE, SIDE_PASSIVE), counts(100_000, 1)),
                (
                    key(METRIC_HANDSHAKE_FROM_SYN_RECV, SIDE_PASSIVE),
                    counts(10_000, 2),
                ),
            ],
            &mut resolver(),
        );
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].latency.count, s[0].timed_from_syn_recv), (3, 2));
    }
}
