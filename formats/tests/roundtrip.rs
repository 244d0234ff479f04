//! Every format, as oha checks its JSON against its schema: sample values written by the
//! writer, each line or document validated against its schema in `schemas/`, read back by the
//! reader and equal to what was written. The files in `tests/data` (written by hopprobe's and
//! loadgen's own writers, see `probe-user/tests/formats.rs` and loadgen's `record` and
//! `report::json` tests) go through the same and are written again byte for byte.
//!
//! The schemas are strict (`additionalProperties: false`, every written key required): a field
//! added to or taken from a type without its schema fails here.

use std::collections::BTreeMap;

use hopprobe_formats::{
    ReadError, loadgen_output, loadgen_records, records, summary,
    testing::{Schema, golden_dir},
    to_pretty, write_line,
};
use serde::Serialize;
use serde_json::{Value, json};

fn data(name: &str) -> String {
    let path = golden_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn jsonl<T: Serialize>(values: &[T]) -> String {
    let mut out = Vec::new();
    for v in values {
        write_line(&mut out, v).expect("write");
    }
    String::from_utf8(out).expect("utf-8")
}

fn value(x: &impl Serialize) -> Value {
    serde_json::to_value(x).expect("json")
}

mod hopprobe_records {
    use super::*;
    use records::{DatapathRecord, Record, Records, SockExchange, TlsHandshake};

    fn exchange(role: &str, local: &str, answered: bool) -> SockExchange {
        SockExchange {
            cookie: u64::MAX,
            cgroup_id: 4_242,
            role: role.into(),
            local: local.parse().expect("addr"),
            remote: "10.96.0.11:9080".parse().expect("addr"),
            req_first_ns: 5_000_000_000,
            req_last_ns: 5_000_010_000,
            resp_first_ns: answered.then_some(5_001_000_000),
            resp_last_ns: answered.then_some(5_001_020_000),
            first_read_ns: answered.then_some(5_000_300_000),
            req_bytes: 120,
            resp_bytes: if answered { 4_096 } else { 0 },
            tls: !answered,
        }
    }

    fn handshake(role: &str, resumed: bool) -> TlsHandshake {
        TlsHandshake {
            record: records::TLS_HANDSHAKE.into(),
            cookie: 77,
            cgroup_id: 4_243,
            role: role.into(),
            local: "10.78.0.5:8443".parse().expect("addr"),
            remote: "10.77.0.2:40001".parse().expect("addr"),
            version: if resumed { "1.2" } else { "1.3" }.into(),
            resumed,
            client_auth: !resumed,
            client_first_ns: 5_000_000_000,
            client_last_ns: 5_000_900_000,
            server_first_ns: 5_000_100_000,
            server_last_ns: 5_000_500_000,
            client_bytes: 600,
            server_bytes: 2_400,
        }
    }

    fn datapath(point: &str, seen: bool) -> DatapathRecord {
        DatapathRecord {
            record: records::DATAPATH.into(),
            point: point.into(),
            ifindex: 7,
            interface: seen.then(|| "veth1a2b".into()),
            pod: seen.then(|| "front-v1".into()),
            client: "10.77.0.2:40000".parse().expect("addr"),
            server: "[fd00::1]:30080".parse().expect("addr"),
            isn: u32::MAX,
            index: 3,
            syn_ns: 4_999_000_000,
            synack_ns: seen.then_some(4_999_100_000),
            req_first_ns: 5_000_000_000,
            req_last_ns: 5_000_000_500,
            resp_first_ns: seen.then_some(5_003_000_000),
            resp_last_ns: seen.then_some(5_003_000_000),
            req_bytes: 80,
            resp_bytes: 100,
            tls: seen,
            tls_handshake: seen.then_some(records::HandshakeTimes {
                client_first_ns: 4_999_200_000,
                client_last_ns: 4_999_900_000,
                server_first_ns: 4_999_300_000,
                server_last_ns: 4_999_500_000,
            }),
        }
    }

    fn samples() -> Vec<Record> {
        vec![
            Record::Exchange(exchange(records::SERVER, "10.78.0.10:9080", true)),
            Record::Datapath(datapath("node_in", true)),
            Record::Exchange(exchange(records::CLIENT, "[fd00::10]:51000", false)),
            Record::Datapath(datapath("pod_out", false)),
            Record::TlsHandshake(handshake(records::SERVER, false)),
            Record::TlsHandshake(handshake(records::CLIENT, true)),
        ]
    }

    #[test]
    fn samples_are_valid_and_read_back_equal() {
        let schema = Schema::load("hopprobe-records.schema.json");
        let text = jsonl(&samples());
        schema.assert_lines_valid(&text);
        let read = records::read(&text).expect("read");
        let mut want = Records::default();
        for r in samples() {
            match r {
                Record::Exchange(x) => want.exchanges.push(x),
                Record::Datapath(d) => want.datapath.push(d),
                Record::TlsHandshake(h) => want.tls_handshakes.push(h),
            }
        }
        assert_eq!(read, want);
        let h = &read.tls_handshakes[0];
        assert_eq!(
            (h.server_ns(), h.client_finish_ns()),
            (500_000, Some(400_000))
        );
    }

    #[test]
    fn the_writers_file_is_valid_and_written_again_the_same() {
        let schema = Schema::load("hopprobe-records.schema.json");
        let text = data("hopprobe-records.jsonl");
        schema.assert_lines_valid(&text);
        let lines: Vec<Record> = text
            .lines()
            .map(|l| records::parse_line(l).expect("a record"))
            .collect();
        assert_eq!(jsonl(&lines), text);
        let read = records::read(&text).expect("read");
        assert_eq!((read.exchanges.len(), read.datapath.len()), (3, 3));
        assert!(read.exchanges[0].is_server() && !read.exchanges[1].is_server());
    }

    #[test]
    fn a_datapath_line_written_another_way_is_still_one() {
        let line = r#"{ "record": "datapath", "point": "pod_in", "ifindex": 7, "interface": null, "pod": null, "client": "10.77.0.2:1", "server": "10.77.0.1:2", "isn": 1, "index": 0, "syn_ns": 1, "req_first_ns": 2, "req_last_ns": 2, "resp_first_ns": null, "resp_last_ns": null, "req_bytes": 0, "resp_bytes": 0 }"#;
        let Record::Datapath(d) = records::parse_line(line).expect("parse") else {
            panic!("not a datapath record");
        };
        // An older hopprobe did not write `synack_ns`.
        assert_eq!((d.point.as_str(), d.synack_ns), ("pod_in", None));
        let err = records::parse_line(r#"{"record":"route"}"#).expect_err("unknown kind");
        assert!(err.to_string().contains("unknown record kind"), "{err}");
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let good = jsonl(&samples()[..1]);
        let err = records::read(&format!("{good}\n{{\"cookie\":1}}\n")).expect_err("bad");
        assert!(matches!(err, ReadError::Line { line: 3, .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("line 3: not a hopprobe record: missing field"),
            "{err}"
        );
        let err = records::read(&format!("{good}{{not json\n")).expect_err("bad");
        assert!(
            matches!(err, ReadError::LineSyntax { line: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn the_schema_rejects_what_the_writer_does_not_write() {
        let schema = Schema::load("hopprobe-records.schema.json");
        let mut extra = value(&samples()[0]);
        extra["bytes"] = json!(1);
        schema.assert_invalid(&extra);
        let mut missing = value(&samples()[0]);
        missing.as_object_mut().expect("object").remove("req_bytes");
        schema.assert_invalid(&missing);
        let mut role = value(&samples()[0]);
        role["role"] = json!("proxy");
        schema.assert_invalid(&role);
        let mut addr = value(&samples()[1]);
        addr["client"] = json!("10.77.0.2");
        schema.assert_invalid(&addr);
    }
}

mod hopprobe_summary {
    use super::*;
    use summary::{
        ConnDirection, CpuSeries, Hook, Hop, HopDirection, HopSummary, LatencySummary, Metric,
        ProgramCost, SeriesSummary, Summary, TcpEvents,
    };

    fn latency(count: u64) -> LatencySummary {
        LatencySummary {
            count,
            min_us: 10.5,
            mean_us: 123.456,
            p50_us: 100.0,
            p90_us: 250.1,
            p99_us: 999.9,
            max_us: 1.5e9,
        }
    }

    fn sample(programs: Vec<ProgramCost>) -> Summary {
        let hop = |hop: Hop, named: bool| HopSummary {
            hop,
            namespace: named.then(|| "default".into()),
            pod: named.then(|| "front-v1".into()),
            container: named.then(|| "front".into()),
            direction: hop.direction(),
            interface: (!named).then(|| "veth1a2b".into()),
            cgroup_id: if named { 4_242 } else { 0 },
            cgroup: named.then(|| "/kubepods.slice/pod1/cri-containerd-abc.scope".into()),
            local_port: named.then_some(9080),
            peer: named.then(|| "10.96.0.11:9080".into()),
            peer_service: named.then(|| "default/back".into()),
            peer_pod: named.then(|| "default/back-v1".into()),
            latency: latency(7),
        };
        Summary {
            duration_s: 30.000_123,
            stopped_by: "duration".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            hooks: vec![Hook {
                program: "hp_sock_set_state".into(),
                hook: "tracepoint".into(),
                target: "sock/inet_sock_set_state".into(),
            }],
            counters: BTreeMap::from([("exchanges_sent".into(), 40), ("ringbuf_drops".into(), 0)]),
            series: vec![
                SeriesSummary {
                    metric: Metric::FailedConnect,
                    direction: ConnDirection::Active,
                    cgroup_id: 4_242,
                    cgroup: Some("/kubepods.slice/pod1".into()),
                    namespace: Some("default".into()),
                    pod: Some("front-v1".into()),
                    container: Some("front".into()),
                    local_port: None,
                    remote_port: Some(9080),
                    latency: latency(1),
                    timed_from_syn_recv: 0,
                },
                SeriesSummary {
                    metric: Metric::Handshake,
                    direction: ConnDirection::Passive,
                    cgroup_id: 0,
                    cgroup: None,
                    namespace: None,
                    pod: None,
                    container: None,
                    local_port: Some(9080),
                    remote_port: None,
                    latency: latency(3),
                    timed_from_syn_recv: 2,
                },
            ],
            hops: vec![
                hop(Hop::DatapathIn, false),
                hop(Hop::AppQueue, true),
                hop(Hop::Sidecar, true),
            ],
            tcp_events: vec![TcpEvents {
                cgroup_id: 0,
                cgroup: None,
                retransmits: 1,
                resets_sent: 2,
                resets_received: 3,
            }],
            cpu: vec![CpuSeries {
                cgroup: "/kubepods.slice/pod1/cri-containerd-abc.scope".into(),
                namespace: None,
                pod: None,
                container: None,
                samples: vec![(5_000_000_000, 0), (5_500_000_000, 120_000)],
            }],
            programs,
        }
    }

    #[test]
    fn samples_are_valid_and_read_back_equal() {
        let schema = Schema::load("summary.schema.json");
        for s in [
            sample(vec![]),
            sample(vec![ProgramCost {
                program: "hp_skb_in".into(),
                runs: 3,
                run_time_ns: 900,
            }]),
            Summary::default(),
        ] {
            let text = to_pretty(&s).expect("json");
            schema.assert_valid(&serde_json::from_str(&text).expect("json"));
            assert_eq!(summary::read(&text).expect("read"), s);
        }
    }

    #[test]
    fn the_writers_files_are_valid_and_written_again_the_same() {
        let schema = Schema::load("summary.schema.json");
        for name in ["summary.json", "summary-bpf-stats.json"] {
            let text = data(name);
            schema.assert_valid(&serde_json::from_str(&text).expect("json"));
            let read = summary::read(&text).expect("read");
            assert_eq!(to_pretty(&read).expect("json"), text, "{name}");
        }
    }

    /// What `hopprobe report` read before the format had a type: only the names of `hops` and
    /// `cpu` (`tests/tests/report.rs` writes such summaries).
    #[test]
    fn a_summary_with_only_what_the_report_needs_reads() {
        let text = r#"{"hops":[{"hop":"app","cgroup_id":1,"pod":"front-v1","container":"front"}],
            "cpu":[{"cgroup":"/front-v1","namespace":"default","pod":"front-v1","container":"front","samples":[[1,2]]}]}"#;
        let s = summary::read(text).expect("read");
        assert_eq!(s.hops[0].pod.as_deref(), Some("front-v1"));
        assert_eq!(s.hops[0].latency, LatencySummary::default());
        assert_eq!(s.cpu[0].samples, [(1, 2)]);
    }

    #[test]
    fn a_bad_summary_says_where() {
        let err = summary::read(r#"{"cpu": [{"cgroup": 3}]}"#).expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("not a hopprobe summary: invalid type"),
            "{err}"
        );
        assert!(err.to_string().contains("line 1 column"), "{err}");
        assert!(matches!(summary::read("{"), Err(ReadError::Syntax(_))));
    }

    #[test]
    fn the_schema_rejects_what_the_writer_does_not_write() {
        let schema = Schema::load("summary.schema.json");
        let mut hop = value(&sample(vec![]));
        hop["hops"][0]["p999_us"] = json!(1.0);
        schema.assert_invalid(&hop);
        let mut latency = value(&sample(vec![]));
        latency["series"][0]
            .as_object_mut()
            .expect("object")
            .remove("p50_us");
        schema.assert_invalid(&latency);
        let mut name = value(&sample(vec![]));
        name["hops"][0]["hop"] = json!("sidecar_in");
        schema.assert_invalid(&name);
    }

    #[test]
    fn hop_names_are_their_serde_names() {
        for hop in [
            Hop::DatapathIn,
            Hop::PodDelivery,
            Hop::Sidecar,
            Hop::SidecarQueue,
            Hop::SidecarProcessing,
            Hop::App,
            Hop::AppQueue,
            Hop::AppProcessing,
            Hop::AppSelf,
            Hop::Upstream,
            Hop::UpstreamReadWait,
            Hop::PodSend,
            Hop::DatapathOut,
            Hop::TlsHandshake,
            Hop::TlsClientFinish,
        ] {
            assert_eq!(value(&hop), json!(hop.name()));
        }
        for d in [HopDirection::Inbound, HopDirection::Outbound] {
            assert_eq!(value(&d), json!(d.name()));
        }
    }
}

mod loadgen_requests {
    use super::*;
    use loadgen_records::{Header, HeaderTarget, Line, Records, Request};

    fn header() -> Header {
        Header {
            record: loadgen_records::HEADER.into(),
            version: loadgen_records::VERSION,
            clock: loadgen_records::CLOCK.into(),
            monotonic_ns: 1_000_000_000,
            realtime_unix_ns: 1_767_225_600_000_000_000,
            targets: vec![HeaderTarget {
                name: "a \"b\"".into(),
                url: "http://10.77.0.1:30080/".into(),
            }],
            args: ["loadgen", "--concurrency=16", "http://10.77.0.1:30080/"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn request(seq: u64, ok: bool) -> Request {
        Request {
            target: "a \"b\"".into(),
            seq,
            warmup: seq == 0,
            conn: seq / 2,
            reused: seq % 2 == 1,
            local: ok.then(|| "[fd00::2]:40000".parse().expect("addr")),
            remote: ok.then(|| "[fd00::1]:30080".parse().expect("addr")),
            scheduled_ns: ok.then_some(1_000_000_000),
            start_ns: 1_000_000_010,
            dns_ns: Some(0),
            connect_start_ns: Some(1_000_000_020),
            connect_end_ns: ok.then_some(1_000_100_000),
            tls_end_ns: ok.then_some(1_000_900_000),
            tls_resumed: ok.then_some(true),
            written_ns: ok.then_some(1_001_000_000),
            first_byte_ns: ok.then_some(1_002_000_000),
            end_ns: 1_002_000_100,
            status: ok.then_some(204),
            bytes: 0,
            error: (!ok).then(|| "connection refused".into()),
        }
    }

    #[test]
    fn samples_are_valid_and_read_back_equal() {
        let schema = Schema::load("loadgen-records.schema.json");
        let lines = vec![
            Line::Header(header()),
            Line::Request(request(0, true)),
            Line::Request(request(1, true)),
            Line::Request(request(2, false)),
        ];
        let text = jsonl(&lines);
        schema.assert_lines_valid(&text);
        let read = loadgen_records::read(&text).expect("read");
        assert_eq!(
            read,
            Records {
                header: Some(header()),
                requests: vec![request(0, true), request(1, true), request(2, false)],
            }
        );
        assert_eq!(read.header.and_then(|h| h.concurrency()), Some(16));
        assert!(read.requests[1].ok() && !read.requests[2].ok());
    }

    #[test]
    fn the_writers_file_is_valid_and_written_again_the_same() {
        let schema = Schema::load("loadgen-records.schema.json");
        let text = data("loadgen-records.jsonl");
        schema.assert_lines_valid(&text);
        let lines: Vec<Line> = text
            .lines()
            .map(|l| loadgen_records::parse_line(l).expect("a line"))
            .collect();
        assert_eq!(jsonl(&lines), text);
        let read = loadgen_records::read(&text).expect("read");
        assert_eq!(read.header.and_then(|h| h.concurrency()), Some(4));
        assert_eq!(read.requests.len(), 5);
    }

    /// `loadgen --records FILE.zst`: the writer's file compressed by the shared writer reads
    /// back (by the shared reader, which tells zstd by its bytes) as the same text, valid
    /// against the schema and parsed to the same records; cut short, it reads up to its last
    /// complete line and says so.
    #[test]
    fn the_writers_file_compressed_reads_back_the_same() {
        use hopprobe_formats::compressed::{TextWriter, read_text};
        use std::io::Write;

        let schema = Schema::load("loadgen-records.schema.json");
        let golden = data("loadgen-records.jsonl");
        let lines: Vec<Line> = golden
            .lines()
            .map(|l| loadgen_records::parse_line(l).expect("a line"))
            .collect();
        // The golden requests again and again with other numbers and times, so that the file
        // spans many zstd blocks.
        let copies = 20_000u64;
        let mut text = jsonl(&lines[..1]);
        for k in 0..copies {
            for line in &lines[1..] {
                let Line::Request(r) = line else {
                    panic!("one header")
                };
                let r = Request {
                    seq: r.seq + 5 * k,
                    start_ns: r.start_ns + 7_919 * k,
                    end_ns: r.end_ns + 7_919 * k + k % 1_000,
                    ..r.clone()
                };
                text.push_str(&jsonl(&[Line::Request(r)]));
            }
        }
        let dir = std::env::temp_dir().join(format!("formats-roundtrip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("loadgen-records.jsonl.zst");
        let mut w = TextWriter::create(&path, 256 * 1024).expect("create");
        w.write_all(text.as_bytes()).expect("write");
        w.finish().expect("finish");
        let raw = std::fs::read(&path).expect("raw");
        assert!(
            raw.len() * 5 < text.len(),
            "compressed to {} bytes",
            raw.len()
        );
        let read = read_text(&path).expect("read");
        assert!(!read.cut_short);
        assert!(read.text == text, "the same text");
        schema.assert_lines_valid(&read.text);
        let records = loadgen_records::read(&read.text).expect("records");
        assert_eq!(records.requests.len() as u64, 5 * copies);
        assert_eq!(
            records.header,
            loadgen_records::read(&golden).expect("golden").header
        );

        let cut = dir.join("cut.jsonl.zst");
        std::fs::write(&cut, &raw[..raw.len() / 2]).expect("write");
        let read = read_text(&cut).expect("a cut-short file reads");
        assert!(read.cut_short);
        assert!(text.starts_with(&read.text) && read.text.ends_with('\n'));
        assert!(
            read.text.len() > text.len() / 4,
            "{} bytes",
            read.text.len()
        );
        schema.assert_lines_valid(&read.text);
        let records = loadgen_records::read(&read.text).expect("the complete lines read");
        assert!(records.requests.len() < 5 * copies as usize);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What `hopprobe report` read before the format had a type: a request needs only its
    /// start and end; a header written with other spacing is still the header.
    #[test]
    fn sparse_lines_read() {
        let text = "{ \"record\": \"header\", \"args\": [\"loadgen\", \"-c\", \"8\"] }\n\n\
                    {\"start_ns\": 1, \"end_ns\": 2, \"status\": 200}\n";
        let read = loadgen_records::read(text).expect("read");
        assert_eq!(read.header.and_then(|h| h.concurrency()), Some(8));
        assert_eq!(
            read.requests,
            [Request {
                start_ns: 1,
                end_ns: 2,
                status: Some(200),
                ..Request::default()
            }]
        );
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let err = loadgen_records::read("{not json\n").expect_err("bad");
        assert!(
            err.to_string().starts_with("line 1: key must be a string"),
            "{err}"
        );
        let err = loadgen_records::read("\n{\"start_ns\": 1}\n").expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("line 2: not a loadgen record: missing field `end_ns`"),
            "{err}"
        );
    }

    #[test]
    fn the_schema_rejects_what_the_writer_does_not_write() {
        let schema = Schema::load("loadgen-records.schema.json");
        let mut extra = value(&request(1, true));
        extra["latency_ns"] = json!(5);
        schema.assert_invalid(&extra);
        let mut missing = value(&request(1, true));
        missing.as_object_mut().expect("object").remove("conn");
        schema.assert_invalid(&missing);
        let mut header = value(&header());
        header["version"] = json!(2);
        schema.assert_invalid(&header);
    }
}

mod loadgen_json {
    use super::*;
    use loadgen_output::{
        Details, HdrHistograms, LatencyMs, Metrics, Output, Report, Rps, Summary, Timing,
    };

    fn percentiles(scale: f64) -> BTreeMap<String, Option<f64>> {
        [
            "p10", "p25", "p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99",
        ]
        .iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), Some((i + 1) as f64 * scale)))
        .collect()
    }

    fn timing(x: Option<f64>) -> Timing {
        Timing {
            average: x,
            fastest: x.map(|x| x / 2.0),
            slowest: x.map(|x| x * 2.0),
        }
    }

    fn report(url: Option<&str>, empty: bool) -> Report {
        let x = (!empty).then_some(0.001_234_567);
        Report {
            details: Details {
                dns_dialup: timing(x),
                dns_lookup: timing(x),
                connect: Some(timing(x)),
                first_byte: Some(timing(x)),
                tls_handshake: Some(timing(None)),
            },
            error_distribution: BTreeMap::from([("connection reset".into(), 2)]),
            first_byte_histogram: Some(BTreeMap::from([("0.001".into(), 9)])),
            first_byte_percentiles: Some(percentiles(0.0005)),
            hdr_histograms: Some(HdrHistograms {
                dns_dialup: "HISTFAAAACJ4nJNpmSzMwMDAwgABzFCaEULV/7f/AGEdDuZgAgBckQUc".into(),
                dns_lookup: String::new(),
                connect: String::new(),
                first_byte: String::new(),
                format: loadgen_output::HDR_FORMAT.into(),
                latency: String::new(),
                tls_handshake: String::new(),
                unit: loadgen_output::HDR_UNIT.into(),
            }),
            latency_percentiles: if empty {
                percentiles(0.0).into_keys().map(|k| (k, None)).collect()
            } else {
                percentiles(0.001)
            },
            metrics: Some(Metrics {
                latency_ms: LatencyMs {
                    max: x,
                    mean: x,
                    min: x,
                    p50: x,
                    p95: x,
                    p99: x,
                },
                requests_per_sec: Some(812.5),
                success_rate: Some(0.9),
            }),
            response_time_histogram: BTreeMap::from([("0.0012".into(), 18)]),
            rps: Rps {
                max: x,
                mean: x,
                min: x,
                percentiles: if empty {
                    BTreeMap::new()
                } else {
                    percentiles(100.0)
                },
                stddev: x,
            },
            status_code_distribution: BTreeMap::from([("200".into(), 17), ("503".into(), 1)]),
            summary: Summary {
                average: x,
                fastest: x,
                requests_per_sec: Some(812.5),
                size_per_request: (!empty).then_some(1_234),
                size_per_sec: Some(1e6),
                slowest: x,
                success_rate: Some(0.9),
                total: Some(2.5),
                total_data: 22_212,
            },
            url: url.map(String::from),
        }
    }

    #[test]
    fn samples_are_valid_and_read_back_equal() {
        let schema = Schema::load("loadgen-output.schema.json");
        for out in [
            Output::Single(Box::new(report(None, false))),
            Output::Single(Box::new(report(None, true))),
            Output::Targets {
                targets: BTreeMap::from([
                    ("a".into(), report(Some("http://a/"), false)),
                    ("b".into(), report(Some("https://b:8443/x"), true)),
                ]),
            },
        ] {
            let text = to_pretty(&out).expect("json");
            schema.assert_valid(&serde_json::from_str(&text).expect("json"));
            assert_eq!(loadgen_output::read(&text).expect("read"), out);
        }
    }

    #[test]
    fn the_writers_files_are_valid_and_written_again_the_same() {
        let schema = Schema::load("loadgen-output.schema.json");
        for name in ["loadgen-output.json", "loadgen-output-targets.json"] {
            let text = data(name);
            schema.assert_valid(&serde_json::from_str(&text).expect("json"));
            let read = loadgen_output::read(&text).expect("read");
            assert_eq!(to_pretty(&read).expect("json"), text, "{name}");
        }
    }

    /// oha's report (its keys only) reads; a single target's has no `url`, several have.
    #[test]
    fn ohas_report_reads() {
        let oha = json!({
            "summary": {"successRate": 1.0, "total": 2.0, "slowest": 0.003, "fastest": 0.001,
                        "average": 0.002, "requestsPerSec": 500.0, "totalData": 1000,
                        "sizePerRequest": 1, "sizePerSec": 500.0},
            "responseTimeHistogram": {"0.001": 10},
            "latencyPercentiles": {"p50": 0.002, "p99": 0.003},
            "rps": {"mean": 500.0, "stddev": 1.0, "max": 510.0, "percentiles": {"p50": 500.0}},
            "details": {"DNSDialup": {"average": 0.001, "fastest": 0.001, "slowest": 0.001},
                        "DNSLookup": {"average": 0.0, "fastest": 0.0, "slowest": 0.0}},
            "statusCodeDistribution": {"200": 1000},
            "errorDistribution": {}
        });
        let read = loadgen_output::read(&oha.to_string()).expect("read");
        let r = read.first().expect("a report");
        assert_eq!(r.summary.requests_per_sec, Some(500.0));
        assert_eq!(r.latency_percentiles["p99"], Some(0.003));
        assert!(r.metrics.is_none() && r.details.connect.is_none());
    }

    #[test]
    fn a_document_without_a_summary_is_refused() {
        let err = loadgen_output::read(r#"{"rps": {}}"#).expect_err("no summary");
        assert_eq!(
            err.to_string(),
            "no `summary`: not an oha/loadgen JSON report"
        );
        let err = loadgen_output::read(r#"{"summary": {"total": "2s"}}"#).expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("not an oha/loadgen JSON report: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn the_schema_rejects_what_the_writer_does_not_write() {
        let schema = Schema::load("loadgen-output.schema.json");
        let single = value(&Output::Single(Box::new(report(None, false))));
        let mut extra = single.clone();
        extra["summary"]["p50"] = json!(1.0);
        schema.assert_invalid(&extra);
        let mut missing = single.clone();
        missing
            .as_object_mut()
            .expect("object")
            .remove("hdrHistograms");
        schema.assert_invalid(&missing);
        let mut url = single;
        url["url"] = json!("http://x/");
        schema.assert_invalid(&url);
        let several = value(&Output::Targets {
            targets: BTreeMap::from([("a".into(), report(None, false))]),
        });
        schema.assert_invalid(&several);
    }
}
