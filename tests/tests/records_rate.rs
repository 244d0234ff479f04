//! Exchange records are rate-limited in the kernel, and every record that is not delivered is
//! counted as rate-limited or as dropped because the ring buffer was full; the hop series count
//! every exchange all the same.

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use probe_common::exchange::Exchange;
use probe_user::attach::{
    ebpf::MapSizes,
    probe::{Probe, read_counters},
};
use testkit::leftovers;

/// Request/response round trips on one loopback connection: each makes one record at the
/// client's socket and one at the server's.
const PINGS: u64 = 500;

#[test]
fn every_record_is_delivered_rate_limited_or_dropped() {
    if !testkit::root::available("every_record_is_delivered_rate_limited_or_dropped") {
        return;
    }
    // A 4 KiB ring holds 32 records; the burst lets more than that through, so with nobody
    // reading both the limit and the ring drop records.
    let sizes = MapSizes {
        exchange_ring_bytes: 4096,
        records_rate: 50,
        records_burst: 200,
        ..MapSizes::default()
    };
    let mut probe = Probe::attach(None, sizes).expect("attach");
    let mut ring = probe.take_exchanges().expect("ring");
    let stats = probe.take_stats().expect("stats");
    let started = Instant::now();

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    testkit::loopback::round_trips(listener, PINGS);
    // The last records (at the close) follow within a round trip or two.
    let until = Instant::now() + testkit::emulation::slack(Duration::from_secs(5));
    while Instant::now() < until && read_counters(&stats)["exchanges_produced"] < 2 * PINGS {
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    drop(probe);

    let (mut delivered, mut ours) = (0u64, 0u64);
    while let Some(item) = ring.next() {
        delivered += 1;
        if item.len() >= size_of::<Exchange>() {
            // SAFETY: the kernel wrote a whole Exchange; read_unaligned copes with any offset.
            let x = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Exchange>()) };
            if x.flow.local_port == port || x.flow.remote_port == port {
                ours += 1;
            }
        }
    }
    let c = read_counters(&stats);
    let (produced, sent, limited, full) = (
        c["exchanges_produced"],
        c["exchanges_sent"],
        c["exchanges_rate_limited"],
        c["exchange_drops"],
    );
    eprintln!(
        "produced {produced} (ours {}): delivered {delivered} (ours {ours}) + rate-limited \
         {limited} + ring-full {full}, in {elapsed:?}",
        2 * PINGS
    );
    assert_eq!(delivered, sent, "every record sent arrived: {c:?}");
    assert_eq!(
        delivered + limited + full,
        produced,
        "every record is accounted for: {c:?}"
    );
    // Other traffic on the machine can add records, never remove ours.
    assert!(produced >= 2 * PINGS, "{c:?}");
    assert!(limited > 0 && full > 0, "both limits acted: {c:?}");
    // What the limit let through: each CPU's share of the burst, plus its share of the rate
    // over the run, plus one for rounding.
    let limit = sizes.records_limit();
    let cpus = aya::util::online_cpus().expect("cpus").len() as u64;
    let admitted_max = cpus
        * (limit.burst_ns / limit.interval_ns + elapsed.as_nanos() as u64 / limit.interval_ns + 1);
    assert!(
        sent + full <= admitted_max,
        "{} admitted, at most {admitted_max} allowed: {c:?}",
        sent + full
    );
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

/// The records limit bounds the records, never the hop series: an exchange without a record
/// counts in its hop from the kernel's histograms (`EXCHANGE_HIST`).
#[test]
fn hop_series_count_every_exchange_past_the_records_limit() {
    if !testkit::root::available("hop_series_count_every_exchange_past_the_records_limit") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let measured = testkit::probe::measure(
        &testkit::probe::binary(),
        &[
            "--no-datapath",
            "--records-rate",
            "50",
            "--records-burst",
            "10",
        ],
        || testkit::loopback::round_trips(listener, PINGS),
    );
    let s = &measured.summary;
    let counters = &s["counters"];
    let count = |hop: &str, at: &dyn Fn(&serde_json::Value) -> bool| -> u64 {
        s["hops"]
            .as_array()
            .expect("hops")
            .iter()
            .filter(|h| h["hop"] == hop && at(h))
            .filter_map(|h| h["count"].as_u64())
            .sum()
    };
    let app = count("app", &|h| h["local_port"] == port);
    let peer = format!("127.0.0.1:{port}");
    let upstream = count("upstream", &|h| h["peer"] == peer.as_str());
    eprintln!(
        "app {app}, upstream {upstream} of {PINGS}; sent {}, rate-limited {}, aggregated {}",
        counters["exchanges_sent"],
        counters["exchanges_rate_limited"],
        counters["exchanges_aggregated"]
    );
    assert!(
        counters["exchanges_rate_limited"].as_u64() > Some(PINGS),
        "the limit acted: {counters}"
    );
    assert_eq!((app, upstream), (PINGS, PINGS), "{counters}");
    assert_eq!(counters["exchange_hist_failed"], 0, "{counters}");
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
