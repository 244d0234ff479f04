//! Per-target aggregates: HdrHistograms and counters, so memory does not grow with `-n`.

use hdrhistogram::Histogram;

use crate::{error::ErrorKind, record::Sample};

/// Exact min/max/sum next to a histogram: the report's fastest/slowest/average are exact.
#[derive(Clone)]
pub struct Series {
    pub hist: Histogram<u64>,
    pub count: u64,
    pub sum_ns: u128,
    pub min_ns: u64,
    pub max_ns: u64,
}

impl Default for Series {
    fn default() -> Series {
        Series {
            // 3 significant digits over an auto-resizing range: 0.1 % resolution at any scale.
            hist: Histogram::new(3).expect("3 significant digits is a valid histogram"),
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

impl Series {
    pub fn record(&mut self, ns: u64) {
        // HdrHistogram cannot hold 0; 1 ns is below any resolution that matters here.
        let v = ns.max(1);
        let _ = self.hist.record(v);
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, o: &Series) {
        let _ = self.hist.add(&o.hist);
        self.count += o.count;
        self.sum_ns += o.sum_ns;
        self.min_ns = self.min_ns.min(o.min_ns);
        self.max_ns = self.max_ns.max(o.max_ns);
    }

    fn secs(ns: u64) -> f64 {
        ns as f64 / 1e9
    }

    /// Seconds, NaN when empty (as oha prints for an empty series).
    pub fn min(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            Self::secs(self.min_ns)
        }
    }

    pub fn max(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            Self::secs(self.max_ns)
        }
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum_ns as f64 / self.count as f64 / 1e9
        }
    }

    /// Seconds at percentile `p` (0–100).
    pub fn percentile(&self, p: f64) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            Self::secs(self.hist.value_at_quantile(p / 100.0))
        }
    }

    /// oha's 11-line histogram: bucket `i` holds values in (label(i-1), label(i)], labels evenly
    /// spaced from the fastest to the slowest.
    pub fn buckets(&self, lines: usize) -> Vec<(f64, u64)> {
        if self.count == 0 {
            return Vec::new();
        }
        let min = self.min();
        let max = self.max();
        let step = (max - min) / (lines - 1) as f64;
        let mut counts = vec![0u64; lines];
        for v in self.hist.iter_recorded() {
            // The lowest value of the histogram's bucket, clamped into [min, max]: a value
            // that is exactly on a label then falls on that label's line, as in oha.
            let low = self.hist.lowest_equivalent(v.value_iterated_to());
            let x = (low as f64 / 1e9).clamp(min, max);
            let i = if step > 0.0 {
                (((x - min) / step).ceil() as usize).min(lines - 1)
            } else {
                0
            };
            counts[i] += v.count_at_value();
        }
        counts
            .into_iter()
            .enumerate()
            .map(|(i, c)| (min + step * i as f64, c))
            .collect()
    }

    /// The histogram in HdrHistogram's V2 compressed format, base64: any HdrHistogram library
    /// can decode it (values are nanoseconds).
    pub fn base64_v2(&self) -> String {
        use base64::Engine;
        let mut out = Vec::new();
        let mut ser = hdrhistogram::serialization::V2DeflateSerializer::new();
        match hdrhistogram::serialization::Serializer::serialize(&mut ser, &self.hist, &mut out) {
            Ok(_) => base64::engine::general_purpose::STANDARD.encode(out),
            Err(_) => String::new(),
        }
    }
}

#[derive(Clone, Default)]
pub struct Stats {
    /// Successful requests: any HTTP status counts as success, as in oha.
    pub latency: Series,
    pub first_byte: Series,
    /// New connections of successful requests: DNS + TCP connect + TLS (oha's "DNS+dialup").
    pub dns_dialup: Series,
    pub dns_lookup: Series,
    pub connect: Series,
    pub tls: Series,
    pub requests: u64,
    pub successes: u64,
    pub body_bytes: u64,
    pub statuses: Vec<(u16, u64)>,
    pub errors: [u64; ErrorKind::ALL.len()],
    /// Completions per 10 ms since the start of the measured phase (oha's rps statistics).
    pub per_10ms: Vec<u32>,
}

impl Stats {
    pub fn add(&mut self, s: &Sample, measured_start_ns: u64, latency_correction: bool) {
        self.requests += 1;
        let end = s.end_ns;
        let slot = (end.saturating_sub(measured_start_ns) / 10_000_000) as usize;
        // Bounded: one u32 per 10 ms of run time, whatever the number of requests.
        if slot < 360_000 {
            if self.per_10ms.len() <= slot {
                self.per_10ms.resize(slot + 1, 0);
            }
            self.per_10ms[slot] += 1;
        }
        if let Some(e) = s.error {
            self.errors[e.index()] += 1;
            return;
        }
        let from = if latency_correction {
            s.scheduled_ns.unwrap_or(s.start_ns)
        } else {
            s.start_ns
        };
        self.successes += 1;
        self.latency.record(end.saturating_sub(from));
        if let Some(fb) = s.first_byte_ns {
            self.first_byte.record(fb.saturating_sub(from));
        }
        self.body_bytes += s.bytes;
        if let Some(code) = s.status {
            match self.statuses.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => self.statuses.push((code, 1)),
            }
        }
        if !s.reused {
            if let (Some(dns), Some(cs)) = (s.dial.dns_ns, s.dial.connect_start_ns) {
                let ready = s.dial.tls_end_ns.or(s.dial.connect_end_ns).unwrap_or(cs);
                self.dns_dialup.record(ready - cs + dns);
                self.dns_lookup.record(dns);
            }
            if let (Some(cs), Some(ce)) = (s.dial.connect_start_ns, s.dial.connect_end_ns) {
                self.connect.record(ce - cs);
                if let Some(te) = s.dial.tls_end_ns {
                    self.tls.record(te - ce);
                }
            }
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.latency.merge(&o.latency);
        self.first_byte.merge(&o.first_byte);
        self.dns_dialup.merge(&o.dns_dialup);
        self.dns_lookup.merge(&o.dns_lookup);
        self.connect.merge(&o.connect);
        self.tls.merge(&o.tls);
        self.requests += o.requests;
        self.successes += o.successes;
        self.body_bytes += o.body_bytes;
        for &(code, n) in &o.statuses {
            match self.statuses.iter_mut().find(|(c, _)| *c == code) {
                Some((_, m)) => *m += n,
                None => self.statuses.push((code, n)),
            }
        }
        for (a, b) in self.errors.iter_mut().zip(o.errors.iter()) {
            *a += b;
        }
        if self.per_10ms.len() < o.per_10ms.len() {
            self.per_10ms.resize(o.per_10ms.len(), 0);
        }
        for (a, b) in self.per_10ms.iter_mut().zip(o.per_10ms.iter()) {
            *a += b;
        }
    }

    /// As oha computes it: requests cut off by the end of `-z` are the run's doing, not the
    /// server's, and count neither way.
    pub fn success_rate(&self) -> f64 {
        let cut = self.errors[ErrorKind::AbortedDeadline.index()];
        let judged = self.requests.saturating_sub(cut);
        if judged == 0 {
            0.0
        } else {
            self.successes as f64 / judged as f64
        }
    }

    pub fn size_per_request(&self) -> Option<u64> {
        self.body_bytes.checked_div(self.successes)
    }

    /// Errors by name, most frequent first.
    pub fn error_list(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = ErrorKind::ALL
            .iter()
            .filter(|k| self.errors[k.index()] > 0)
            .map(|k| (k.name(), self.errors[k.index()]))
            .collect();
        v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start: u64, end: u64, error: Option<ErrorKind>) -> Sample {
        Sample {
            start_ns: start,
            end_ns: end,
            first_byte_ns: Some(end),
            status: error.is_none().then_some(200),
            bytes: 10,
            error,
            ..Sample::default()
        }
    }

    #[test]
    fn errors_are_counted_but_not_timed() {
        let mut s = Stats::default();
        s.add(&sample(0, 1_000_000, None), 0, false);
        s.add(
            &sample(0, 9_000_000, Some(ErrorKind::ConnectionReset)),
            0,
            false,
        );
        assert_eq!(s.requests, 2);
        assert_eq!(s.successes, 1);
        assert_eq!(s.latency.count, 1);
        assert_eq!(s.latency.max(), 0.001);
        assert_eq!(s.error_list(), vec![("connection reset", 1)]);
        assert_eq!(s.success_rate(), 0.5);
        assert_eq!(s.size_per_request(), Some(10));
        s.add(
            &sample(0, 9_000_000, Some(ErrorKind::AbortedDeadline)),
            0,
            false,
        );
        assert_eq!(
            s.success_rate(),
            0.5,
            "a cut-off request counts neither way"
        );
    }

    #[test]
    fn latency_correction_measures_from_the_schedule() {
        let mut s = Stats::default();
        let mut x = sample(5_000_000, 6_000_000, None);
        x.scheduled_ns = Some(1_000_000);
        s.add(&x, 0, true);
        assert_eq!(s.latency.max_ns, 5_000_000);
        let mut t = Stats::default();
        t.add(&x, 0, false);
        assert_eq!(t.latency.max_ns, 1_000_000);
    }

    #[test]
    fn memory_is_flat_in_the_number_of_samples() {
        // Same range of values, 1 000 vs 1 000 000 samples: the histogram does not grow.
        let mut small = Stats::default();
        let mut large = Stats::default();
        for i in 0..1_000_000u64 {
            let lat = 50_000 + (i * 7919) % 10_000_000;
            if i < 1_000 {
                small.add(&sample(0, lat, None), 0, false);
            }
            large.add(&sample(0, lat, None), 0, false);
        }
        assert_eq!(large.latency.count, 1_000_000);
        let footprint = |s: &Stats| s.latency.hist.distinct_values() + s.per_10ms.len();
        assert!(
            footprint(&large) <= footprint(&small) * 2,
            "{} vs {}",
            footprint(&large),
            footprint(&small)
        );
    }

    #[test]
    fn buckets_follow_oha_and_percentiles_are_close() {
        let mut s = Series::default();
        for v in 1..=10u64 {
            s.record(v * 1_000_000);
        }
        let b = s.buckets(4);
        let counts: Vec<u64> = b.iter().map(|x| x.1).collect();
        // oha's own test: 1..=10 in 4 buckets gives 1, 3, 3, 3.
        assert_eq!(counts, vec![1, 3, 3, 3]);
        assert!((s.percentile(50.0) - 0.005).abs() < 0.000_01);
        assert_eq!(s.mean(), 0.0055);
    }

    #[test]
    fn merged_stats_add_up_and_base64_roundtrips() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.add(&sample(0, 2_000, None), 0, false);
        b.add(&sample(0, 3_000, None), 0, false);
        b.add(&sample(0, 3_000, Some(ErrorKind::Dns)), 0, false);
        a.merge(&b);
        assert_eq!(
            (a.requests, a.successes, a.statuses.clone()),
            (3, 2, vec![(200, 2)])
        );
        assert_eq!(a.latency.min_ns, 2_000);
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(a.latency.base64_v2())
            .unwrap();
        let h: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap();
        assert_eq!(h.len(), 2);
    }
}
