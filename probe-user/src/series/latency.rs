//! Latency histograms and their summary, shared by every series hopprobe reports.

use probe_common::hist::{BUCKETS as KERNEL_BUCKETS, SUB, SUB_BITS, bucket_low};

pub use hopprobe_formats::summary::LatencySummary as Summary;

/// Nanosecond values in the kernel's log-linear buckets (`probe_common::hist`: 32 per power
/// of two, each at most 1/32 of its values wide), extended past the kernel's 2^36 ns to any
/// `u64`, so a kernel histogram adds in bucket for bucket.
///
/// Not hdrhistogram (two significant digits, 128 buckets per power of two): at a drain of the
/// rings every record of a series lands in a different cache line of its counts, and that
/// one load was 27 % of hopprobe's CPU at c = 32 in the lab (perf, 2026-12-05); with four times
/// fewer buckets per power of two a series' values share lines. Count, sum, minimum and
/// maximum are kept exactly; a percentile is its bucket's middle, within 1/64 of the value.
#[derive(Clone, Default)]
pub struct Latency {
    /// Grown to the highest bucket recorded.
    counts: Vec<u64>,
    count: u64,
    /// The exact sum of what was recorded (what `/metrics` exports as `_sum`).
    sum_ns: u64,
    min_ns: u64,
    max_ns: u64,
}

/// The bucket of `ns`: `probe_common::hist::bucket` without its clamp at 2^36 ns.
fn index(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let e = u64::from(ns.ilog2());
    let shift = e - u64::from(SUB_BITS);
    ((shift + 1) * SUB + ((ns >> shift) & (SUB - 1))) as usize
}

/// The highest value bucket `i` holds.
fn high(i: usize) -> u64 {
    // The last bucket of `u64` ends at its maximum: the next one's start does not fit.
    bucket_low(i + 1).checked_sub(1).unwrap_or(u64::MAX)
}

/// The middle of bucket `i`: within 1/64 of any of its values.
fn middle(i: usize) -> u64 {
    let low = bucket_low(i);
    low + (high(i) - low).div_ceil(2)
}

impl Latency {
    pub fn record(&mut self, ns: u64) {
        self.record_n(ns, 1);
    }

    /// Records `count` values of `ns` at once.
    pub fn record_n(&mut self, ns: u64, count: u64) {
        if count == 0 {
            return;
        }
        let i = index(ns);
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += count;
        self.min_ns = if self.count == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        };
        self.max_ns = self.max_ns.max(ns);
        self.count += count;
        self.sum_ns = self.sum_ns.saturating_add(ns.saturating_mul(count));
    }

    /// Adds everything `other` recorded.
    pub fn add(&mut self, other: &Self) {
        if other.count == 0 {
            return;
        }
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.min_ns = if self.count == 0 {
            other.min_ns
        } else {
            self.min_ns.min(other.min_ns)
        };
        self.max_ns = self.max_ns.max(other.max_ns);
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// `(the highest value each recorded bucket can hold, its count)`, lowest first.
    pub fn recorded(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, &n)| (high(i), n))
    }

    /// A kernel log-linear histogram's bucket counts (`probe_common::hist`), bucket for
    /// bucket. The kernel keeps no values, so the sum, minimum and maximum are its buckets'
    /// middles: off by at most 1/64. Its last bucket also holds everything above 2^36 ns.
    pub fn from_buckets(counts: &[u64]) -> Self {
        let counts = &counts[..counts.len().min(KERNEL_BUCKETS)];
        let used = counts.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1);
        let mut latency = Self {
            counts: counts[..used].to_vec(),
            ..Self::default()
        };
        for (i, &n) in counts[..used].iter().enumerate().filter(|(_, n)| **n > 0) {
            let m = middle(i);
            if latency.count == 0 {
                latency.min_ns = m;
            }
            latency.max_ns = m;
            latency.count += n;
            latency.sum_ns = latency.sum_ns.saturating_add(m.saturating_mul(n));
        }
        latency
    }

    /// The value at quantile `q`: the middle of the bucket that holds the `ceil(q · count)`-th
    /// value, inside the exact minimum and maximum.
    fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return middle(i).clamp(self.min_ns, self.max_ns);
            }
        }
        self.max_ns
    }

    pub fn summary(&self) -> Summary {
        let us = |ns: f64| (ns / 100.0).round() / 10.0;
        let mean = if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64
        };
        Summary {
            count: self.count,
            min_us: us(self.min_ns as f64),
            mean_us: us(mean),
            p50_us: us(self.quantile(0.50) as f64),
            p90_us: us(self.quantile(0.90) as f64),
            p99_us: us(self.quantile(0.99) as f64),
            max_us: us(self.max_ns as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut l = Latency::default();
        for i in 1..=100u64 {
            l.record(i * 1_000);
        }
        let s = l.summary();
        assert_eq!(
            (s.count, s.min_us, s.max_us, s.mean_us),
            (100, 1.0, 100.0, 50.5)
        );
        // A bucket's middle: within 1/64.
        for (got, want) in [(s.p50_us, 50.0), (s.p90_us, 90.0), (s.p99_us, 99.0)] {
            assert!((got - want).abs() <= want / 64.0, "{got} vs {want}: {s:?}");
        }
    }

    #[test]
    fn grows_to_hours_and_keeps_zero() {
        let mut l = Latency::default();
        l.record(0);
        l.record(3_600_000_000_000);
        l.record(u64::MAX);
        let s = l.summary();
        assert_eq!((s.count, s.min_us), (3, 0.0));
        assert_eq!(l.recorded().last(), Some((u64::MAX, 1)));
        let p50 = s.p50_us;
        assert!((p50 - 3.6e9).abs() <= 3.6e9 / 64.0, "{p50}");
    }

    #[test]
    fn buckets_are_the_kernels_below_its_clamp() {
        for ns in
            (0..40u64).chain((5..37).flat_map(|e| [1u64 << e, (1 << e) + 12_345, (3 << e) / 2]))
        {
            if ns < 1 << 36 {
                assert_eq!(index(ns), probe_common::hist::bucket(ns), "{ns}");
            }
            let i = index(ns);
            assert!(bucket_low(i) <= ns && ns <= high(i), "{ns} in {i}");
            assert!(
                (middle(i) as f64 - ns as f64).abs() <= ns as f64 / 64.0 + 1.0,
                "{ns}"
            );
        }
    }

    #[test]
    fn kernel_histograms_add_bucket_for_bucket() {
        let mut counts = vec![0u64; KERNEL_BUCKETS];
        counts[probe_common::hist::bucket(20_000)] = 3;
        let mut l = Latency::default();
        l.record(20_000);
        l.add(&Latency::from_buckets(&counts));
        assert_eq!(
            l.recorded().collect::<Vec<_>>(),
            vec![(high(index(20_000)), 4)]
        );
        assert_eq!(l.summary().min_us, 20.0);
    }

    #[test]
    fn an_empty_histogram_summarises_to_zero() {
        let s = Latency::default().summary();
        assert_eq!((s.count, s.p50_us, s.max_us, s.mean_us), (0, 0.0, 0.0, 0.0));
        let mut l = Latency::default();
        l.add(&Latency::default());
        l.record_n(5, 0);
        assert_eq!(l.recorded().count(), 0);
    }
}
