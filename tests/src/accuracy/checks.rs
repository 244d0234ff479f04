//! The accuracy checks: each compares what hopprobe measured with what the lab injected (or
//! with loadgen's end-to-end view) and says whether it is inside the tolerance.

use std::fmt;

use super::series::{EndToEnd, Hops, Joined, Latency, Quantile};
use crate::lab::config::SERVICES;

/// The ingress pod, its container's name in the lab's metadata and its port: where requests
/// enter.
pub const INGRESS: (&str, &str, u16) = (
    "istio-ingressgateway",
    "ingress",
    crate::lab::names::INGRESS_PORT,
);

pub fn pod_of(service: &str) -> String {
    format!("{service}-v1")
}

/// One line of the accuracy table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub scenario: String,
    pub check: String,
    /// The expectation in words: a value with its tolerance, or a range.
    pub expected: String,
    pub measured: f64,
    pub low: f64,
    pub high: f64,
}

impl Row {
    pub fn pass(&self) -> bool {
        (self.low..=self.high).contains(&self.measured)
    }

    /// `measured` must be within the matrix's tolerance of `expected_ms`: max(10 %, 150 µs).
    pub(crate) fn within(
        scenario: &str,
        check: String,
        expected_ms: f64,
        measured_ms: f64,
    ) -> Self {
        let tol = (expected_ms * 0.10).max(0.150);
        Self {
            scenario: scenario.to_owned(),
            check,
            expected: format!("{expected_ms:.3} ± {tol:.3} ms"),
            measured: measured_ms,
            low: expected_ms - tol,
            high: expected_ms + tol,
        }
    }

    /// [`Self::within`], with `extra_ms` more allowed above (never below).
    fn within_plus(
        scenario: &str,
        check: String,
        expected_ms: f64,
        extra_ms: f64,
        measured_ms: f64,
    ) -> Self {
        let mut row = Self::within(scenario, check, expected_ms, measured_ms);
        if extra_ms > 0.0 {
            row.high += extra_ms;
            let tol = (expected_ms * 0.10).max(0.150);
            row.expected = format!("{expected_ms:.3} -{tol:.3}/+{:.3} ms", tol + extra_ms);
        }
        row
    }

    pub(crate) fn range(
        scenario: &str,
        check: String,
        expected: String,
        measured: f64,
        low: f64,
        high: f64,
    ) -> Self {
        Self {
            scenario: scenario.to_owned(),
            check,
            expected,
            measured,
            low,
            high,
        }
    }

    /// A row that fails because a series hopprobe should have reported is missing.
    pub fn missing(scenario: &str, what: String) -> Self {
        Self::range(
            scenario,
            format!("{what} reported"),
            "present".into(),
            f64::NAN,
            0.0,
            0.0,
        )
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<20} {:<48} {:>20} {:>10.3}  {}",
            self.scenario,
            self.check,
            self.expected,
            self.measured,
            if self.pass() { "ok" } else { "FAIL" }
        )
    }
}

/// Every sidecar series of `run` grows by `injected_ms` over the same series in `base`; so
/// does its `sidecar_processing` part (the hop less the request's wait in the proxy's socket),
/// at p50 and at p90.
pub fn sidecar_growth(scenario: &str, base: &Hops, run: &Hops, injected_ms: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    for (hop, label) in [
        ("sidecar", "sidecar"),
        ("sidecar_processing", "sidecar processing"),
    ] {
        let before = base.sidecars(hop);
        let after = run.sidecars(hop);
        if after.is_empty() {
            rows.push(Row::missing(scenario, format!("any {hop} hop")));
        }
        for ((pod, dir), after) in after {
            let Some((_, b)) = before.iter().find(|(k, _)| k.0 == pod && k.1 == dir) else {
                rows.push(Row::missing(
                    scenario,
                    format!("baseline {label} {pod} {dir}"),
                ));
                continue;
            };
            for q in Quantile::BOTH {
                rows.push(Row::within(
                    scenario,
                    format!("{label} {pod} {dir} {} growth (ms)", q.name()),
                    injected_ms,
                    (after.get(q) - b.get(q)) / 1000.0,
                ));
            }
        }
    }
    rows
}

/// An app's own time at quantile `q`, in µs: hopprobe's `app_self` for a caller (each
/// request less the calls made for it), `app` for a leaf, which has no calls to take out.
pub fn app_self(hops: &Hops, service: &str, q: Quantile) -> Option<f64> {
    let pod = pod_of(service);
    let hop = if crate::lab::config::calls(service).is_empty() {
        "app"
    } else {
        "app_self"
    };
    Some(hops.one(hop, &pod, Some(service))?.get(q))
}

/// What the work around each call costs a caller more once its CPUs idle between requests:
/// with 2 ms of service time added everywhere (D = 0), productpage's own stretches between
/// its calls — reading the request and connecting, closing and connecting again, answering —
/// each took 60–80 µs longer per request than with none, and its wake-ups after the calls
/// 15–45 µs longer (hopprobe's records, 305 requests), where leaves, which never wait on a
/// call, grew by 2 ms ± 60 µs in all. It is real time the app took, not a measurement error, so
/// the callers' tolerance allows it per call.
pub const WAKE_PER_CALL_MS: f64 = 0.1;

/// Each app's own time in `run` grows by `injected_ms` over `base`.
pub fn app_growth(scenario: &str, base: &Hops, run: &Hops, injected_ms: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    for service in SERVICES {
        let calls = crate::lab::config::calls(service).len() as f64;
        for q in Quantile::BOTH {
            match (app_self(base, service, q), app_self(run, service, q)) {
                (Some(b), Some(a)) => {
                    rows.push(Row::within_plus(
                        scenario,
                        format!("app {service} {} growth, less its calls (ms)", q.name()),
                        injected_ms,
                        calls * WAKE_PER_CALL_MS,
                        (a - b) / 1000.0,
                    ));
                }
                _ => rows.push(Row::missing(scenario, format!("app {service}"))),
            }
        }
    }
    rows
}

/// Every server socket's `app` series splits whole: its `app_queue` and `app_processing`
/// series (same cgroup and port) count as many exchanges as it does. Every process in the lab
/// reads its requests, so a missing split is a read hopprobe did not match to its exchange
/// (as kept-alive connections opened before hopprobe attached once were).
pub fn app_split(scenario: &str, hops: &Hops) -> Row {
    let count_of = |hop: &str, app: &serde_json::Value| {
        hops.of(hop, None)
            .find(|h| h["cgroup_id"] == app["cgroup_id"] && h["local_port"] == app["local_port"])
            .and_then(|h| h["count"].as_u64())
            .unwrap_or(0)
    };
    let (mut series, mut incomplete) = (0, 0);
    // (split share, name) of the series split least.
    let mut worst: Option<(f64, String)> = None;
    // Only the lab's pods: hopprobe sees every socket of the machine, and a server of
    // something else running meanwhile (a benchmark, say) is none of the lab's business.
    for app in hops.of("app", None).filter(|a| a["pod"].is_string()) {
        let Some(total) = app["count"].as_u64().filter(|&n| n > 0) else {
            continue;
        };
        series += 1;
        let split = count_of("app_queue", app).min(count_of("app_processing", app));
        let share = split as f64 / total as f64;
        if split != total {
            incomplete += 1;
        }
        if worst.as_ref().is_none_or(|(w, _)| share < *w) {
            let name = format!(
                "{}/{}:{} {split} of {total}",
                app["pod"].as_str().unwrap_or("?"),
                app["container"].as_str().unwrap_or("?"),
                app["local_port"]
            );
            worst = Some((share, name));
        }
    }
    let Some((share, name)) = worst else {
        return Row::missing(scenario, "app".into());
    };
    Row::range(
        scenario,
        format!("app split / app, {incomplete} of {series} short, worst {name}"),
        "1".into(),
        share,
        1.0,
        1.0,
    )
}

/// The kernel's packet hops: every series has a p50 above zero and below a millisecond.
pub fn packet_hops(scenario: &str, hops: &Hops) -> Vec<Row> {
    ["datapath_in", "pod_delivery", "pod_send", "datapath_out"]
        .into_iter()
        .map(|hop| {
            let p50s: Vec<f64> = hops
                .of(hop, None)
                .filter_map(Latency::of)
                .map(|l| l.p50_us / 1000.0)
                .collect();
            if p50s.is_empty() {
                return Row::missing(scenario, hop.into());
            }
            // The series furthest out of (0, 1) ms stands for all of them.
            let worst = p50s
                .iter()
                .copied()
                .max_by(|a, b| distance_out(*a).total_cmp(&distance_out(*b)))
                .unwrap_or(f64::NAN);
            Row::range(
                scenario,
                format!("{hop} p50, worst of {} series (ms)", p50s.len()),
                "> 0 and < 1 ms".into(),
                worst,
                f64::MIN_POSITIVE,
                1.0 - f64::EPSILON,
            )
        })
        .collect()
}

/// How far outside (0, 1) a value is; inside values rank by closeness to the upper bound.
fn distance_out(v: f64) -> f64 {
    if v <= 0.0 { 1.0 - v } else { v }
}

/// The hops a request crosses in the node, entering at `entry` (pod, container): the
/// handshake of its connection (the published command opens one per request), datapath in,
/// delivery to the pod's socket, the server's time (which holds every hop behind it), the send
/// back and the datapath out. Their p50s should add up to loadgen's p50, which also holds the
/// client↔node wire and the client's own work: within 10 %.
pub fn path_sum(
    scenario: &str,
    hops: &Hops,
    entry: (&str, &str, u16),
    e2e: &EndToEnd,
    per_request_connections: bool,
) -> Row {
    let (entry_pod, container, port) = entry;
    let names = [
        "datapath_in",
        "pod_delivery",
        "app",
        "pod_send",
        "datapath_out",
    ];
    let parts: Option<Vec<f64>> = names
        .iter()
        .map(|h| {
            // The datapath hops belong to the pod's interface, not to a container.
            let c = (!h.starts_with("datapath")).then_some(container);
            hops.one(h, entry_pod, c).map(|l| l.p50_us)
        })
        .collect();
    let Some(parts) = parts else {
        return Row::missing(
            scenario,
            format!("every hop of the path through {entry_pod}"),
        );
    };
    // With a connection per request its handshake is part of each request, and so is a TLS
    // handshake's: the server's side and the client's finish, as the entry's socket saw them.
    let handshake = if per_request_connections {
        let tls: f64 = ["tls_handshake", "tls_client_finish"]
            .iter()
            .filter_map(|h| {
                hops.of(h, Some(entry_pod))
                    .find(|s| s["container"] == container && s["local_port"] == port)
                    .and_then(|s| s["p50_us"].as_f64())
            })
            .sum();
        hops.cgroup_of(entry_pod, container)
            .and_then(|cg| hops.passive_handshake_p50(cg, port))
            .unwrap_or(0.0)
            + tls
    } else {
        0.0
    };
    let sum: f64 = parts.iter().sum::<f64>() + handshake;
    Row::range(
        scenario,
        format!(
            "hops along the path / loadgen p50 ({:.2} / {:.2} ms)",
            sum / 1000.0,
            e2e.p50_us / 1000.0
        ),
        "1 ± 10 %".into(),
        sum / e2e.p50_us,
        0.9,
        1.1,
    )
}

/// Packets seen entering a pod that were matched with their earlier sighting at the uplink or
/// at another pod's veth — across the NodePort's and the ClusterIP's DNAT.
pub fn match_rate(scenario: &str, hops: &Hops) -> Row {
    let matched = hops.counter("pod_in_matched") as f64;
    let unmatched = hops.counter("pod_in_unmatched") as f64;
    let rate = if matched + unmatched > 0.0 {
        matched / (matched + unmatched)
    } else {
        f64::NAN
    };
    Row::range(
        scenario,
        format!(
            "packets matched across NAT ({matched} of {})",
            matched + unmatched
        ),
        "≥ 99 %".into(),
        rate * 100.0,
        99.0,
        100.0,
    )
}

/// Without a mesh: no sidecar hop, and every other hop still reported.
pub fn no_mesh(scenario: &str, hops: &Hops) -> Vec<Row> {
    let kinds = hops.kinds();
    let mut rows = vec![Row::range(
        scenario,
        "sidecar series (count)".into(),
        "0".into(),
        hops.of("sidecar", None).count() as f64,
        0.0,
        0.0,
    )];
    for hop in [
        "datapath_in",
        "pod_delivery",
        "app",
        "upstream",
        "pod_send",
        "datapath_out",
    ] {
        if !kinds.contains(hop) {
            rows.push(Row::missing(scenario, hop.into()));
        }
    }
    rows
}

/// Under load against a one-worker app: the time added over the concurrency-1 run is queue
/// wait at that app, not sidecar time, and Little's law holds for the client.
pub fn saturation(
    scenario: &str,
    app_service: &str,
    alone: (&Hops, &EndToEnd),
    loaded: (&Hops, &EndToEnd),
    connections: u32,
) -> Vec<Row> {
    let pod = pod_of(app_service);
    let extra_ms = (loaded.1.p50_us - alone.1.p50_us) / 1000.0;
    let mut rows = Vec::new();
    match loaded.0.one("app_queue", &pod, Some(app_service)) {
        Some(q) => rows.push(Row::range(
            scenario,
            format!("{app_service} queue wait p50 / added e2e p50 ({extra_ms:.1} ms)"),
            "≥ 0.8".into(),
            q.p50_us / 1000.0 / extra_ms,
            0.8,
            1.2,
        )),
        None => rows.push(Row::missing(
            scenario,
            format!("app_queue of {app_service}"),
        )),
    }
    let before = alone.0.sidecars("sidecar");
    for ((p, dir), after) in loaded.0.sidecars("sidecar") {
        let base = before
            .iter()
            .find(|(k, _)| k.0 == p && k.1 == dir)
            .map_or(0.0, |(_, l)| l.p50_us);
        rows.push(Row::range(
            scenario,
            format!("sidecar {p} {dir} p50 growth / added e2e p50"),
            "< 0.05".into(),
            (after.p50_us - base) / 1000.0 / extra_ms,
            -0.05,
            0.05,
        ));
    }
    let in_flight = loaded.1.rps * loaded.1.mean_us / 1e6;
    rows.push(Row::range(
        scenario,
        format!("req/s × mean latency / connections ({in_flight:.1} / {connections})"),
        "1 ± 15 %".into(),
        in_flight / f64::from(connections),
        0.85,
        1.15,
    ));
    rows
}

/// Every server socket of the lab's pods (apps, sidecars, the ingress) counted as many
/// exchanges as requests went through it: `sent` each, since every request of the page
/// crosses every one of them once. On kept-alive connections an exchange split in two (a
/// response that paused) or two merged (a request read before the last response was seen
/// out) would show as a count off `sent`.
pub fn exchange_counts(scenario: &str, hops: &Hops, sent: u64) -> Row {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    // Only the lab's pods, as in `app_split`.
    for app in hops.of("app", None).filter(|a| a["pod"].is_string()) {
        let name = format!(
            "{}/{}:{}",
            app["pod"].as_str().unwrap_or("?"),
            app["container"].as_str().unwrap_or("?"),
            app["local_port"]
        );
        *counts.entry(name).or_default() += app["count"].as_u64().unwrap_or(0);
    }
    let off = |n: u64| n.abs_diff(sent);
    let Some((name, worst)) = counts.iter().max_by_key(|(_, n)| off(**n)) else {
        return Row::missing(scenario, "app".into());
    };
    let wrong = counts.values().filter(|n| **n != sent).count();
    Row::range(
        scenario,
        format!(
            "app exchanges / requests, {wrong} of {} off, worst {name} {worst} of {sent}",
            counts.len()
        ),
        "1".into(),
        *worst as f64 / sent as f64,
        1.0,
        1.0,
    )
}

/// TLS followed without loss: the ingress's server socket saw exactly one handshake per
/// connection loadgen opened (a handshake taken for a request, or a request for a handshake,
/// would show in `exchange_counts` and here), none of the TLS connections was lost, and the
/// sidecars' pooled mTLS connections made handshakes of their own, a few per pool and not one
/// per request.
pub fn tls_handshakes(scenario: &str, hops: &Hops, connections: u64, in_flight: u64) -> Vec<Row> {
    let (pod, container, port) = INGRESS;
    let at_ingress: u64 = hops
        .of("tls_handshake", Some(pod))
        .filter(|h| h["container"] == container && h["local_port"] == port)
        .map(|h| h["count"].as_u64().unwrap_or(0))
        .sum();
    let lost = hops.counter("tls_lost");
    let mesh: u64 = hops
        .of("tls_handshake", None)
        .filter(|h| h["container"] == "istio-proxy" && h["local_port"].is_u64())
        .map(|h| h["count"].as_u64().unwrap_or(0))
        .sum();
    vec![
        Row::range(
            scenario,
            format!("ingress TLS handshakes / connections ({at_ingress} of {connections})"),
            "1".into(),
            at_ingress as f64 / connections.max(1) as f64,
            1.0,
            1.0,
        ),
        Row::range(
            scenario,
            "TLS connections lost".into(),
            "0".into(),
            lost as f64,
            0.0,
            0.0,
        ),
        // Four pools (ingress → productpage, productpage → details and reviews, reviews →
        // ratings), each opening at most one connection per request in flight.
        Row::range(
            scenario,
            format!("sidecars' mTLS handshakes, pooled ({mesh})"),
            format!("1 ..= {}", 4 * in_flight),
            mesh as f64,
            1.0,
            (4 * in_flight) as f64,
        ),
    ]
}

/// The report's join of loadgen's requests: ≥ 99 % of them joined, ≤ 1 % of those clamped
/// (a timestamp out of order: the wrong exchange), and every one joined by its exchange
/// number on the connection, none placed by time (a connection whose numbers did not line up
/// with loadgen's requests has an exchange split, merged or missing).
pub fn report_join(scenario: &str, j: &Joined) -> Vec<Row> {
    let (requests, joined) = (j.count("requests"), j.count("joined"));
    let share = |n: u64, of: u64| {
        if of == 0 {
            f64::NAN
        } else {
            n as f64 * 100.0 / of as f64
        }
    };
    let clamped = j.count("clamped");
    let by_exchange = j.count("joined_by_exchange");
    vec![
        Row::range(
            scenario,
            format!("report: requests joined (%, {joined} of {requests})"),
            "≥ 99 %".into(),
            share(joined, requests),
            99.0,
            100.0,
        ),
        Row::range(
            scenario,
            format!("report: joined requests clamped (%, {clamped})"),
            "≤ 1 %".into(),
            share(clamped, joined),
            0.0,
            1.0,
        ),
        Row::range(
            scenario,
            format!(
                "report: joined by exchange number (%, {} conns off)",
                j.count("mismatched_connections")
            ),
            "100 %".into(),
            share(by_exchange, joined),
            100.0,
            100.0,
        ),
    ]
}

/// The report's clock offset between loadgen and the node: estimated from the requests
/// (never 0 by a fallback, never "not estimated"), resting on (nearly) every request sent,
/// warm-up included, and — the lab having one clock — with 0 inside its bounds and the
/// estimate within a millisecond of it, as `report_lab` asks.
pub fn clock_offset(scenario: &str, j: &Joined, sent: u64) -> Vec<Row> {
    let offset = j.clock_offset_ms().unwrap_or(f64::NAN);
    // How far the truth, 0, lies outside the bounds.
    let outside = j
        .clock_offset_bounds_ms()
        .map_or(f64::NAN, |(lo, hi)| lo.max(0.0) - hi.min(0.0));
    let (lo, hi) = j.clock_offset_bounds_ms().unwrap_or((f64::NAN, f64::NAN));
    let resting = j.count("clock_offset_requests");
    vec![
        Row::range(
            scenario,
            "report: clock offset estimated (ms, truth 0)".into(),
            "within ±1 ms".into(),
            offset,
            -1.0,
            1.0,
        ),
        Row::range(
            scenario,
            format!("report: 0 outside offset bounds [{lo:.3}, {hi:.3}] (ms)"),
            "0".into(),
            outside,
            0.0,
            0.0,
        ),
        Row::range(
            scenario,
            format!("report: offset rests on requests (%, {resting} of {sent})"),
            "≥ 99 %".into(),
            resting as f64 * 100.0 / sent as f64,
            99.0,
            100.0,
        ),
    ]
}

/// The report's packet hops (its p50 column): every pod's datapath, delivery and send above
/// zero and below a millisecond, as hopprobe's own series must be (`packet_hops`). The wrong
/// exchange of a kept-alive connection put milliseconds into the ingress's `pod_delivery`.
pub fn report_packet_hops(scenario: &str, j: &Joined) -> Vec<Row> {
    let p50 = j.p50_hops_ms();
    ["datapath_in", "pod_delivery", "pod_send", "datapath_out"]
        .into_iter()
        .map(|hop| {
            let of_kind: Vec<&(String, f64)> = p50
                .iter()
                .filter(|(h, _)| h.rsplit(' ').next() == Some(hop))
                .collect();
            let Some((name, worst)) = of_kind
                .iter()
                .map(|(h, v)| (h, *v))
                .max_by(|a, b| distance_out(a.1).total_cmp(&distance_out(b.1)))
            else {
                return Row::missing(scenario, format!("report {hop}"));
            };
            Row::range(
                scenario,
                format!("report p50 {hop}, worst of {} ({name})", of_kind.len()),
                "> 0 and < 1 ms".into(),
                worst,
                f64::MIN_POSITIVE,
                1.0 - f64::EPSILON,
            )
        })
        .collect()
}

/// The injected service time of each leaf (an app that calls nothing) in its `app` series'
/// p50, within the matrix's tolerance: a per-socket figure that needs no call attributed to
/// its request. (Callers' own time and the sidecars' do need that, and under concurrency it is
/// a guess: see docs/accuracy.md.)
pub fn leaf_service_times(scenario: &str, hops: &Hops, app_ms: &[(&str, f64)]) -> Vec<Row> {
    app_ms
        .iter()
        .filter(|(service, _)| crate::lab::config::calls(service).is_empty())
        .map(
            |&(service, a)| match hops.one("app", &pod_of(service), Some(service)) {
                Some(l) => Row::within(
                    scenario,
                    format!("app {service} p50, a leaf (ms)"),
                    a,
                    l.p50_us / 1000.0,
                ),
                None => Row::missing(scenario, format!("app {service}")),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn series(
        hop: &str,
        pod: &str,
        direction: Option<&str>,
        p50: f64,
        p90: f64,
    ) -> serde_json::Value {
        let container = pod.trim_end_matches("-v1");
        json!({"hop": hop, "pod": pod, "container": container, "direction": direction, "count": 10,
               "mean_us": p50, "p50_us": p50, "p90_us": p90})
    }

    #[test]
    fn app_self_time_is_hopprobes_for_callers_and_app_for_leaves() {
        let hops = Hops(json!({"hops": [
            series("app", "productpage-v1", None, 9000.0, 9500.0),
            series("app_self", "productpage-v1", None, 2000.0, 2300.0),
            series("app", "details-v1", None, 1000.0, 1100.0),
            // The sidecar's own series in the same pod are not the app's.
            json!({"hop": "app_self", "pod": "productpage-v1", "container": "istio-proxy",
                   "count": 10, "mean_us": 1.0, "p50_us": 1.0, "p90_us": 1.0}),
        ]}));
        assert_eq!(app_self(&hops, "productpage", Quantile::P50), Some(2000.0));
        assert_eq!(app_self(&hops, "productpage", Quantile::P90), Some(2300.0));
        assert_eq!(app_self(&hops, "details", Quantile::P90), Some(1100.0));
        assert_eq!(app_self(&hops, "reviews", Quantile::P50), None);
    }

    #[test]
    fn tolerance_is_ten_percent_or_150_us() {
        let small = Row::within("s", "c".into(), 1.0, 1.14);
        assert!(small.pass());
        assert!(!Row::within("s", "c".into(), 1.0, 1.16).pass());
        assert!(Row::within("s", "c".into(), 10.0, 10.9).pass());
        assert!(!Row::within("s", "c".into(), 10.0, 11.1).pass());
        assert!(!Row::missing("s", "x".into()).pass());
    }

    #[test]
    fn sidecar_growth_compares_the_same_series() {
        let both = |hop_p50, hop_p90, processing_p50, processing_p90| {
            Hops(json!({"hops": [
                series("sidecar", "a", Some("inbound"), hop_p50, hop_p90),
                series("sidecar_processing", "a", Some("inbound"), processing_p50, processing_p90),
            ]}))
        };
        let base = both(300.0, 400.0, 250.0, 300.0);
        let run = both(1310.0, 1900.0, 1260.0, 1310.0);
        let rows = sidecar_growth("s", &base, &run, 1.0);
        assert_eq!(rows.len(), 4);
        assert!(rows[0].pass(), "{}", rows[0]);
        // The hop's p90 grew by 1.5 ms: out.
        assert!(!rows[1].pass(), "{}", rows[1]);
        // Its processing part grew by the delay: both rows in.
        assert!(rows[2..].iter().all(Row::pass), "{rows:?}");
        let other = both(1.0, 1.0, 1.0, 1.0);
        let renamed = Hops(json!({"hops": [series("sidecar", "b", Some("inbound"), 1.0, 1.0)]}));
        assert!(!sidecar_growth("s", &base, &renamed, 1.0)[0].pass());
        // A run without the processing part fails rather than passing on the hop alone.
        let rows = sidecar_growth("s", &other, &renamed, 1.0);
        assert!(
            rows.iter()
                .any(|r| r.check.contains("any sidecar_processing") && !r.pass())
        );
    }

    #[test]
    fn app_split_needs_every_exchange_split() {
        let app = |hop: &str, port: u16, count: u64| {
            json!({"hop": hop, "pod": "a-v1", "container": "a", "cgroup_id": 7,
                   "local_port": port, "count": count})
        };
        let whole = Hops(json!({"hops": [
            app("app", 9080, 10), app("app_queue", 9080, 10), app("app_processing", 9080, 10),
            app("app", 15006, 4), app("app_queue", 15006, 4), app("app_processing", 15006, 4),
        ]}));
        assert!(app_split("s", &whole).pass(), "{}", app_split("s", &whole));
        // A server outside the lab (no pod), split short, is not counted.
        let mut with_outsider = whole.clone();
        with_outsider.0["hops"]
            .as_array_mut()
            .expect("hops")
            .extend([
                json!({"hop": "app", "cgroup_id": 9, "local_port": 45019, "count": 100}),
                json!({"hop": "app_queue", "cgroup_id": 9, "local_port": 45019, "count": 60}),
            ]);
        assert!(app_split("s", &with_outsider).pass());
        // The split of port 15006 is missing (as before the fix), and 9080's is partial.
        let split_partly = Hops(json!({"hops": [
            app("app", 9080, 10), app("app_queue", 9080, 9), app("app_processing", 9080, 10),
            app("app", 15006, 4),
        ]}));
        let row = app_split("s", &split_partly);
        assert!(!row.pass());
        assert_eq!(row.measured, 0.0);
        assert!(row.check.contains("a-v1/a:15006 0 of 4"), "{}", row.check);
        assert!(!app_split("s", &Hops(json!({"hops": []}))).pass());
    }

    #[test]
    fn packet_hops_must_be_positive_and_below_a_millisecond() {
        let ok = Hops(json!({"hops": [
            series("datapath_in", "a", None, 4.0, 8.0),
            series("pod_delivery", "a", None, 2.0, 3.0),
            series("pod_send", "a", None, 3.0, 5.0),
            series("datapath_out", "a", None, 5.0, 9.0),
        ]}));
        assert!(packet_hops("s", &ok).iter().all(Row::pass));
        let zero = Hops(json!({"hops": [
            series("datapath_in", "a", None, 4.0, 8.0),
            series("datapath_in", "b", None, 0.0, 8.0),
        ]}));
        assert!(!packet_hops("s", &zero)[0].pass());
        // The other three kinds are missing.
        assert_eq!(
            packet_hops("s", &zero).iter().filter(|r| !r.pass()).count(),
            4
        );
    }

    fn app_count(pod: &str, container: &str, port: u16, count: u64) -> serde_json::Value {
        json!({"hop": "app", "pod": pod, "container": container, "cgroup_id": 7,
               "local_port": port, "count": count})
    }

    #[test]
    fn exchange_counts_need_every_server_socket_to_count_every_request() {
        let whole = Hops(json!({"hops": [
            app_count("a-v1", "a", 9080, 32), app_count("a-v1", "istio-proxy", 15006, 32),
            // Someone else's server, outside the lab: not counted.
            json!({"hop": "app", "cgroup_id": 9, "local_port": 45019, "count": 3}),
        ]}));
        let row = exchange_counts("s", &whole, 32);
        assert!(row.pass(), "{row}");
        // A response that paused split one exchange in two on the proxy's port.
        let split = Hops(json!({"hops": [
            app_count("a-v1", "a", 9080, 32), app_count("a-v1", "istio-proxy", 15006, 33),
        ]}));
        let row = exchange_counts("s", &split, 32);
        assert!(!row.pass());
        assert!(
            row.check.contains("a-v1/istio-proxy:15006 33 of 32"),
            "{row}"
        );
        // Two merged: one fewer.
        let merged = Hops(json!({"hops": [app_count("a-v1", "a", 9080, 31)]}));
        assert!(!exchange_counts("s", &merged, 32).pass());
        assert!(!exchange_counts("s", &Hops(json!({"hops": []})), 32).pass());
    }

    #[test]
    fn tls_rows_need_one_ingress_handshake_per_connection_and_nothing_lost() {
        let (pod, container, port) = INGRESS;
        let hs = |pod: &str, container: &str, port: u16, n: u64| {
            json!({"hop": "tls_handshake", "pod": pod, "container": container,
                   "local_port": port, "count": n})
        };
        let hops = |ingress: u64, mesh: u64, lost: u64| {
            Hops(json!({"hops": [
                hs(pod, container, port, ingress),
                hs("details-v1", "istio-proxy", 15006, mesh),
                // The client side of the same handshakes (no serving port) is not counted.
                json!({"hop": "tls_handshake", "pod": pod, "container": container,
                       "peer": "10.96.0.1:9080", "count": 500}),
            ], "counters": {"tls_lost": lost}}))
        };
        assert!(
            tls_handshakes("s", &hops(16, 20, 0), 16, 16)
                .iter()
                .all(Row::pass)
        );
        // A request taken for a handshake, a stream lost, a handshake per request in the mesh.
        for (bad, which) in [
            (hops(17, 20, 0), 0),
            (hops(16, 20, 1), 1),
            (hops(16, 65, 0), 2),
        ] {
            let rows = tls_handshakes("s", &bad, 16, 16);
            assert!(!rows[which].pass(), "{}", rows[which]);
        }
        // No mTLS handshake at all: the mesh is not TLS.
        assert!(!tls_handshakes("s", &hops(16, 0, 0), 16, 16)[2].pass());
    }

    fn env(fields: serde_json::Value) -> Joined {
        let mut e = json!({"requests": 400, "joined": 400, "clamped": 0,
                           "joined_by_exchange": 400, "mismatched_connections": 0,
                           "clock_offset_ms": 0.01, "clock_offset_bounds_ms": [-0.003, 0.012],
                           "clock_offset_requests": 432});
        for (k, v) in fields.as_object().expect("object") {
            e[k] = v.clone();
        }
        Joined::of(&json!({"environments": [e]})).expect("one environment")
    }

    #[test]
    fn the_report_must_join_by_exchange_number_with_few_clamped() {
        assert!(report_join("s", &env(json!({}))).iter().all(Row::pass));
        let rows = report_join("s", &env(json!({"joined": 395})));
        // 98.75 % joined: out; the 395 joined by number are all of them.
        assert!(
            !rows[0].pass() && rows[1].pass() && !rows[2].pass(),
            "{rows:?}"
        );
        let rows = report_join("s", &env(json!({"clamped": 5})));
        assert!(!rows[1].pass(), "{rows:?}");
        let rows = report_join(
            "s",
            &env(json!({"joined_by_exchange": 384, "mismatched_connections": 1})),
        );
        assert!(
            !rows[2].pass() && rows[2].check.contains("1 conns off"),
            "{rows:?}"
        );
        // A report that joined nothing (distribution mode) passes none.
        let rows = report_join("s", &env(json!({"requests": 0, "joined": 0})));
        assert!(!rows[0].pass() && !rows[1].pass(), "{rows:?}");
    }

    #[test]
    fn the_clock_offset_must_be_estimated_around_the_one_clock() {
        assert!(
            clock_offset("s", &env(json!({})), 432)
                .iter()
                .all(Row::pass)
        );
        // Not estimated: null offset and bounds.
        let none = env(
            json!({"clock_offset_ms": null, "clock_offset_bounds_ms": null,
                               "clock_offset_requests": 0}),
        );
        assert!(clock_offset("s", &none, 432).iter().all(|r| !r.pass()));
        // Bounds that exclude the truth.
        let rows = clock_offset(
            "s",
            &env(json!({"clock_offset_ms": 0.4, "clock_offset_bounds_ms": [0.2, 0.5]})),
            432,
        );
        assert!(rows[0].pass() && !rows[1].pass(), "{rows:?}");
        assert!((rows[1].measured - 0.2).abs() < 1e-9);
        let rows = clock_offset("s", &env(json!({"clock_offset_ms": -1.5})), 432);
        assert!(!rows[0].pass());
        // Resting on too few of the requests sent.
        let rows = clock_offset("s", &env(json!({"clock_offset_requests": 400})), 432);
        assert!(!rows[2].pass());
    }

    #[test]
    fn the_reports_packet_hops_must_be_microseconds() {
        let report = |delivery_ms: f64| {
            env(json!({
                "hops": ["a datapath_in", "a pod_delivery", "a app_queue", "a pod_send",
                         "a datapath_out", "b pod_delivery"],
                "percentiles": [
                    {"percentile": "p50", "hops_ms": [0.004, 0.003, 5.0, 0.002, 0.004, delivery_ms]},
                    {"percentile": "p90", "hops_ms": [9.0, 9.0, 9.0, 9.0, 9.0, 9.0]},
                ],
            }))
        };
        assert!(
            report_packet_hops("s", &report(0.006))
                .iter()
                .all(Row::pass)
        );
        // The wrong exchange: milliseconds of delivery.
        let rows = report_packet_hops("s", &report(6.9));
        assert!(
            !rows[1].pass() && rows[1].check.contains("b pod_delivery"),
            "{rows:?}"
        );
        assert!(rows.iter().filter(|r| !r.pass()).count() == 1, "{rows:?}");
        // No p50 column at all.
        assert!(
            report_packet_hops("s", &env(json!({})))
                .iter()
                .all(|r| !r.pass())
        );
    }

    #[test]
    fn leaf_service_times_are_the_injected_ones() {
        let hops = |details_p50: f64| {
            Hops(json!({"hops": [
                series("app", "details-v1", None, details_p50, 2900.0),
                series("app", "ratings-v1", None, 2090.0, 2600.0),
                // A caller's `app` holds its calls: not a leaf's row.
                series("app", "productpage-v1", None, 19000.0, 22000.0),
            ]}))
        };
        let app_ms = [("productpage", 2.0), ("details", 2.0), ("ratings", 2.0)];
        let rows = leaf_service_times("s", &hops(2100.0), &app_ms);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(Row::pass), "{rows:?}");
        assert!(!leaf_service_times("s", &hops(2300.0), &app_ms)[0].pass());
        let rows = leaf_service_times("s", &Hops(json!({"hops": []})), &app_ms);
        assert!(rows.iter().all(|r| !r.pass()));
    }
}
