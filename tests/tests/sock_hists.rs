//! Connection measurements are counted in the kernel's socket histograms; when the map has no
//! room for a new series, every measurement it could not hold is counted.

use std::time::Duration;

use probe_common::sockops::METRIC_SRTT;
use probe_user::attach::{
    ebpf::MapSizes,
    probe::{Probe, TRACEPOINT_PROGRAM, read_counters, read_hists},
};
use testkit::leftovers;

const CONNECTIONS: u64 = 100;

#[test]
fn a_full_socket_histogram_map_counts_what_it_could_not_hold() {
    if !testkit::root::available("a_full_socket_histogram_map_counts_what_it_could_not_hold") {
        return;
    }
    // Each connection makes 4 measurements in 4 series (handshake and lifetime, each side);
    // 2 keys hold at most 2 of them.
    let mut probe = Probe::attach(
        None,
        MapSizes {
            sock_hist_keys: 2,
            ..MapSizes::default()
        },
    )
    .expect("attach");
    let hists = probe.take_sock_hists().expect("hists");
    let stats = probe.take_stats().expect("stats");

    testkit::loopback::connections(CONNECTIONS as usize);
    // The last sockets reach CLOSE a round trip or two later; wait until every measurement is
    // accounted for (or 5 s have passed, and the assertion below says what is missing).
    let until = std::time::Instant::now() + testkit::emulation::slack(Duration::from_secs(5));
    while std::time::Instant::now() < until {
        let c = read_counters(&stats);
        if c["conn_measured"] + c["sock_hist_failed"] >= 4 * CONNECTIONS {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Runs the kernel skipped (a softirq firing the tracepoint while the program already ran
    // on that CPU) measure nothing; each can cost a connection's socket its two measurements.
    let missed = probe.missed_runs();
    drop(probe);

    let counters = read_counters(&stats);
    let (keys, in_map) = read_hists(&hists)
        .into_iter()
        .filter(|(k, _)| k.metric != METRIC_SRTT)
        .fold((0, 0u64), |(keys, n), (_, counts)| {
            (keys + 1, n + counts.iter().sum::<u64>())
        });
    eprintln!("{keys} keys holding {in_map}, counters {counters:?}, skipped runs {missed:?}");
    let skipped = missed
        .get(&format!("missed_runs_{TRACEPOINT_PROGRAM}"))
        .copied()
        .unwrap_or(0);
    let (measured, failed) = (counters["conn_measured"], counters["sock_hist_failed"]);
    assert!(keys <= 2, "the map held more keys than its limit");
    assert!(
        failed > 0,
        "2 keys cannot hold {CONNECTIONS} connections' 4 series: {counters:?}"
    );
    assert_eq!(
        in_map, measured,
        "every measurement counted is in a histogram: {counters:?}"
    );
    // Other traffic on the machine may add measurements, never remove them; a skipped run
    // removes at most two (a socket never tracked: its handshake and its lifetime).
    let short = (4 * CONNECTIONS).saturating_sub(measured + failed + 2 * skipped);
    testkit::emulation::assert_no_event_missing(short, || {
        format!(
            "of {}: {counters:?}, skipped runs {missed:?}",
            4 * CONNECTIONS
        )
    });
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
