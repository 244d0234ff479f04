//! Counts of owners that are gone (a deleted pod's cgroups and veth), kept under the labels
//! they were exported with. While a live owner still has those labels (another pod of the
//! same workload) they stay in that series, so its counters never go down; once none has for
//! the grace period, the series is removed.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{Labels, Snapshot, TcpCounts, buckets::Buckets};

/// One family's retired counts.
#[derive(Debug)]
struct Family<V> {
    entries: BTreeMap<Labels, Entry<V>>,
}

impl<V> Default for Family<V> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
        }
    }
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    /// Since when no live owner has had these labels; `None` while one has.
    orphaned_since: Option<Instant>,
}

impl<V: Clone> Family<V> {
    fn fold(&mut self, from: BTreeMap<Labels, V>, merge: impl Fn(&mut V, &V)) {
        for (labels, value) in from {
            match self.entries.get_mut(&labels) {
                Some(e) => merge(&mut e.value, &value),
                None => {
                    self.entries.insert(
                        labels,
                        Entry {
                            value,
                            orphaned_since: None,
                        },
                    );
                }
            }
        }
    }

    /// Marks which label sets live owners still have; drops those orphaned for `grace`.
    fn age(&mut self, live: &BTreeMap<Labels, V>, now: Instant, grace: Duration) -> usize {
        let before = self.entries.len();
        self.entries.retain(|labels, e| {
            if live.contains_key(labels) {
                e.orphaned_since = None;
                return true;
            }
            let since = *e.orphaned_since.get_or_insert(now);
            now.duration_since(since) < grace
        });
        before - self.entries.len()
    }

    /// Adds the retired counts to the live series; `add` decides whether a new series fits.
    fn merge_into(
        &self,
        live: &mut BTreeMap<Labels, V>,
        merge: impl Fn(&mut V, &V),
        mut add: impl FnMut(&mut BTreeMap<Labels, V>, Labels, &V),
    ) {
        for (labels, e) in &self.entries {
            match live.get_mut(labels) {
                Some(v) => merge(v, &e.value),
                None => add(live, labels.clone(), &e.value),
            }
        }
    }
}

/// Every latency and TCP family's retired counts.
#[derive(Debug, Default)]
pub struct Retired {
    hops: Family<Buckets>,
    upstream: Family<Buckets>,
    handshake: Family<Buckets>,
    srtt: Family<Buckets>,
    tcp: Family<TcpCounts>,
    /// Series removed so far.
    pub removed: u64,
}

pub fn merge_tcp(a: &mut TcpCounts, b: &TcpCounts) {
    a.retransmits += b.retransmits;
    a.resets_sent += b.resets_sent;
    a.resets_received += b.resets_received;
}

impl Retired {
    /// Keeps the series of owners about to be removed (`gone` holds only theirs).
    pub fn fold(&mut self, gone: Snapshot) {
        self.hops.fold(gone.hops, Buckets::merge);
        self.upstream.fold(gone.upstream, Buckets::merge);
        self.handshake.fold(gone.handshake, Buckets::merge);
        self.srtt.fold(gone.srtt, Buckets::merge);
        self.tcp.fold(gone.tcp, merge_tcp);
    }

    /// Given what live owners export now, forgets the label sets none of them has had for
    /// `grace`; returns how many series went.
    pub fn age(&mut self, live: &Snapshot, now: Instant, grace: Duration) -> usize {
        let removed = self.hops.age(&live.hops, now, grace)
            + self.upstream.age(&live.upstream, now, grace)
            + self.handshake.age(&live.handshake, now, grace)
            + self.srtt.age(&live.srtt, now, grace)
            + self.tcp.age(&live.tcp, now, grace);
        self.removed += removed as u64;
        removed
    }

    /// Adds the retired counts to a scrape of the live owners. A series only retired ones
    /// have goes through `fits` (the series cap), which counts what it leaves out.
    pub fn merge_into(&self, s: &mut Snapshot, fits: &mut dyn FnMut() -> bool) {
        fn add<V: Clone>(
            fits: &mut dyn FnMut() -> bool,
        ) -> impl FnMut(&mut BTreeMap<Labels, V>, Labels, &V) {
            move |family, labels, value| {
                if fits() {
                    family.insert(labels, value.clone());
                }
            }
        }
        self.hops.merge_into(&mut s.hops, Buckets::merge, add(fits));
        self.upstream
            .merge_into(&mut s.upstream, Buckets::merge, add(fits));
        self.handshake
            .merge_into(&mut s.handshake, Buckets::merge, add(fits));
        self.srtt.merge_into(&mut s.srtt, Buckets::merge, add(fits));
        self.tcp.merge_into(&mut s.tcp, merge_tcp, add(fits));
    }

    pub fn len(&self) -> usize {
        self.hops.entries.len()
            + self.upstream.entries.len()
            + self.handshake.entries.len()
            + self.srtt.entries.len()
            + self.tcp.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(workload: &str) -> Labels {
        vec![
            ("hop", "app".to_owned()),
            ("k8s_workload", workload.to_owned()),
        ]
    }

    fn one(ns: u64) -> Buckets {
        let mut b = Buckets::default();
        b.counts[0] = 1;
        b.count = 1;
        b.sum_ns = ns as f64;
        b
    }

    fn snapshot(series: &[(&str, u64)]) -> Snapshot {
        let mut s = Snapshot::default();
        for &(w, n) in series {
            let mut b = Buckets::default();
            for _ in 0..n {
                b.merge(&one(500));
            }
            s.hops.insert(labels(w), b);
        }
        s
    }

    fn count(s: &Snapshot, w: &str) -> Option<u64> {
        s.hops.get(&labels(w)).map(|b| b.count)
    }

    #[test]
    fn a_workloads_series_keeps_a_deleted_pods_counts_while_another_pod_lives() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut r = Retired::default();
        // Two pods of `reviews` counted 3 and 4; the first is deleted.
        r.fold(snapshot(&[("reviews", 3)]));
        let live = snapshot(&[("reviews", 4)]);
        assert_eq!(r.age(&live, t0 + Duration::from_secs(600), grace), 0);
        let mut scrape = live;
        r.merge_into(&mut scrape, &mut || true);
        assert_eq!(count(&scrape, "reviews"), Some(7), "never goes down");
    }

    #[test]
    fn a_series_only_gone_owners_had_goes_after_the_grace_period() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut r = Retired::default();
        r.fold(snapshot(&[("ratings", 5)]));
        let live = snapshot(&[("details", 2)]);
        assert_eq!(r.age(&live, t0, grace), 0);
        let mut scrape = live.clone();
        r.merge_into(&mut scrape, &mut || true);
        assert_eq!(count(&scrape, "ratings"), Some(5), "shown during the grace");
        assert_eq!(r.age(&live, t0 + Duration::from_secs(59), grace), 0);
        assert_eq!(r.age(&live, t0 + Duration::from_secs(60), grace), 1);
        assert!(r.is_empty());
        let mut scrape = live;
        r.merge_into(&mut scrape, &mut || true);
        assert_eq!(count(&scrape, "ratings"), None);
    }

    #[test]
    fn a_live_owner_with_the_labels_again_restarts_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut r = Retired::default();
        r.fold(snapshot(&[("ratings", 5)]));
        r.age(&Snapshot::default(), t0, grace);
        r.age(
            &snapshot(&[("ratings", 1)]),
            t0 + Duration::from_secs(30),
            grace,
        );
        assert_eq!(
            r.age(&Snapshot::default(), t0 + Duration::from_secs(80), grace),
            0
        );
        assert_eq!(
            r.age(&Snapshot::default(), t0 + Duration::from_secs(140), grace),
            1
        );
    }

    #[test]
    fn retired_series_count_against_the_cap() {
        let mut r = Retired::default();
        r.fold(snapshot(&[("a", 1), ("b", 1)]));
        let mut left = 1;
        let mut dropped = 0;
        let mut scrape = Snapshot::default();
        r.merge_into(&mut scrape, &mut || {
            if left == 0 {
                dropped += 1;
                return false;
            }
            left -= 1;
            true
        });
        assert_eq!((scrape.hops.len(), dropped), (1, 1));
    }
}
