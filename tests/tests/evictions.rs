//! LRU maps are bounded by `--max-sockets`, and what the kernel evicts from them is counted.

use std::{
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use probe_common::stats::{LRU_CONNS, LRU_MAPS};
use probe_user::attach::{
    ebpf::{MIN_MAP_ENTRIES, MapSizes},
    evictions::LruMaps,
    probe::{Probe, read_counters},
};
use testkit::leftovers;

/// Connections held open at once: both ends are tracked, 1400 sockets in 1024 entries.
const CONNECTIONS: usize = 700;

/// Lets this process hold a few thousand sockets.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(8192);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur as usize > 2 * CONNECTIONS + 64,
        "need {} file descriptors, the hard limit is {}",
        2 * CONNECTIONS + 64,
        lim.rlim_max
    );
}

#[test]
fn evictions_from_a_tiny_socket_map_are_counted() {
    if !testkit::root::available("evictions_from_a_tiny_socket_map_are_counted") {
        return;
    }
    raise_fd_limit();
    let max_sockets = MIN_MAP_ENTRIES;
    let mut probe = Probe::attach(
        None,
        MapSizes {
            max_sockets,
            ..MapSizes::default()
        },
    )
    .expect("attach");
    let stats = probe.take_stats().expect("stats");
    let lru = LruMaps::take(&mut probe).expect("maps");

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        (0..CONNECTIONS)
            .map(|_| listener.accept().expect("accept").0)
            .collect::<Vec<_>>()
    });
    let clients: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let servers = server.join().expect("server");
    // While all are open, the map holds no more than its bound.
    let present = lru.present();
    assert!(
        present[LRU_CONNS as usize] <= u64::from(max_sockets),
        "{present:?}"
    );
    drop(clients);
    drop(servers);
    // Every socket of ours closes within a few round trips; wait until each close is counted
    // or the counts stop moving. (On 6.1 they settle a little short of 1400, and waiting for
    // the full count cost the VM matrix 120 s.) Longer on an emulated CPU (the VM matrix),
    // where closing 1400 sockets took over 5 s.
    let until = Instant::now() + testkit::emulation::slack(Duration::from_secs(5));
    let settled = testkit::emulation::slack(Duration::from_millis(500));
    let must_go = (2 * CONNECTIONS) as u64 - u64::from(max_sockets);
    let (mut last, mut moved) = (0, Instant::now());
    while Instant::now() < until {
        let c = read_counters(&stats);
        let closed = c["lru_conns_deleted"] + c["untracked_close"];
        if closed >= (2 * CONNECTIONS) as u64 {
            break;
        }
        if closed != last {
            (last, moved) = (closed, Instant::now());
        } else if closed > 0 && moved.elapsed() > settled {
            eprintln!("closes counted settled at {closed} of {}", 2 * CONNECTIONS);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(probe);

    let mut c = read_counters(&stats);
    lru.add_evictions(&mut c);
    let line: Vec<String> = LRU_MAPS
        .iter()
        .map(|m| {
            let m = m.to_ascii_lowercase();
            format!(
                "{m}: +{} -{} evicted {}",
                c[format!("lru_{m}_inserted").as_str()],
                c[format!("lru_{m}_deleted").as_str()],
                c[format!("evicted_{m}").as_str()]
            )
        })
        .collect();
    eprintln!(
        "{}; untracked_close {}",
        line.join("; "),
        c["untracked_close"]
    );
    let (evicted, untracked) = (c["evicted_conns"], c["untracked_close"]);
    assert!(
        c["lru_conns_inserted"] >= (2 * CONNECTIONS) as u64,
        "every socket was inserted: {c:?}"
    );
    // 1400 sockets open at once in 1024 entries: at least 376 had to go, and the maps keyed by
    // socket that are filled at ESTABLISHED lost as many.
    for map in ["evicted_conns", "evicted_sk_flow", "evicted_flow_sock"] {
        assert!(c[map] >= must_go, "{map}: {c:?}");
    }
    // Independent evidence: a socket that closes unseen had its entry evicted (or was opened
    // before hopprobe attached, a few at most). The converse does not hold: an evicted socket
    // that changes state again before closing is tracked anew (CI saw 286–384 of 384 close
    // unseen), so only this direction is exact.
    assert!(
        untracked >= 1 && untracked <= evicted + 20,
        "evicted {evicted} vs closed unseen {untracked}: {c:?}"
    );
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
