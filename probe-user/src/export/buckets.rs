//! The classic buckets every hopprobe exports, and how the histograms it keeps (the kernel's
//! log-linear ones, and userspace's, finer and with an exact sum) map onto them.
//!
//! The bounds are fixed, the same on every node, so that `sum by (le)` across nodes is exact.
//! A source bucket that straddles a bound counts in the bucket above it: a count under `le`
//! never includes a value above `le`, and a value at most one source bucket's width below a
//! bound (1/32 of it for the kernel's, 1/64 for userspace's) may count one bucket up.

use std::collections::BTreeMap;

use probe_common::hist::{BUCKETS as KERNEL_BUCKETS, bucket_low};

use crate::series::latency::Latency;

/// Upper bounds in nanoseconds: 1, 2.5, 5 per decade from 1 µs to 10 s.
pub const BOUNDS_NS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The native histograms' schema: 2^3 = 8 buckets per power of two, each 2^(1/8) = 9.05 %
/// wider than the last — coarser than either source (the kernel's 1/32 of a power of two, at
/// most 3.1 %; userspace's 1/64), so that no native bucket claims a precision the source does
/// not have. The same on every node, so that merging across nodes is exact.
pub const NATIVE_SCHEMA: i32 = 3;

/// One series' counts per bound (not cumulative; the last is above 10 s), their sum and count;
/// and the same values in native buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    pub counts: [u64; BOUNDS_NS.len() + 1],
    pub sum_ns: f64,
    pub count: u64,
    /// Native bucket index → count; index `i` holds (2^((i-1)/8), 2^(i/8)] seconds.
    pub native: BTreeMap<i32, u64>,
    /// Values of 0 (the native zero bucket).
    pub zero: u64,
}

/// The native bucket (at `NATIVE_SCHEMA`) that holds `ns` nanoseconds.
pub fn native_index(ns: u64) -> i32 {
    let seconds = ns as f64 / 1e9;
    (seconds.log2() * f64::from(1 << NATIVE_SCHEMA)).ceil() as i32
}

impl Buckets {
    /// `n` values no greater than `high`, in the first bucket that holds `high`; the same rule
    /// for the native buckets.
    fn add_range(&mut self, high: u64, n: u64) {
        let i = BOUNDS_NS.partition_point(|&b| b < high);
        self.counts[i] += n;
        self.count += n;
        if high == 0 {
            self.zero += n;
        } else {
            *self.native.entry(native_index(high)).or_default() += n;
        }
    }

    /// The native buckets as the protobuf format writes them: spans of consecutive buckets
    /// (`(offset from the last span's end, or the first index; length)`) and each bucket's
    /// count as the difference from the one before.
    pub fn native_spans(&self) -> (Vec<(i32, u32)>, Vec<i64>) {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::with_capacity(self.native.len());
        let mut last: Option<(i32, i64)> = None;
        for (&i, &n) in &self.native {
            let n = n as i64;
            match last {
                Some((p, _)) if i == p + 1 => {
                    if let Some(s) = spans.last_mut() {
                        s.1 += 1;
                    }
                }
                Some((p, _)) => spans.push((i - p - 1, 1)),
                None => spans.push((i, 1)),
            }
            deltas.push(n - last.map_or(0, |(_, c)| c));
            last = Some((i, n));
        }
        (spans, deltas)
    }

    /// From userspace's histogram; its sum is exact.
    pub fn from_latency(l: &Latency) -> Self {
        let mut b = Self::default();
        for (high, n) in l.recorded() {
            b.add_range(high, n);
        }
        b.sum_ns = l.sum_ns() as f64;
        b
    }

    /// From a kernel histogram's bucket counts (`probe_common::hist`); the kernel keeps no
    /// sum, so each value counts at its bucket's middle (off by at most 1/64 of each value).
    pub fn from_kernel(counts: &[u64]) -> Self {
        let mut b = Self::default();
        for (i, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let low = bucket_low(i);
            let high = if i + 1 < KERNEL_BUCKETS {
                bucket_low(i + 1) - 1
            } else {
                u64::MAX
            };
            b.add_range(high, n);
            let middle = if high == u64::MAX {
                low
            } else {
                low + (high - low) / 2
            };
            b.sum_ns += middle as f64 * n as f64;
        }
        b
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
        self.count += other.count;
        for (&i, &n) in &other.native {
            *self.native.entry(i).or_default() += n;
        }
        self.zero += other.zero;
    }

    /// `(le in seconds, count in that bucket alone)`, ending with `+Inf`: what
    /// prometheus-client's encoder takes (it makes them cumulative).
    pub fn per_bound_seconds(&self) -> Vec<(f64, u64)> {
        BOUNDS_NS
            .iter()
            .map(|&le| le as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(self.counts)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_counts_under_a_bound_only_when_it_cannot_be_above_it() {
        let mut l = Latency::default();
        // 1 ms itself shares a bucket (999,424..=1,015,807 ns) with values above it, so it
        // counts above; 0.99 ms does not.
        l.record(990_000);
        l.record(1_000_000);
        l.record(20_000_000_000);
        let b = Buckets::from_latency(&l);
        let at = |ns| b.counts[BOUNDS_NS.iter().position(|&x| x == ns).expect("bound")];
        assert_eq!((at(1_000_000), at(2_500_000)), (1, 1));
        assert_eq!(b.counts[BOUNDS_NS.len()], 1);
        assert_eq!(b.count, 3);
        assert_eq!(b.sum_ns, 20_001_990_000.0);
        let per_bound = b.per_bound_seconds();
        assert_eq!(per_bound.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!((per_bound[9], per_bound[10]), ((0.001, 1), (0.0025, 1)));
    }

    #[test]
    fn kernel_buckets_never_count_below_a_bound_what_may_be_above_it() {
        let mut counts = vec![0u64; KERNEL_BUCKETS];
        // 992..=1007 ns: straddles 1 µs, so it counts above.
        counts[probe_common::hist::bucket(1_000)] = 4;
        // 960..=975 ns: wholly under.
        counts[probe_common::hist::bucket(970)] = 2;
        let b = Buckets::from_kernel(&counts);
        assert_eq!((b.counts[0], b.counts[1], b.count), (2, 4, 6));
        let mean = b.sum_ns / 6.0;
        assert!((mean - 990.0).abs() < 990.0 / 64.0, "{mean}");
    }

    #[test]
    fn native_buckets_hold_each_value_at_or_above_it_by_at_most_one_bucket() {
        // Bucket i holds (2^((i-1)/8), 2^(i/8)] s.
        for ns in [1_000u64, 3_500_000, 7_000_000, 1_000_000_000] {
            let i = native_index(ns);
            let upper = 2f64.powf(f64::from(i) / 8.0) * 1e9;
            let lower = 2f64.powf(f64::from(i - 1) / 8.0) * 1e9;
            assert!(
                lower < ns as f64 && ns as f64 <= upper * (1.0 + 1e-12),
                "{ns}: {i}"
            );
        }
        assert_eq!(native_index(1_000_000_000), 0, "1 s is 2^0");
        let mut counts = vec![0u64; KERNEL_BUCKETS];
        counts[probe_common::hist::bucket(3_500_000)] = 3;
        counts[0] = 1;
        let b = Buckets::from_kernel(&counts);
        let (at, n) = b
            .native
            .iter()
            .next()
            .map(|(i, n)| (*i, *n))
            .expect("one bucket");
        assert_eq!((n, b.zero), (3, 1));
        let upper = 2f64.powf(f64::from(at) / 8.0);
        // Never below the kernel bucket's values, at most a native bucket above its top.
        let kernel_top = bucket_low(probe_common::hist::bucket(3_500_000) + 1) as f64 / 1e9;
        assert!(upper >= kernel_top - 1e-15 && upper < kernel_top * 2f64.powf(1.0 / 8.0));
    }

    #[test]
    fn native_spans_are_offsets_and_deltas() {
        let b = Buckets {
            native: BTreeMap::from([(-3, 2), (-2, 5), (1, 1)]),
            ..Buckets::default()
        };
        assert_eq!(b.native_spans(), (vec![(-3, 2), (2, 1)], vec![2, 3, -4]));
        assert_eq!(Buckets::default().native_spans(), (vec![], vec![]));
    }

    #[test]
    fn merging_adds_counts_and_sums() {
        let mut l = Latency::default();
        l.record(3_000);
        let one = Buckets::from_latency(&l);
        let mut two = one.clone();
        two.merge(&one);
        assert_eq!((two.count, two.counts[2], two.sum_ns), (2, 2, 6_000.0));
        assert_eq!(two.native.values().sum::<u64>(), 2);
    }
}
