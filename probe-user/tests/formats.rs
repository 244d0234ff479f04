//! hopprobe's files are written as they were before their types moved to `hopprobe-formats`:
//! the records and the summary of fixed data are compared with files of
//! `formats/tests/data`, which the schema tests there validate and read back.

use std::collections::BTreeMap;

use hopprobe_formats::testing::{golden, golden_dir};

use probe_common::{
    conn::{AF_INET, AF_INET6, FlowKey},
    exchange::{Exchange, PHASE_RESPONSE, ROLE_CLIENT, ROLE_SERVER},
    hist::{POINT_NODE_IN, POINT_POD_IN},
    tcflow::{TcExchange, TcFlowKey},
};
use probe_user::{
    attach::{
        probe::{ActiveHook, TcpEvents},
        prog_info::ProgramCost,
    },
    hops::{self, Hop, HopSummary, datapath, sidecar},
    names::{InterfaceMeta, Metadata, MetadataFile},
    run::Summary,
    series::{
        conn::{Direction, Metric, SeriesSummary},
        cpu::CpuSeries,
        latency,
    },
};

fn exchange(role: u8, v6: bool, resp: u64, first_read: u64) -> Exchange {
    let mut flow = FlowKey {
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: 9080,
        remote_port: 40000,
        family: if v6 { AF_INET6 } else { AF_INET },
        _pad: 0,
    };
    if v6 {
        flow.local_addr = "fd00::10"
            .parse::<std::net::Ipv6Addr>()
            .expect("ip")
            .octets();
        flow.remote_addr = "fd00::11"
            .parse::<std::net::Ipv6Addr>()
            .expect("ip")
            .octets();
    } else {
        flow.local_addr[..4].copy_from_slice(&[10, 78, 0, 10]);
        flow.remote_addr[..4].copy_from_slice(&[10, 96, 0, 11]);
    }
    Exchange {
        req_first_ns: 5_000_000_000,
        req_last_ns: 5_000_010_000,
        resp_first_ns: resp,
        resp_last_ns: resp + (resp != 0) as u64 * 20_000,
        req_bytes: 120,
        resp_bytes: (resp != 0) as u64 * 4_096,
        first_read_ns: first_read,
        cgroup_id: 4_242,
        cookie: 18_446_744_073_709_551_615,
        flow,
        role,
        phase: PHASE_RESPONSE,
        kind: 0,
        tls: 0,
        _pad: [0; 4],
    }
}

fn tc(point: u32, ifindex: u32, synack: u64, resp: u64) -> TcExchange {
    let mut client_addr = [0u8; 16];
    client_addr[..4].copy_from_slice(&[10, 77, 0, 2]);
    let mut server_addr = [0u8; 16];
    server_addr[..4].copy_from_slice(&[10, 77, 0, 1]);
    TcExchange {
        key: TcFlowKey {
            client_addr,
            server_addr,
            ifindex,
            client_port: 40000,
            server_port: 30080,
        },
        point,
        isn: 4_000_000_000,
        index: 2,
        req_seq_end: 0,
        resp_seq_end: 0,
        ip_version: 4,
        syn_ns: 4_999_000_000,
        synack_ns: synack,
        req_first_ns: 5_000_000_000,
        req_last_ns: 5_000_000_500,
        resp_first_ns: resp,
        resp_last_ns: resp,
        req_bytes: 80,
        resp_bytes: 100,
        tls: 0,
        _pad: 0,
        tls_client_first_ns: 0,
        tls_client_last_ns: 0,
        tls_server_first_ns: 0,
        tls_server_last_ns: 0,
    }
}

#[test]
fn records_are_the_golden_file() {
    let metadata = Metadata::from_file(MetadataFile {
        containers: vec![],
        interfaces: vec![InterfaceMeta {
            interface: "veth1a2b".into(),
            namespace: "default".into(),
            pod: "front-v1".into(),
        }],
    });
    let ifnames = BTreeMap::from([(1, "eth0".to_owned()), (7, "veth1a2b".to_owned())]);
    let mut lines = Vec::new();
    for x in [
        exchange(ROLE_SERVER, false, 5_001_000_000, 5_000_300_000),
        exchange(ROLE_CLIENT, false, 0, 0),
        exchange(ROLE_CLIENT, true, 5_002_000_000, 5_002_100_000),
    ] {
        lines.push(serde_json::to_string(&hops::record(&x)).expect("json"));
    }
    for x in [
        tc(POINT_NODE_IN, 1, 4_999_100_000, 5_003_000_000),
        tc(POINT_POD_IN, 7, 0, 0),
        tc(99, 3, 0, 5_003_000_000),
    ] {
        let r = datapath::record(&x, &ifnames, &metadata);
        lines.push(serde_json::to_string(&r).expect("json"));
    }
    golden("hopprobe-records.jsonl", &(lines.join("\n") + "\n"));
}

fn latency(count: u64) -> latency::Summary {
    latency::Summary {
        count,
        min_us: 10.5,
        mean_us: 123.4,
        p50_us: 100.0,
        p90_us: 250.1,
        p99_us: 999.9,
        max_us: 1_500.0,
    }
}

fn summary(programs: Vec<ProgramCost>) -> Summary {
    Summary {
        duration_s: 12.345678,
        stopped_by: "SIGINT",
        cgroup_root: "/sys/fs/cgroup".into(),
        hooks: vec![
            ActiveHook {
                program: "hp_sock_set_state",
                hook: "tracepoint",
                target: "sock/inet_sock_set_state".into(),
            },
            ActiveHook {
                program: "hp_skb_in",
                hook: "cgroup_skb/ingress",
                target: "/sys/fs/cgroup".into(),
            },
        ],
        counters: BTreeMap::from([("exchanges_sent", 40), ("ringbuf_drops", 0)]),
        series: vec![
            SeriesSummary {
                metric: Metric::Handshake,
                direction: Direction::Passive,
                cgroup_id: 4_242,
                cgroup: Some("/kubepods.slice/pod1/cri-containerd-abc.scope".into()),
                namespace: Some("default".into()),
                pod: Some("front-v1".into()),
                container: Some("front".into()),
                local_port: Some(9080),
                remote_port: None,
                latency: latency(40),
                timed_from_syn_recv: 3,
            },
            SeriesSummary {
                metric: Metric::Srtt,
                direction: Direction::Unknown,
                cgroup_id: 0,
                cgroup: None,
                namespace: None,
                pod: None,
                container: None,
                local_port: None,
                remote_port: Some(443),
                latency: latency(2),
                timed_from_syn_recv: 0,
            },
        ],
        hops: vec![
            HopSummary {
                hop: Hop::DatapathIn,
                namespace: Some("default".into()),
                pod: Some("front-v1".into()),
                container: None,
                direction: Some(sidecar::Direction::Inbound),
                interface: Some("veth1a2b".into()),
                cgroup_id: 0,
                cgroup: None,
                local_port: None,
                peer: None,
                peer_service: None,
                peer_pod: None,
                latency: latency(40),
            },
            HopSummary {
                hop: Hop::Upstream,
                namespace: Some("default".into()),
                pod: Some("front-v1".into()),
                container: Some("front".into()),
                direction: Some(sidecar::Direction::Outbound),
                interface: None,
                cgroup_id: 4_242,
                cgroup: Some("/kubepods.slice/pod1/cri-containerd-abc.scope".into()),
                local_port: None,
                peer: Some("10.96.0.11:9080".into()),
                peer_service: Some("default/back".into()),
                peer_pod: Some("default/back-v1".into()),
                latency: latency(40),
            },
        ],
        tcp_events: vec![TcpEvents {
            cgroup_id: 4_242,
            cgroup: Some("/kubepods.slice/pod1/cri-containerd-abc.scope".into()),
            retransmits: 2,
            resets_sent: 0,
            resets_received: 1,
        }],
        cpu: vec![CpuSeries {
            cgroup: "/kubepods.slice/pod1/cri-containerd-abc.scope".into(),
            namespace: Some("default".into()),
            pod: Some("front-v1".into()),
            container: Some("front".into()),
            samples: vec![(5_000_000_000, 0), (5_500_000_000, 120_000)],
        }],
        programs,
    }
}

#[test]
fn the_summary_is_the_golden_file() {
    let pretty = |s: &Summary| serde_json::to_string_pretty(s).expect("json") + "\n";
    golden("summary.json", &pretty(&summary(vec![])));
    golden(
        "summary-bpf-stats.json",
        &pretty(&summary(vec![ProgramCost {
            program: "hp_sock_set_state".into(),
            runs: 1_000,
            run_time_ns: 250_000,
        }])),
    );
}

/// `hopprobe report` reads the golden files of every format it reads (the records and the
/// summary above, loadgen's records and JSON output).
#[test]
fn the_report_reads_the_golden_files() {
    use probe_user::report::input;
    let data = golden_dir();
    let probe = input::load_probe(&data.join("hopprobe-records.jsonl")).expect("records");
    assert_eq!((probe.exchanges.len(), probe.datapath.len()), (3, 3));
    assert_eq!(probe.exchanges[0].role, "server");
    assert_eq!(probe.datapath[1].pod.as_deref(), Some("front-v1"));
    let s = input::load_summary(&data.join("summary.json")).expect("summary");
    assert_eq!(
        s.names.get(&4_242),
        Some(&("front-v1".to_owned(), "front".to_owned()))
    );
    assert_eq!(s.cpu[0].samples.len(), 2);
    let reqs = input::load_requests(&data.join("loadgen-records.jsonl")).expect("requests");
    // The warm-up request is left out.
    assert_eq!((reqs.requests.len(), reqs.concurrency), (4, Some(4)));
    let lg = input::load_loadgen(&data.join("loadgen-output.json")).expect("loadgen");
    assert_eq!(lg.success_rate, Some(0.95));
    let p: Vec<&str> = lg.percentiles.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(p.first(), Some(&"p10"));
    // Several targets: the first by name, `a`; `b` ran nothing.
    let lg = input::load_loadgen(&data.join("loadgen-output-targets.json")).expect("targets");
    assert_eq!(lg.success_rate, Some(0.95));
}
