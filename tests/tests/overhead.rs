//! What hopprobe costs the traffic it watches: when the kernel wakes its reader, and the
//! per-program run time `--bpf-stats` reports.

use std::{net::TcpListener, os::fd::AsRawFd, sync::mpsc, time::Duration};

use probe_user::attach::{
    ebpf::{MapSizes, RingWakeup},
    probe::Probe,
};
use testkit::{
    leftovers,
    loopback::{connections, round_trips},
    probe::measure,
};

/// 16 KiB: an eighth of it (2 KiB) is 16 exchange records (128 bytes each with their
/// header); a round trip makes 2.
const RING: u32 = 16 * 1024;

fn exchanges(n: u64) {
    round_trips(TcpListener::bind("127.0.0.1:0").expect("bind"), n);
}

/// A thread blocked on the ring's fd, as hopprobe's reader is; it reports when the kernel
/// wakes it (or when 10 s have passed). Edge-triggered epoll reports wake-ups only, not data
/// already there: records from elsewhere on the machine that arrived since the ring was
/// emptied cannot end the wait, only a wake-up the programs asked for.
fn waiter(fd: i32) -> mpsc::Receiver<bool> {
    // SAFETY: plain syscalls on an fd this function creates and on the ring's fd, which
    // outlives the waits (the tests hold the ring until they have the answer).
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(
        epfd >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0,
    };
    // SAFETY: as above; `ev` is valid for the call.
    let r = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert_eq!(r, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    // Adding reports data already present once; take that report now.
    let mut out = [libc::epoll_event { events: 0, u64: 0 }];
    // SAFETY: `out` has room for the one event asked for.
    unsafe { libc::epoll_wait(epfd, out.as_mut_ptr(), 1, 0) };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: as above.
        let n = unsafe { libc::epoll_wait(epfd, out.as_mut_ptr(), 1, 10_000) };
        // SAFETY: closing the epoll fd this thread owns now.
        unsafe { libc::close(epfd) };
        let _ = tx.send(n > 0);
    });
    rx
}

/// Attaches with a small exchange ring and empties it.
fn quiet_ring(wakeup: RingWakeup) -> (Probe, aya::maps::RingBuf<aya::maps::MapData>) {
    let mut probe = Probe::attach(
        None,
        MapSizes {
            exchange_ring_bytes: RING,
            wakeup,
            ..MapSizes::default()
        },
    )
    .expect("attach");
    let mut ring = probe.take_exchanges().expect("ring");
    // Whatever else the machine did while attaching.
    std::thread::sleep(Duration::from_millis(100));
    while ring.next().is_some() {}
    (probe, ring)
}

#[test]
fn batched_wakeups_wait_for_an_eighth_of_the_ring() {
    if !testkit::root::available("batched_wakeups_wait_for_an_eighth_of_the_ring") {
        return;
    }
    let (probe, mut ring) = quiet_ring(RingWakeup::Batched);
    let woken = waiter(ring.as_raw_fd());
    // 2 records, far below an eighth: the kernel keeps them without waking anyone.
    exchanges(1);
    assert_eq!(
        woken.recv_timeout(Duration::from_secs(1)),
        Err(mpsc::RecvTimeoutError::Timeout),
        "one round trip's records woke the reader"
    );
    // 20 more cross the eighth.
    exchanges(10);
    assert_eq!(
        woken.recv_timeout(testkit::emulation::slack(Duration::from_secs(2))),
        Ok(true),
        "an eighth of the ring did not wake the reader"
    );
    let mut kept = 0;
    while ring.next().is_some() {
        kept += 1;
    }
    testkit::emulation::assert_no_event_missing(22u64.saturating_sub(kept), || {
        format!("{kept} records for 11 round trips")
    });
    drop(probe);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

#[test]
fn each_wakes_the_reader_at_the_first_record() {
    if !testkit::root::available("each_wakes_the_reader_at_the_first_record") {
        return;
    }
    let (probe, ring) = quiet_ring(RingWakeup::Each);
    let woken = waiter(ring.as_raw_fd());
    exchanges(1);
    assert_eq!(
        woken.recv_timeout(testkit::emulation::slack(Duration::from_secs(1))),
        Ok(true),
        "the first record did not wake the reader"
    );
    drop(probe);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

fn stats_sysctl() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default()
}

#[test]
fn bpf_stats_reports_each_programs_runs_and_time() {
    if !testkit::root::available("bpf_stats_reports_each_programs_runs_and_time") {
        return;
    }
    let bin = testkit::probe::binary();
    let sysctl_before = stats_sysctl();
    let with = measure(&bin, &["--bpf-stats"], || connections(20));
    let programs = with.summary["programs"].as_array().expect("programs");
    let set_state = programs
        .iter()
        .find(|p| p["program"] == "hp_sock_set_state")
        .unwrap_or_else(|| panic!("no hp_sock_set_state in {programs:?}"));
    // 20 connections, two sockets each, at least three state changes per socket.
    assert!(
        set_state["runs"].as_u64().expect("runs") >= 120,
        "{set_state}"
    );
    assert!(
        set_state["run_time_ns"].as_u64().expect("ns") > 0,
        "{set_state}"
    );
    // Statistics are on only while hopprobe holds them.
    assert_eq!(stats_sysctl(), sysctl_before);

    let without = measure(&bin, &[], || connections(5));
    assert!(
        without.summary.get("programs").is_none(),
        "{}",
        without.summary
    );
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

/// `--bpf-floor`: a do-nothing program runs after ours on each hook, reported under the hook's
/// name; it must run as often as ours and cost less per run, and go when hopprobe goes.
#[test]
fn bpf_floor_runs_a_do_nothing_program_beside_ours() {
    if !testkit::root::available("bpf_floor_runs_a_do_nothing_program_beside_ours") {
        return;
    }
    let bin = testkit::probe::binary();
    let with = measure(&bin, &["--bpf-stats", "--bpf-floor"], || connections(20));
    let programs = with.summary["programs"].as_array().expect("programs");
    let cost = |name: &str| {
        let p = programs
            .iter()
            .find(|p| p["program"] == name)
            .unwrap_or_else(|| panic!("no {name} in {programs:?}"));
        let runs = p["runs"].as_u64().expect("runs");
        (
            runs,
            p["run_time_ns"].as_u64().expect("ns") as f64 / runs as f64,
        )
    };
    for (ours, floor) in [
        ("hp_sock_set_state", "floor/tracepoint"),
        ("hp_skb_out", "floor/cgroup_skb"),
    ] {
        let ((our_runs, our_ns), (floor_runs, floor_ns)) = (cost(ours), cost(floor));
        // The tracepoint's floor sits on inet_sock_set_state only; cgroup_skb's on both ways.
        assert!(
            floor_runs >= our_runs,
            "{floor} {floor_runs} runs, {ours} {our_runs}"
        );
        assert!(
            floor_ns < our_ns,
            "{floor} {floor_ns} ns per run, {ours} {our_ns}"
        );
    }
    assert!(
        !programs.iter().any(|p| p["program"]
            .as_str()
            .is_some_and(|n| n.starts_with("hp_check_"))),
        "a floor under its program's name: {programs:?}"
    );
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

#[test]
fn bpf_floor_needs_bpf_stats() {
    let out = std::process::Command::new(testkit::probe::binary())
        .args(["run", "--bpf-floor"])
        .output()
        .expect("hopprobe runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--bpf-stats"), "{stderr}");
}
