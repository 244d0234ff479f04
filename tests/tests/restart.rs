//! A hopprobe killed with SIGKILL cannot detach. Its cgroup links, TCX links and perf events
//! go with its fds; on kernels before 6.6 its TC filters are netlink objects and stay, with
//! the clsact qdiscs it added. The next hopprobe on the node removes what the killed one left
//! before it attaches, attaches once, measures, and leaves nothing when it stops. A second
//! hopprobe on a node where one is attached is refused.

use std::{path::Path, process::Command, time::Duration};

use nix::sys::signal::Signal;
use testkit::{
    lab::{Lab, config::LabConfig},
    leftovers,
    probe::{Hopprobe, measure},
};

const REQUESTS: usize = 20;

#[test]
fn a_killed_hopprobes_leftovers_go_with_the_next_one() {
    if !testkit::lab::available("a_killed_hopprobes_leftovers_go_with_the_next_one") {
        return;
    }
    let name = format!("hpt{}k", std::process::id() % 100_000);
    let lab = Lab::up(
        LabConfig::new(&name),
        Path::new(env!("CARGO_BIN_EXE_hoplab")),
    )
    .expect("lab up");
    let node = lab.state.node_netns.clone();
    let netns = format!("/run/netns/{node}");
    let bin = testkit::probe::binary();
    let mut first = Hopprobe::start(&bin, &["run", "--netns", &netns, "--duration", "120s"]);
    let attached = leftovers::tc(&node);

    let second = Command::new(&bin)
        .args(["run", "--netns", &netns, "--duration", "5s"])
        .env("NO_COLOR", "1")
        .output()
        .expect("runs");
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{said}");
    assert!(said.contains("another hopprobe is attached"), "{said}");
    assert_eq!(leftovers::tc(&node), attached, "the refused one changed TC");

    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10));
    let left = leftovers::tc(&node);
    let netlink = left.iter().any(|l| l.starts_with("filter "));
    eprintln!("after SIGKILL: {left:?}");
    // What the kernel version decides: TCX links (6.6+) leave nothing; filters stay before.
    assert_eq!(
        left, attached,
        "SIGKILL cannot change what hopprobe attached"
    );
    let kept = leftovers::bpf_programs();
    if netlink {
        assert!(
            !kept.is_empty() && kept.iter().all(|p| p.starts_with("hp_tc_")),
            "only the filters' programs outlive their process: {kept:?}"
        );
    } else {
        assert_eq!(kept, Vec::<String>::new(), "links go with their fds");
    }

    let mut during = Vec::new();
    let measured = measure(&bin, &["--netns", &netns], || {
        during = leftovers::tc(&node);
        for _ in 0..REQUESTS {
            let resp = lab.get(lab.nodeport(), "/productpage").expect("GET");
            assert_eq!(resp.status(), Some(200));
        }
    });
    // Attached once: the same filters as the first run, none twice.
    assert_eq!(during, attached, "{}", measured.stderr);
    if netlink {
        assert!(
            measured
                .stderr
                .contains("removed TC filters an earlier hopprobe left"),
            "{}",
            measured.stderr
        );
    }
    let hops = measured.summary["hops"].as_array().expect("hops").clone();
    let productpage = &lab.state.pods[0];
    let delivered = hops
        .iter()
        .find(|h| h["hop"] == "pod_delivery" && h["interface"] == productpage.host_veth.as_str())
        .and_then(|h| h["count"].as_u64())
        .unwrap_or(0);
    assert!(
        delivered >= 2 * REQUESTS as u64,
        "pod_delivery at productpage {delivered}: {:#}",
        measured.summary["hops"]
    );
    assert_eq!(leftovers::tc(&node), Vec::<String>::new());
    assert_eq!(leftovers::bpf_programs(), Vec::<String>::new());
    drop(lab);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
