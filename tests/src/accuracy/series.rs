//! Reading hop series out of `hopprobe run --json` and loadgen's JSON report.

use serde_json::Value;

/// Latency figures of one series, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
}

impl Latency {
    pub fn of(series: &Value) -> Option<Self> {
        Some(Self {
            count: series["count"].as_u64()?,
            mean_us: series["mean_us"].as_f64()?,
            p50_us: series["p50_us"].as_f64()?,
            p90_us: series["p90_us"].as_f64()?,
        })
    }

    pub fn get(&self, q: Quantile) -> f64 {
        match q {
            Quantile::P50 => self.p50_us,
            Quantile::P90 => self.p90_us,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantile {
    P50,
    P90,
}

impl Quantile {
    pub const BOTH: [Quantile; 2] = [Quantile::P50, Quantile::P90];

    pub fn name(self) -> &'static str {
        match self {
            Quantile::P50 => "p50",
            Quantile::P90 => "p90",
        }
    }
}

/// The hop series of one `hopprobe run` summary.
#[derive(Debug, Clone)]
pub struct Hops(pub Value);

impl Hops {
    fn all(&self) -> impl Iterator<Item = &Value> {
        self.0["hops"].as_array().into_iter().flatten()
    }

    /// Series of `hop` in `pod` (any pod when `None`).
    pub fn of<'a>(&'a self, hop: &'a str, pod: Option<&'a str>) -> impl Iterator<Item = &'a Value> {
        self.all()
            .filter(move |h| h["hop"] == hop && pod.is_none_or(|p| h["pod"] == p))
    }

    /// The single series of `hop` in `pod`, narrowed by container when given: a pod with a
    /// sidecar has server and client sockets in both of its containers.
    pub fn one(&self, hop: &str, pod: &str, container: Option<&str>) -> Option<Latency> {
        self.in_container(hop, pod, container).next()
    }

    /// Every series of `hop` in `pod` (and `container`, when given).
    pub fn in_container<'a>(
        &'a self,
        hop: &'a str,
        pod: &'a str,
        container: Option<&'a str>,
    ) -> impl Iterator<Item = Latency> + 'a {
        self.of(hop, Some(pod))
            .filter(move |h| container.is_none_or(|c| h["container"] == c))
            .filter_map(Latency::of)
    }

    /// Series of `hop` (`sidecar` or one of its parts) keyed by (pod, direction).
    pub fn sidecars(&self, hop: &str) -> Vec<((String, String), Latency)> {
        self.of(hop, None)
            .filter_map(|h| {
                let key = (
                    h["pod"].as_str()?.to_owned(),
                    h["direction"].as_str()?.to_owned(),
                );
                Some((key, Latency::of(h)?))
            })
            .collect()
    }

    /// Names of every kind of hop present.
    pub fn kinds(&self) -> std::collections::BTreeSet<String> {
        self.all()
            .filter_map(|h| h["hop"].as_str().map(str::to_owned))
            .collect()
    }

    /// p50 of the handshakes the listener on `port` of the cgroup `cgroup_id` accepted:
    /// from the client's SYN to its ACK, as the node saw them.
    pub fn passive_handshake_p50(&self, cgroup_id: u64, port: u16) -> Option<f64> {
        self.0["series"].as_array()?.iter().find(|s| {
            s["metric"] == "handshake"
                && s["direction"] == "passive"
                && s["cgroup_id"] == cgroup_id
                && s["local_port"] == port
        })?["p50_us"]
            .as_f64()
    }

    /// The cgroup id of `container` in `pod`, from any of its series.
    pub fn cgroup_of(&self, pod: &str, container: &str) -> Option<u64> {
        self.all()
            .find(|h| h["pod"] == pod && h["container"] == container)?["cgroup_id"]
            .as_u64()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.0["counters"][name].as_u64().unwrap_or(0)
    }
}

/// What loadgen reported for a run, in microseconds and requests per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndToEnd {
    pub p50_us: f64,
    pub mean_us: f64,
    pub rps: f64,
    pub success_rate: f64,
}

impl EndToEnd {
    /// From loadgen's JSON (oha's keys: seconds).
    pub fn of(report: &Value) -> Option<Self> {
        Some(Self {
            p50_us: report["latencyPercentiles"]["p50"].as_f64()? * 1e6,
            mean_us: report["summary"]["average"].as_f64()? * 1e6,
            rps: report["summary"]["requestsPerSec"].as_f64()?,
            success_rate: report["summary"]["successRate"].as_f64()?,
        })
    }
}

/// One environment of `hopprobe report --json`: loadgen's requests joined with hopprobe's
/// records.
#[derive(Debug, Clone)]
pub struct Joined(pub Value);

impl Joined {
    /// The first (in the matrix: the only) environment of a report.
    pub fn of(report: &Value) -> Option<Self> {
        Some(Self(report["environments"].as_array()?.first()?.clone()))
    }

    /// A count of the report's (`requests`, `joined`, `clamped`, …); 0 when absent.
    pub fn count(&self, key: &str) -> u64 {
        self.0[key].as_u64().unwrap_or(0)
    }

    /// node clock + offset = load generator's clock, in ms; `None` when not estimated.
    pub fn clock_offset_ms(&self) -> Option<f64> {
        self.0["clock_offset_ms"].as_f64()
    }

    /// The hard bounds on the offset, in ms.
    pub fn clock_offset_bounds_ms(&self) -> Option<(f64, f64)> {
        let b = &self.0["clock_offset_bounds_ms"];
        Some((b[0].as_f64()?, b[1].as_f64()?))
    }

    /// Each hop with its mean over the requests around the end-to-end p50, in ms: the
    /// report's p50 column.
    pub fn p50_hops_ms(&self) -> Vec<(String, f64)> {
        let Some(row) = self.0["percentiles"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["percentile"] == "p50")
        else {
            return Vec::new();
        };
        let names = self.0["hops"].as_array().into_iter().flatten();
        let values = row["hops_ms"].as_array().into_iter().flatten();
        names
            .zip(values)
            .filter_map(|(n, v)| Some((n.as_str()?.to_owned(), v.as_f64()?)))
            .collect()
    }
}
