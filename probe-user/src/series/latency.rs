//! Latency histograms and their summary, shared by every series hopprobe reports.

use hdrhistogram::Histogram;
use probe_common::hist::{BUCKETS, bucket_low};

pub use hopprobe_formats::summary::LatencySummary as Summary;

const SIGNIFICANT_DIGITS: u8 = 2;

/// Nanosecond values with two significant digits (within 1 %, as the kernel's own histograms:
/// `probe_common::hist`). With three, each series' count array was 8 times larger (160 KiB to
/// a second) and hopprobe's peak RSS at c = 32 in the lab 75–78 MiB against 61–66 MiB
/// (2026-12-05); the record's one load from the array is still most of hopprobe's CPU per
/// record (perf: a cache miss, whatever the size). The histogram resizes itself to the largest
/// value seen (`saturating_record` would clamp to its initial range instead).
#[derive(Clone)]
pub struct Latency {
    h: Histogram<u64>,
    /// The exact sum of what was recorded (what `/metrics` exports as `_sum`).
    sum_ns: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            h: Histogram::new(SIGNIFICANT_DIGITS).expect("2 significant digits is valid"),
            sum_ns: 0,
        }
    }
}

impl Latency {
    /// Zero-length durations exist (same-tick events); the histogram's floor is 1 ns. Returns
    /// false when the value cannot be recorded.
    pub fn record(&mut self, ns: u64) -> bool {
        self.record_n(ns, 1)
    }

    /// Records `count` values of `ns` at once (for histograms the kernel kept).
    pub fn record_n(&mut self, ns: u64, count: u64) -> bool {
        let ok = self.h.record_n(ns.max(1), count).is_ok();
        if ok {
            self.sum_ns = self.sum_ns.saturating_add(ns.saturating_mul(count));
        }
        ok
    }

    /// Adds everything `other` recorded.
    pub fn add(&mut self, other: &Self) {
        // Both resize themselves to what they hold, so adding cannot go out of range.
        let _ = self.h.add(&other.h);
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    /// `(the highest value each recorded bucket can hold, its count)`, lowest first.
    pub fn recorded(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
    }

    /// Rebuilds a histogram from a kernel log-linear histogram's bucket counts
    /// (`probe_common::hist`), each value at the middle of its bucket: off by at most half a
    /// bucket's width (1/64).
    pub fn from_buckets(counts: &[u64]) -> Self {
        let mut latency = Self::default();
        for (i, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let low = bucket_low(i);
            let high = if i + 1 < BUCKETS {
                bucket_low(i + 1)
            } else {
                low + 1
            };
            latency.record_n(low + (high - low) / 2, n);
        }
        latency
    }

    pub fn summary(&self) -> Summary {
        let h = &self.h;
        let us = |ns: f64| (ns / 100.0).round() / 10.0;
        Summary {
            count: h.len(),
            min_us: us(h.min() as f64),
            mean_us: us(h.mean()),
            p50_us: us(h.value_at_quantile(0.50) as f64),
            p90_us: us(h.value_at_quantile(0.90) as f64),
            p99_us: us(h.value_at_quantile(0.99) as f64),
            max_us: us(h.max() as f64),
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
            assert!(l.record(i * 1_000));
        }
        let s = l.summary();
        assert_eq!((s.count, s.min_us), (100, 1.0));
        // Two significant digits: each within 1 %.
        for (got, want) in [
            (s.p50_us, 50.0),
            (s.p90_us, 90.0),
            (s.p99_us, 99.0),
            (s.max_us, 100.0),
            (s.mean_us, 50.5),
        ] {
            assert!((got - want).abs() <= want / 100.0, "{got} vs {want}: {s:?}");
        }
    }

    #[test]
    fn grows_to_hours_and_keeps_zero() {
        let mut l = Latency::default();
        assert!(l.record(0));
        assert!(l.record(3_600_000_000_000));
        let max = l.summary().max_us;
        // Two significant digits: within 1 % of an hour.
        assert!((max - 3.6e9).abs() <= 3.6e7, "{max}");
    }
}
