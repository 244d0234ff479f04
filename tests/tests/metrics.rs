//! `/metrics` as a real Prometheus (Debian's, on loopback, 1 s scrapes) sees it in the lab:
//! every request counted, quantiles in the injected delays' buckets, the series cap held, and
//! an exposition `promtool check metrics` accepts.

use std::{net::SocketAddr, path::Path, time::Duration};

use nix::sys::signal::Signal;
use testkit::{
    lab::{
        Lab,
        config::{Delay, LabConfig},
    },
    leftovers,
    probe::Hopprobe,
    prometheus::{self, Prometheus, free_port, http_get},
};

const REQUESTS: u64 = 40;

/// A lab (one node) with hopprobe attached to it, serving `/metrics`.
struct Node {
    lab: Lab,
    probe: Hopprobe,
    metrics: SocketAddr,
}

impl Node {
    /// The lab `hpt<pid><tag>` as `configure` sets it, and `hopprobe run` on its node with the
    /// lab's names and `extra` flags; with `scoped`, on the lab's cgroups only (another lab's
    /// run on the same machine).
    fn up(tag: &str, configure: impl FnOnce(&mut LabConfig), scoped: bool, extra: &[&str]) -> Self {
        let mut config = LabConfig::new(&format!("hpt{}{tag}", std::process::id() % 100_000));
        configure(&mut config);
        let lab = Lab::up(config, Path::new(env!("CARGO_BIN_EXE_hoplab"))).expect("lab up");
        let netns = format!("/run/netns/{}", lab.state.node_netns);
        let metadata = lab.state.metadata_file.display().to_string();
        let metrics = free_port();
        let addr = metrics.to_string();
        let cgroup_root = lab.state.cgroup_root.display().to_string();
        let mut args = vec![
            "run",
            "--netns",
            &netns,
            "--metadata",
            &metadata,
            "--metrics-addr",
            &addr,
        ];
        if scoped {
            args.extend(["--cgroup-root", &cgroup_root]);
        }
        args.extend_from_slice(extra);
        let probe = Hopprobe::start(&testkit::probe::binary(), &args);
        Self {
            lab,
            probe,
            metrics,
        }
    }

    fn page_loads(&self, n: u64) {
        for _ in 0..n {
            let resp = self
                .lab
                .get(self.lab.nodeport(), "/productpage")
                .expect("GET");
            assert_eq!(resp.status(), Some(200));
        }
    }

    /// SIGTERM: hopprobe exits 0, and the port closes with it.
    fn stop(mut self) -> Lab {
        self.probe.signal(Signal::SIGTERM);
        assert!(self.probe.wait(Duration::from_secs(15)).success());
        assert!(http_get(self.metrics, "/metrics").is_err());
        self.lab
    }
}

/// Prometheus scraping `nodes`, once every one of them is up.
fn prometheus_of(nodes: &[&Node], flags: &[&str]) -> Prometheus {
    let targets: Vec<SocketAddr> = nodes.iter().map(|n| n.metrics).collect();
    let prom = Prometheus::start_with(&targets, flags).expect("prometheus");
    // Prometheus applies new targets after up to 5 s: the load starts once it scrapes.
    let all = targets.len() as f64;
    assert_eq!(
        prom.wait_for("sum(up)", Duration::from_secs(20), |v| v == all),
        Ok(all)
    );
    prom
}

/// After the lab is gone: nothing of it or of hopprobe left.
fn nothing_left(lab: Lab) {
    drop(lab);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

/// The classic bucket (lower, upper] in seconds that holds `s`.
fn bucket_of(s: f64) -> (f64, f64) {
    let bounds = [
        1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
        2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let i = bounds.iter().position(|&b| s <= b).expect("under 10 s");
    (if i == 0 { 0.0 } else { bounds[i - 1] }, bounds[i])
}

#[test]
fn prometheus_counts_every_request_and_finds_the_injected_delays() {
    let test = "prometheus_counts_every_request_and_finds_the_injected_delays";
    if !testkit::lab::available(test) || !prometheus::available(test) {
        return;
    }
    // Each well inside one bucket: (2.5, 5] ms and (5, 10] ms.
    let injected_ms = [("details", 3.5), ("ratings", 7.0)];
    let node = Node::up(
        "m",
        |config| {
            for (s, ms) in injected_ms {
                config.app_delay.insert(
                    s.into(),
                    Delay::Fixed(Duration::from_micros((ms * 1000.0) as u64)),
                );
            }
        },
        false,
        &[],
    );
    let metrics = node.metrics;
    assert_eq!(
        http_get(metrics, "/readyz").expect("readyz"),
        (200, "ready\n".into())
    );
    let prom = prometheus_of(&[&node], &[]);
    // Spread over a few scrapes, so that the dashboard's rates have something to show.
    for _ in 0..REQUESTS {
        node.page_loads(1);
        std::thread::sleep(Duration::from_millis(75));
    }
    let within = Duration::from_secs(20);
    // Every page load calls details once and reviews, which calls ratings, once.
    for workload in ["productpage-v1", "details-v1", "reviews-v1", "ratings-v1"] {
        let q = format!(
            "sum(hopprobe_hop_duration_seconds_count{{hop=\"app\",k8s_namespace=\"bookinfo\",k8s_workload=\"{workload}\"}})"
        );
        let got = prom.wait_for(&q, within, |v| v >= REQUESTS as f64);
        if got != Ok(REQUESTS as f64) {
            let text = http_get(metrics, "/metrics")
                .map(|(_, t)| t)
                .unwrap_or_default();
            let apps: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("hopprobe_hop_duration_seconds_count{hop=\"app\""))
                .collect();
            panic!("{q}: {got:?}; /metrics has {apps:#?}");
        }
    }
    for (service, ms) in injected_ms {
        let q = format!(
            "histogram_quantile(0.5, sum by (le) (hopprobe_hop_duration_seconds_bucket{{hop=\"app\",k8s_workload=\"{service}-v1\"}}))"
        );
        let p50 = prom.wait_for(&q, within, |_| true).expect("p50");
        let (low, high) = bucket_of(ms / 1000.0);
        assert!(
            p50 > low && p50 <= high,
            "{service}: p50 {p50} s outside ({low}, {high}] of its injected {ms} ms"
        );
    }
    // productpage's calls, per destination Service (the lab names none: its pods' workloads).
    let q = "sum(hopprobe_upstream_duration_seconds_count{k8s_workload=\"productpage-v1\"})";
    let calls = prom.wait_for(q, within, |v| v >= 2.0 * REQUESTS as f64);
    assert_eq!(calls, Ok(2.0 * REQUESTS as f64), "{q}");
    // hopprobe's own health: nothing lost on the way.
    let q = "sum(hopprobe_probe_events_total{event=~\"sock_hist_failed|exchange_drops\"})";
    assert_eq!(prom.wait_for(q, within, |_| true), Ok(0.0), "{q}");
    assert_eq!(
        prom.wait_for("hopprobe_series_dropped", within, |_| true),
        Ok(0.0)
    );
    every_dashboard_query_returns_data(&prom);
    // The exposition itself, as promtool lints it.
    let (status, text) = http_get(metrics, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    for line in text.lines().filter(|l| l.contains("_count{")) {
        eprintln!("{line}");
    }
    promtool_accepts(&text);
    drop(prom);
    nothing_left(node.stop());
}

/// A Prometheus with native histograms on asks for protobuf first and gets native buckets:
/// every request counted, the median within a native bucket of the injected delay.
#[test]
fn native_histograms_when_prometheus_asks_for_protobuf() {
    let test = "native_histograms_when_prometheus_asks_for_protobuf";
    if !testkit::lab::available(test) || !prometheus::available(test) {
        return;
    }
    let injected = Duration::from_micros(3_500);
    let node = Node::up(
        "n",
        |config| {
            config
                .app_delay
                .insert("details".into(), Delay::Fixed(injected));
        },
        false,
        &[],
    );
    let prom = prometheus_of(&[&node], &["--enable-feature=native-histograms"]);
    let pages = 20;
    node.page_loads(pages);
    let within = Duration::from_secs(20);
    let details = "hopprobe_hop_duration_seconds{hop=\"app\",k8s_workload=\"details-v1\"}";
    let q = format!("histogram_count(sum({details}))");
    assert_eq!(
        prom.wait_for(&q, within, |v| v >= pages as f64),
        Ok(pages as f64),
        "{q}"
    );
    // A classic bucket series would mean Prometheus took the text format.
    let classic = "hopprobe_hop_duration_seconds_bucket";
    assert_eq!(prom.query(classic).map(|r| r.len()), Ok(0), "{classic}");
    let q = format!("histogram_quantile(0.5, sum({details}))");
    let p50 = prom.wait_for(&q, within, |_| true).expect("p50");
    // At or above the injected time (the app's own work adds to it), by at most 10 % and
    // one native bucket (9.05 %) more.
    let low = injected.as_secs_f64() / 2f64.powf(1.0 / 8.0);
    let high = injected.as_secs_f64() * 1.10 * 2f64.powf(1.0 / 8.0);
    eprintln!("{q} = {p50}");
    assert!(
        p50 > low && p50 <= high,
        "{q} = {p50}, not in ({low}, {high}]"
    );
    drop(prom);
    nothing_left(node.stop());
}

/// Two nodes, each with its own hopprobe (scoped to its lab's cgroups and node namespace),
/// scraped by one Prometheus: `sum by (le)` over both equals the two nodes' truths merged —
/// every request of each counted once, each in the bucket of its node's injected delay.
#[test]
fn two_hopprobes_merge_exactly_with_sum_by_le() {
    let test = "two_hopprobes_merge_exactly_with_sum_by_le";
    if !testkit::lab::available(test) || !prometheus::available(test) {
        return;
    }
    // details' service time on each node, each well inside one bucket: (2.5, 5] and (5, 10] ms;
    // and each node's page loads.
    let cases = [("a", 3.5, 12_u64), ("b", 7.0, 20_u64)];
    let nodes: Vec<Node> = cases
        .iter()
        .map(|&(tag, ms, _)| {
            Node::up(
                tag,
                |config| {
                    config.app_delay.insert(
                        "details".into(),
                        Delay::Fixed(Duration::from_micros((ms * 1000.0) as u64)),
                    );
                },
                true,
                &[],
            )
        })
        .collect();
    let prom = prometheus_of(&nodes.iter().collect::<Vec<_>>(), &[]);
    for (node, (_, _, pages)) in nodes.iter().zip(cases) {
        node.page_loads(pages);
    }
    let total: u64 = cases.iter().map(|n| n.2).sum();
    let within = Duration::from_secs(20);
    let details = "hop=\"app\",k8s_workload=\"details-v1\"";
    // Each hopprobe saw its own node only.
    let q = format!("count(hopprobe_hop_duration_seconds_count{{{details}}})");
    assert_eq!(prom.wait_for(&q, within, |v| v == 2.0), Ok(2.0), "{q}");
    let q = format!("sum(hopprobe_hop_duration_seconds_count{{{details}}})");
    assert_eq!(
        prom.wait_for(&q, within, |v| v >= total as f64),
        Ok(total as f64),
        "{q}"
    );
    let bucket = |le: &str| {
        let q =
            format!("sum by (le) (hopprobe_hop_duration_seconds_bucket{{{details},le=\"{le}\"}})");
        prom.wait_for(&q, within, |_| true)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // Node a's requests all at or under 5 ms, node b's all above 5 ms and at or under 10 ms.
    let (a, b) = (cases[0].2 as f64, cases[1].2 as f64);
    assert_eq!(bucket("0.0025"), 0.0);
    assert_eq!(bucket("0.005"), a);
    assert_eq!(bucket("0.01"), a + b);
    assert_eq!(bucket("+Inf"), a + b);
    // The quantiles of the merge fall in each node's bucket in the proportion of its load.
    for (phi, low, high) in [(0.25, 0.0025, 0.005), (0.75, 0.005, 0.01)] {
        let q = format!(
            "histogram_quantile({phi}, sum by (le) (hopprobe_hop_duration_seconds_bucket{{{details}}}))"
        );
        let v = prom.wait_for(&q, within, |_| true).expect("quantile");
        assert!(v > low && v <= high, "{q} = {v}, not in ({low}, {high}]");
    }
    drop(prom);
    for node in nodes {
        drop(node.stop());
    }
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

/// A pod deleted while hopprobe runs: its series (socket hops by cgroup, datapath hops by
/// veth) stay for `--metrics-series-grace`, then leave `/metrics` and Prometheus; the other
/// workloads' series keep their counts.
#[test]
fn a_deleted_pods_series_go_after_the_grace_period() {
    let test = "a_deleted_pods_series_go_after_the_grace_period";
    if !testkit::lab::available(test) || !prometheus::available(test) {
        return;
    }
    let grace = Duration::from_secs(4);
    let node = Node::up("g", |_| {}, false, &["--metrics-series-grace", "4s"]);
    let metrics = node.metrics;
    let prom = prometheus_of(&[&node], &[]);
    let pages = 20;
    node.page_loads(pages);
    let within = Duration::from_secs(20);
    let ratings = |hop: &str| {
        format!(
            "sum(hopprobe_hop_duration_seconds_count{{hop=\"{hop}\",k8s_workload=\"ratings-v1\"}})"
        )
    };
    // Both kinds of owner: the app hop is the container's cgroup's, datapath_in the veth's.
    for hop in ["app", "datapath_in"] {
        let q = ratings(hop);
        assert!(prom.wait_for(&q, within, |v| v > 0.0).is_ok(), "{q}");
    }
    let details =
        "sum(hopprobe_hop_duration_seconds_count{hop=\"app\",k8s_workload=\"details-v1\"})";
    assert_eq!(
        prom.wait_for(details, within, |v| v == pages as f64),
        Ok(pages as f64)
    );

    node.lab
        .delete_pod("ratings")
        .expect("delete the ratings pod");
    let deleted = std::time::Instant::now();
    let in_metrics = || {
        http_get(metrics, "/metrics")
            .expect("metrics")
            .1
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("k8s_workload=\"ratings-v1\""))
    };
    while in_metrics() {
        assert!(
            deleted.elapsed() < Duration::from_secs(20),
            "ratings-v1's series still exported 20 s after the pod was deleted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone_after = deleted.elapsed();
    eprintln!("ratings-v1's series left /metrics {gone_after:?} after the pod was deleted");
    assert!(
        gone_after >= grace,
        "removed after {gone_after:?}, before the grace period of {grace:?}"
    );
    let q = "count(hopprobe_hop_duration_seconds_count{k8s_workload=\"ratings-v1\"})";
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !prom.query(q).expect("query").is_empty() {
        assert!(std::time::Instant::now() < until, "{q} still has data");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The others' series are untouched, and the removal is counted.
    assert_eq!(prom.wait_for(details, within, |_| true), Ok(pages as f64));
    let q = "hopprobe_probe_events_total{event=\"series_retired\"}";
    assert!(prom.wait_for(q, within, |v| v > 0.0).is_ok(), "{q}");
    drop(prom);
    nothing_left(node.stop());
}

/// `--metrics-max-series` bounds a scrape and counts what it leaves out.
#[test]
fn the_series_cap_holds_and_counts_what_it_drops() {
    let test = "the_series_cap_holds_and_counts_what_it_drops";
    if !testkit::lab::available(test) {
        return;
    }
    let cap = 5;
    let node = Node::up(
        "c",
        |_| {},
        false,
        &["--metrics-max-series", &cap.to_string()],
    );
    let metrics = node.metrics;
    node.page_loads(10);
    std::thread::sleep(Duration::from_millis(300));
    let (status, text) = http_get(metrics, "/metrics").expect("metrics");
    assert_eq!(status, 200, "{text}");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let series = value("hopprobe_series");
    assert!(series <= cap as f64, "{series} series: {text}");
    assert!(value("hopprobe_series_dropped") > 0.0, "{text}");
    let counted = text
        .lines()
        .filter(|l| l.contains("_count{") || l.starts_with("hopprobe_tcp_re"))
        .count();
    assert!(counted <= cap, "{counted} series written: {text}");
    nothing_left(node.stop());
}

/// The chart's Grafana dashboard, its variables substituted as Grafana would with "All"
/// selected: every panel's every query returns at least one finite value.
fn every_dashboard_query_returns_data(prom: &Prometheus) {
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(
        "../../deploy/helm/hopprobe/dashboards/hopprobe.json"
    ))
    .expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let q = v["definition"].as_str().expect("definition");
        assert!(q.starts_with("label_values("), "{q}");
        let (metric, label) = q["label_values(".len()..q.len() - 1]
            .rsplit_once(", ")
            .expect("label_values(metric, label)");
        let metric = metric.replace("$namespace", ".*");
        let values = prom
            .query(&format!("count by ({label}) ({metric})"))
            .expect("variable");
        assert!(
            values
                .iter()
                .any(|(l, _)| l[label] == "bookinfo" || l[label] == "details-v1"),
            "{q}: {values:?}"
        );
    }
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$namespace", ".*")
                .replace("$workload", ".*")
                .replace("$__rate_interval", "1m");
            let result = prom.query(&expr).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                result.iter().any(|(_, v)| v.is_finite()),
                "panel {:?}: {expr} returned {result:?}",
                panel["title"]
            );
            checked += 1;
        }
    }
    eprintln!("{checked} dashboard queries returned data");
}

fn promtool_accepts(text: &str) {
    let mut child = std::process::Command::new(prometheus::PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{text}",
        testkit::describe(&out)
    );
}
