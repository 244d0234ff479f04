//! When userspace falls behind and the ring buffer fills, every lost event is counted.

use std::time::Duration;

use probe_user::attach::{
    ebpf::MapSizes,
    probe::{Probe, TRACEPOINT_PROGRAM, read_counters},
};
use testkit::leftovers;

const CONNECTIONS: u64 = 100;

#[test]
fn a_full_ring_buffer_counts_its_drops() {
    if !testkit::root::available("a_full_ring_buffer_counts_its_drops") {
        return;
    }
    // One page holds about 50 events; the connections below make 4 each and nobody reads.
    let mut probe = Probe::attach(
        None,
        MapSizes {
            ring_bytes: 4096,
            ..MapSizes::default()
        },
    )
    .expect("attach");
    let mut ring = probe.take_events().expect("ring");
    let stats = probe.take_stats().expect("stats");

    testkit::loopback::connections(CONNECTIONS as usize);
    // The last sockets reach CLOSE a round trip or two later; wait until every event is
    // accounted for (or 5 s have passed, and the assertion below says what is missing).
    let until = std::time::Instant::now() + testkit::emulation::slack(Duration::from_secs(5));
    while std::time::Instant::now() < until {
        let c = read_counters(&stats);
        if c["events_sent"] + c["ringbuf_drops"] >= 4 * CONNECTIONS {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Runs the kernel skipped (a softirq firing the tracepoint while the program already ran
    // on that CPU) produce no event; each can cost a connection's socket its two events.
    let missed = probe.missed_runs();
    drop(probe);

    let mut received = 0u64;
    while ring.next().is_some() {
        received += 1;
    }
    let counters = read_counters(&stats);
    eprintln!("received {received}, counters {counters:?}, skipped runs {missed:?}");
    let skipped = missed
        .get(&format!("missed_runs_{TRACEPOINT_PROGRAM}"))
        .copied()
        .unwrap_or(0);
    let (sent, dropped) = (counters["events_sent"], counters["ringbuf_drops"]);
    assert!(
        dropped > 0,
        "a 4 KiB ring cannot hold {CONNECTIONS} connections: {counters:?}"
    );
    assert_eq!(
        received, sent,
        "every event the kernel sent arrived: {counters:?}"
    );
    // Other traffic on the machine may add events, never remove them; a skipped run removes
    // at most two (a socket never tracked: its handshake and its lifetime).
    let short = (4 * CONNECTIONS).saturating_sub(sent + dropped + 2 * skipped);
    testkit::emulation::assert_no_event_missing(short, || {
        format!(
            "of {}: {counters:?}, skipped runs {missed:?}",
            4 * CONNECTIONS
        )
    });
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
