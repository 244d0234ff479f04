//! Every metric family `/metrics` serves, encoded at scrape time from a `Snapshot` through
//! prometheus-client's collector interface: the histograms stay the ones hopprobe keeps.

use std::collections::BTreeMap;

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeMetric, NativeHistogram, NativeHistogramBuckets, NoLabelSet,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::{
    Labels, Snapshot,
    buckets::{Buckets, NATIVE_SCHEMA},
};

/// The zero bucket's width: Prometheus clients' default (2^-128), which marks a histogram as
/// native even before it has a value; only durations of 0 fall in it.
const NATIVE_ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// `(name, help)` of each histogram family, in the order they are written.
pub const HISTOGRAMS: [(&str, &str); 4] = [
    (
        "hopprobe_hop_duration",
        "Time a request spent in one hop on this node (see docs/metrics.md for each hop).",
    ),
    (
        "hopprobe_upstream_duration",
        "Time from a call's first request byte out to its first response byte in, per destination.",
    ),
    (
        "hopprobe_tcp_handshake_duration",
        "TCP handshake time: SYN to established (active) or SYN received to accepted (passive).",
    ),
    (
        "hopprobe_tcp_srtt",
        "Smoothed round-trip time of TCP sockets, sampled by sock_ops.",
    ),
];

impl Snapshot {
    /// The registry one scrape encodes.
    pub fn registry(self) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(self));
        r
    }

    fn histograms(&self) -> [&BTreeMap<Labels, Buckets>; 4] {
        [&self.hops, &self.upstream, &self.handshake, &self.srtt]
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for ((name, help), series) in HISTOGRAMS.iter().zip(self.histograms()) {
            let mut family =
                e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            for (labels, b) in series {
                let (spans, deltas) = b.native_spans();
                // The text formats write the classic buckets; the protobuf one both.
                family
                    .encode_family(labels)?
                    .encode_histogram_with_native::<NoLabelSet>(
                        b.sum_ns / 1e9,
                        b.count,
                        &b.per_bound_seconds(),
                        None,
                        NativeHistogram {
                            schema: NATIVE_SCHEMA,
                            zero_threshold: NATIVE_ZERO_THRESHOLD,
                            zero_count: b.zero,
                            negative: NativeHistogramBuckets {
                                spans: &[],
                                deltas: &[],
                            },
                            positive: NativeHistogramBuckets {
                                spans: &spans,
                                deltas: &deltas,
                            },
                            created: None,
                        },
                    )?;
            }
        }
        type Field = fn(&super::TcpCounts) -> u64;
        let tcp: [(&str, &str, Field); 3] = [
            (
                "hopprobe_tcp_retransmits",
                "TCP segments retransmitted by the workload's sockets.",
                |c| c.retransmits,
            ),
            (
                "hopprobe_tcp_resets_sent",
                "TCP resets sent by the workload's sockets.",
                |c| c.resets_sent,
            ),
            (
                "hopprobe_tcp_resets_received",
                "TCP resets received by the workload's sockets.",
                |c| c.resets_received,
            ),
        ];
        for (name, help, field) in tcp {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, counts) in &self.tcp {
                ConstCounter::new(field(counts)).encode(family.encode_family(labels)?)?;
            }
        }
        let mut events = e.encode_descriptor(
            "hopprobe_probe_events",
            "hopprobe's own counters, kernel and userspace: records sent, dropped on a full ring, rate-limited, map insert failures and evictions (docs/metrics.md).",
            None,
            MetricType::Counter,
        )?;
        for (event, n) in &self.events {
            ConstCounter::new(*n).encode(events.encode_family(&[("event", *event)])?)?;
        }
        let gauges = [
            (
                "hopprobe_series",
                "Series in this scrape.",
                self.series() as i64,
            ),
            (
                "hopprobe_series_dropped",
                "Series left out of this scrape by --metrics-max-series.",
                self.series_dropped as i64,
            ),
            (
                "hopprobe_pairing_pending",
                "Exchanges waiting to be paired into sidecar and app_self hops.",
                self.pairing_pending as i64,
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(e.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        let mut missing = e.encode_descriptor(
            "hopprobe_missing",
            "1 for each part hopprobe looked for by itself and could not attach (the log and /readyz say why); absent when none is missing.",
            None,
            MetricType::Gauge,
        )?;
        for part in &self.missing {
            ConstGauge::new(1).encode(missing.encode_family(&[("part", *part)])?)?;
        }
        ConstGauge::new(self.process.resident_bytes as i64).encode(e.encode_descriptor(
            "process_resident_memory",
            "Resident memory of hopprobe.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(self.process.cpu_seconds).encode(e.encode_descriptor(
            "process_cpu",
            "User and system CPU time of hopprobe.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        let mut info = e.encode_descriptor(
            "hopprobe_build",
            "hopprobe's version.",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        Ok(())
    }
}

/// What a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: what `curl` and `promtool check metrics` read.
    Text,
    /// OpenMetrics text 1.0, when the scraper's `Accept` names it.
    OpenMetrics,
    /// Prometheus' protobuf (`io.prometheus.client.MetricFamily`, length-delimited): what a
    /// Prometheus with native histograms enabled asks for first; it carries them.
    Protobuf,
}

const PROTOBUF: &str = "application/vnd.google.protobuf";

impl Format {
    /// The first of the formats hopprobe serves in the scraper's order of preference (a
    /// scraper lists them best first, as Prometheus does, with `q` values that agree).
    pub fn from_accept(accept: Option<&str>) -> Self {
        for part in accept.unwrap_or_default().split(',') {
            let media = part.trim();
            if media.starts_with(PROTOBUF)
                && media.contains("proto=io.prometheus.client.MetricFamily")
            {
                return Self::Protobuf;
            }
            if media.starts_with("application/openmetrics-text") {
                return Self::OpenMetrics;
            }
            if media.starts_with("text/plain") {
                return Self::Text;
            }
        }
        Self::Text
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }

    pub fn encode(self, snapshot: Snapshot) -> Result<Vec<u8>, std::fmt::Error> {
        let registry = snapshot.registry();
        let mut out = String::new();
        match self {
            Self::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
            }
            Self::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
            Self::Protobuf => {
                return prometheus_client::encoding::prometheus_protobuf::encode_to_vec(&registry)
                    .map_err(|_| std::fmt::Error);
            }
        }
        Ok(out.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::latency::Latency;

    fn snapshot() -> Snapshot {
        let mut l = Latency::default();
        l.record(3_000_000);
        l.record(7_000_000);
        let mut s = Snapshot::default();
        s.hops.insert(
            vec![("hop", "app".into()), ("k8s_workload", "reviews-v1".into())],
            Buckets::from_latency(&l),
        );
        s.events.insert("exchanges_rate_limited", 4);
        s
    }

    #[test]
    fn histograms_are_seconds_with_cumulative_buckets() {
        let text =
            String::from_utf8(Format::Text.encode(snapshot()).expect("encodes")).expect("text");
        for line in [
            "hopprobe_hop_duration_seconds_count{hop=\"app\",k8s_workload=\"reviews-v1\"} 2",
            "hopprobe_hop_duration_seconds_sum{hop=\"app\",k8s_workload=\"reviews-v1\"} 0.01",
            "hopprobe_hop_duration_seconds_bucket{hop=\"app\",k8s_workload=\"reviews-v1\",le=\"0.0025\"} 0",
            "hopprobe_hop_duration_seconds_bucket{hop=\"app\",k8s_workload=\"reviews-v1\",le=\"0.005\"} 1",
            "hopprobe_hop_duration_seconds_bucket{hop=\"app\",k8s_workload=\"reviews-v1\",le=\"+Inf\"} 2",
            "hopprobe_probe_events_total{event=\"exchanges_rate_limited\"} 4",
            "hopprobe_series 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn open_metrics_when_asked() {
        let f = Format::from_accept(Some("application/openmetrics-text;version=1.0.0,*/*;q=0.1"));
        assert_eq!(f, Format::OpenMetrics);
        assert!(f.encode(snapshot()).expect("encodes").ends_with(b"# EOF\n"));
        assert_eq!(Format::from_accept(None), Format::Text);
    }

    #[test]
    fn protobuf_with_native_buckets_when_prometheus_asks_for_it_first() {
        // What Prometheus 2.42 sends with --enable-feature=native-histograms.
        let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.8,application/openmetrics-text;version=1.0.0;q=0.7,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(accept)), Format::Protobuf);
        // Without the feature it asks for OpenMetrics first.
        let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(accept)), Format::OpenMetrics);
        let families =
            prometheus_client::encoding::prometheus_protobuf::encode(&snapshot().registry())
                .expect("encodes");
        let hops = families
            .iter()
            .find(|f| f.name == "hopprobe_hop_duration_seconds")
            .expect("the hop family");
        let h = hops.metric[0].histogram.as_ref().expect("a histogram");
        assert_eq!((h.sample_count, h.schema), (2, NATIVE_SCHEMA));
        // 3 ms and 7 ms: two native buckets, and the classic ones beside them.
        let counts: i64 = h
            .positive_delta
            .iter()
            .scan(0, |c, d| {
                *c += d;
                Some(*c)
            })
            .sum();
        assert_eq!(counts, 2);
        assert_eq!(h.positive_span.iter().map(|s| s.length).sum::<u32>(), 2);
        assert!(!h.bucket.is_empty());
        assert!(
            !Format::Protobuf
                .encode(snapshot())
                .expect("encodes")
                .is_empty()
        );
    }
}
