//! `/metrics`: what a scrape exports (`Snapshot`, gathered by the run loop, which owns every
//! histogram), how it is encoded (`families`, with prometheus-client), the classic buckets
//! (`buckets`) and the HTTP server that never blocks the loop (`server`).

pub mod buckets;
pub mod families;
pub mod retired;
pub mod server;

use std::collections::BTreeMap;

use buckets::Buckets;

/// Label pairs of one series, in the order they are written.
pub type Labels = Vec<(&'static str, String)>;

/// Retransmits and resets of one workload's sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounts {
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
}

/// Everything one scrape exports, as plain data: the loop fills it, the HTTP thread encodes it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub hops: BTreeMap<Labels, Buckets>,
    pub upstream: BTreeMap<Labels, Buckets>,
    pub handshake: BTreeMap<Labels, Buckets>,
    pub srtt: BTreeMap<Labels, Buckets>,
    pub tcp: BTreeMap<Labels, TcpCounts>,
    /// The kernel's and userspace's own counters (`stats::NAMES`, evictions, drops), by name.
    pub events: BTreeMap<&'static str, u64>,
    /// Series this scrape would have had beyond `--metrics-max-series`, left out.
    pub series_dropped: u64,
    /// Exchanges waiting to be paired into `sidecar` and `app_self` hops.
    pub pairing_pending: u64,
    /// hopprobe's own resident memory and CPU time (the usual `process_*` families).
    pub process: Process,
    /// Parts hopprobe looked for by itself and could not attach (`run::Missing`).
    pub missing: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
}

impl Process {
    /// This process now: resident pages from `/proc/self/statm`, user and system time from
    /// `getrusage` (finer than the clock ticks of `/proc/self/stat`).
    pub fn now() -> Self {
        let pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: a valid out-pointer for the call.
        let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
        let cpu_seconds = if ok {
            // SAFETY: filled by the successful call.
            let u = unsafe { usage.assume_init() };
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            secs(u.ru_utime) + secs(u.ru_stime)
        } else {
            0.0
        };
        Self {
            resident_bytes: pages * page,
            cpu_seconds,
        }
    }
}

impl Snapshot {
    pub fn series(&self) -> usize {
        self.hops.len()
            + self.upstream.len()
            + self.handshake.len()
            + self.srtt.len()
            + self.tcp.len()
    }
}

/// Limits on what a scrape carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Latency and TCP series in all, beyond which a scrape leaves series out (counted).
    pub max_series: usize,
    /// Destinations per source workload in `hopprobe_upstream_duration_seconds`; the rest
    /// go to `destination="other"`.
    pub max_destinations: usize,
    /// Label series by pod (`k8s_pod`) as well as by workload.
    pub pod_labels: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_series: 10_000,
            max_destinations: 50,
            pod_labels: false,
        }
    }
}

/// The workload a pod belongs to, from the names its controllers generate: a Deployment's
/// pod is `<name>-<pod-template-hash>-<5 chars>`, a DaemonSet's or a Job's `<name>-<5 chars>`,
/// a StatefulSet's `<name>-<ordinal>`. Anything else is its own workload. The random parts
/// use Kubernetes' alphabet (no vowels, no 0, 1, 3).
pub fn workload_of(pod: &str) -> &str {
    let generated = |s: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&s.len())
            && s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
    };
    let Some((rest, last)) = pod.rsplit_once('-') else {
        return pod;
    };
    if generated(last, 5..=5) {
        if let Some((name, hash)) = rest.rsplit_once('-')
            && generated(hash, 6..=10)
        {
            return name;
        }
        return rest;
    }
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return rest;
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_from_generated_pod_names() {
        for (pod, workload) in [
            ("reviews-v1-5f4d8c7b9d-x2kqp", "reviews-v1"),
            ("kube-proxy-7zq4m", "kube-proxy"),
            ("web-0", "web"),
            ("productpage", "productpage"),
            // A last part with a vowel is a name, not a generated suffix.
            ("ratings-alpha", "ratings-alpha"),
        ] {
            assert_eq!(workload_of(pod), workload, "{pod}");
        }
    }
}
