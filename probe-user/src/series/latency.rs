//! Latency histograms and their summary, shared by every series hopprobe reports.

use probe_common::hist::bucket_middle as kernel_middle;

pub use hopprobe_formats::summary::LatencySummary as Summary;

/// Buckets per power of two: `2^SUB_BITS`, each at most `2^-SUB_BITS` of its values wide.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;

/// Nanosecond values in log-linear buckets, 64 per power of two (each at most 1/64 of its
/// values wide), from 0 to `u64::MAX`.
///
/// Not hdrhistogram with two significant digits (128 buckets per power of two): at a drain of
/// the rings nearly every record of a series landed in a cache line of its counts not yet
/// loaded, and that one load was 27 % of hopprobe's CPU at c = 32 in the lab (perf,
/// 2026-12-05). Half as many buckets per power of two put more of a series' values in the same
/// lines. Not the kernel's 32 either (`probe_common::hist`): their 3 % made the accuracy
/// matrix's differences of percentiles miss their 0.2 ms tolerance. Count, sum, minimum and
/// maximum are exact; a percentile is the highest value its bucket holds (at most 1.6 %
/// above), the rule `/metrics` follows for a bucket that straddles a bound.
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

fn index(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let shift = u64::from(ns.ilog2() - SUB_BITS);
    ((shift + 1) * SUB + ((ns >> shift) & (SUB - 1))) as usize
}

/// The lowest value bucket `i` holds; `u64::MAX` past the last bucket.
fn low(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    if shift > u64::from(63 - SUB_BITS) {
        return u64::MAX;
    }
    (SUB + i % SUB) << shift
}

/// The highest value bucket `i` holds.
fn high(i: usize) -> u64 {
    match low(i + 1) {
        u64::MAX => u64::MAX,
        next => next - 1,
    }
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

    /// A kernel log-linear histogram's bucket counts (`probe_common::hist`, 32 buckets per
    /// power of two), each value at its bucket's middle: off by at most 1/64.
    pub fn from_buckets(counts: &[u64]) -> Self {
        Self::from_buckets_in(counts, 1)
    }

    /// As `from_buckets`, for a histogram that counts in units of `unit_ns` nanoseconds.
    pub fn from_buckets_in(counts: &[u64], unit_ns: u64) -> Self {
        let mut latency = Self::default();
        for (i, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            latency.record_n(kernel_middle(i).saturating_mul(unit_ns), n);
        }
        latency
    }

    /// The value at quantile `q`: the highest value of the bucket that holds the
    /// `ceil(q · count)`-th value, and never above the maximum.
    fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return high(i).min(self.max_ns);
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

    /// A percentile is its bucket's highest value: never below the value, at most 1/64 above.
    fn near(got_us: f64, want_us: f64) -> bool {
        got_us >= want_us && got_us <= want_us * (1.0 + 1.0 / 64.0) + 0.1
    }

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
        for (got, want) in [(s.p50_us, 50.0), (s.p90_us, 90.0), (s.p99_us, 99.0)] {
            assert!(near(got, want), "{got} vs {want}: {s:?}");
        }
    }

    #[test]
    fn grows_to_any_u64_and_keeps_zero() {
        let mut l = Latency::default();
        l.record(0);
        l.record(3_600_000_000_000);
        l.record(u64::MAX);
        let s = l.summary();
        assert_eq!((s.count, s.min_us), (3, 0.0));
        assert_eq!(l.recorded().last(), Some((u64::MAX, 1)));
        assert!(near(s.p50_us, 3.6e9), "{}", s.p50_us);
    }

    #[test]
    fn each_value_is_in_a_bucket_at_most_a_64th_of_it_wide() {
        for ns in (0..200u64)
            .chain((6..64).flat_map(|e| [1u64 << e, (1 << e) + 12_345, (3 << e) / 2, (1 << e) - 1]))
            .chain([u64::MAX])
        {
            let i = index(ns);
            assert!(low(i) <= ns && ns <= high(i), "{ns} in {i}");
            assert!(
                (high(i) - low(i)) <= ns / 64,
                "{ns}: {}..={}",
                low(i),
                high(i)
            );
            if i > 0 {
                assert_eq!(high(i - 1) + 1, low(i), "{i}");
            }
        }
    }

    #[test]
    fn kernel_histograms_count_at_their_buckets_middles() {
        let mut counts = vec![0u64; probe_common::hist::BUCKETS];
        counts[probe_common::hist::bucket(20_000)] = 3;
        let mut l = Latency::default();
        l.record(20_000);
        l.add(&Latency::from_buckets(&counts));
        assert_eq!(l.count(), 4);
        // 19 968..20 479 ns: counted at 20 224.
        assert_eq!(l.sum_ns(), 20_000 + 3 * 20_224);
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
