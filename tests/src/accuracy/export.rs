//! The matrix's rows for `/metrics`: what a Prometheus would read of the leaves' `app` hops
//! (scraped once the load is done, before hopprobe stops) against the injected service time
//! and against the run's own summary, which keeps exact histograms.

use std::collections::BTreeMap;

use super::{checks::Row, series::Hops};

/// The leaves: their `app` hop is their service time, with nothing of their own calls in it.
const LEAVES: [&str; 2] = ["details", "ratings"];

/// One scrape's samples, `name{labels}` → value.
#[derive(Debug, Clone, Default)]
pub struct Exported(BTreeMap<String, f64>);

/// One histogram series as exported.
#[derive(Debug, Clone, PartialEq)]
struct Histogram {
    count: f64,
    sum_s: f64,
    /// `(le in seconds, cumulative count)`, ascending, `+Inf` last.
    buckets: Vec<(f64, f64)>,
}

impl Exported {
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The `app` hop of `service`'s own container.
    fn app(&self, service: &str) -> Option<Histogram> {
        let labels = format!(
            "hop=\"app\",direction=\"inbound\",k8s_namespace=\"bookinfo\",k8s_workload=\"{service}-v1\",k8s_container=\"{service}\","
        );
        let family = "hopprobe_hop_duration_seconds";
        let value = |suffix: &str| {
            self.0
                .iter()
                .find(|(k, _)| k.starts_with(&format!("{family}_{suffix}{{{labels}")))
                .map(|(_, v)| *v)
        };
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{family}_bucket{{{labels}")))
            .filter_map(|(k, v)| {
                let le = k.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Histogram {
            count: value("count")?,
            sum_s: value("sum")?,
            buckets,
        })
    }
}

impl Histogram {
    /// `histogram_quantile` as Prometheus computes it: linear within the bucket that holds
    /// the rank, the first bucket starting at 0.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total == 0.0 {
            return None;
        }
        let rank = q * total;
        let i = self.buckets.iter().position(|(_, c)| *c >= rank)?;
        let (le, count) = self.buckets[i];
        let (low, below) = if i == 0 {
            (0.0, 0.0)
        } else {
            self.buckets[i - 1]
        };
        if le.is_infinite() {
            return Some(low);
        }
        Some(low + (le - low) * (rank - below) / (count - below))
    }

    /// The classic bucket (lower, upper] in seconds that holds `s`.
    fn bucket_of(&self, s: f64) -> (f64, f64) {
        let mut low = 0.0;
        for &(le, _) in &self.buckets {
            if s <= le {
                return (low, le);
            }
            low = le;
        }
        (low, f64::INFINITY)
    }
}

/// Per leaf: the exported mean against the injected service time (the matrix's tolerance),
/// the exported count against the summary's, and the exported median (interpolated in its
/// classic bucket) in the bucket that holds the summary's exact median.
pub fn rows(scenario: &str, hops: &Hops, exported: &Exported, service_ms: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    for service in LEAVES {
        let pod = format!("{service}-v1");
        let (Some(h), Some(truth)) = (exported.app(service), hops.one("app", &pod, Some(service)))
        else {
            rows.push(Row::missing(scenario, format!("/metrics app {service}")));
            continue;
        };
        rows.push(Row::within(
            scenario,
            format!("/metrics app {service} mean = A (ms)"),
            service_ms,
            h.sum_s / h.count.max(1.0) * 1e3,
        ));
        // The summary, at exit, may count one more per kept-alive connection into the leaf
        // (its last exchange completes with the connection's close).
        let n = truth.count as f64;
        rows.push(Row::range(
            scenario,
            format!("/metrics app {service} count = the summary's"),
            format!("{n} (−2)"),
            h.count,
            n - 2.0,
            n,
        ));
        let p50 = h.quantile(0.5).unwrap_or(f64::NAN);
        let (low, high) = h.bucket_of(truth.p50_us / 1e6);
        rows.push(Row::range(
            scenario,
            format!("/metrics app {service} p50 in the exact p50's bucket (ms)"),
            format!("({:.3}, {:.3}]", low * 1e3, high * 1e3),
            p50 * 1e3,
            low * 1e3,
            high * 1e3,
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
hopprobe_hop_duration_seconds_sum{hop=\"app\",direction=\"inbound\",k8s_namespace=\"bookinfo\",k8s_workload=\"details-v1\",k8s_container=\"details\",port=\"9080\"} 0.21
hopprobe_hop_duration_seconds_count{hop=\"app\",direction=\"inbound\",k8s_namespace=\"bookinfo\",k8s_workload=\"details-v1\",k8s_container=\"details\",port=\"9080\"} 100
hopprobe_hop_duration_seconds_bucket{hop=\"app\",direction=\"inbound\",k8s_namespace=\"bookinfo\",k8s_workload=\"details-v1\",k8s_container=\"details\",port=\"9080\",le=\"0.001\"} 0
hopprobe_hop_duration_seconds_bucket{hop=\"app\",direction=\"inbound\",k8s_namespace=\"bookinfo\",k8s_workload=\"details-v1\",k8s_container=\"details\",port=\"9080\",le=\"0.0025\"} 100
hopprobe_hop_duration_seconds_bucket{hop=\"app\",direction=\"inbound\",k8s_namespace=\"bookinfo\",k8s_workload=\"details-v1\",k8s_container=\"details\",port=\"9080\",le=\"+Inf\"} 100
";

    #[test]
    fn reads_a_series_and_interpolates_as_prometheus_does() {
        let h = Exported::parse(TEXT).app("details").expect("details");
        assert_eq!((h.count, h.sum_s), (100.0, 0.21));
        // Half of (1, 2.5] ms.
        assert!((h.quantile(0.5).expect("p50") - 0.00175).abs() < 1e-12);
        assert_eq!(h.bucket_of(0.002), (0.001, 0.0025));
        assert!(Exported::parse(TEXT).app("ratings").is_none());
    }
}
