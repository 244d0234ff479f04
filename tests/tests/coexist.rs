//! Another tool's programs on hopprobe's hooks — a TC classifier on a pod's veth (a CNI's), a
//! cgroup_skb and a sock_ops program on the cgroup hopprobe attaches to — attached before
//! hopprobe: they keep counting packets, stay in their place (first on the veth, first in the
//! cgroup), and are all still there, with their clsact qdisc, once hopprobe has stopped.
//! The stand-ins are `probe-ebpf`'s `standin` object, named `other_…`, not `hp_…`.

use std::{fs::File, path::Path, process::Command};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SchedClassifier, SockOps, TcAttachType,
        tc,
    },
    util::KernelVersion,
};
use serde_json::Value;
use testkit::{
    lab::{Lab, config::LabConfig},
    leftovers,
    netns::{ip, run_in},
    probe::measure,
};

static STANDIN: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/standin.o"));

const REQUESTS: usize = 10;

/// Runs of each stand-in: TC, cgroup_skb, sock_ops.
fn runs(ebpf: &Ebpf) -> [u64; 3] {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map("OTHER_RUNS").expect("OTHER_RUNS")).expect("per-CPU array");
    [0, 1, 2].map(|i| map.get(&i, 0).expect("slot").iter().sum())
}

fn load(lab: &Lab) {
    for _ in 0..REQUESTS {
        let resp = lab.get(lab.nodeport(), "/productpage").expect("GET");
        assert_eq!(resp.status(), Some(200));
    }
}

fn tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Program names on the veth's egress, in the order they run: the TCX chain from 6.6, the
/// clsact filters by priority before.
fn tc_order(node: &str, veth: &str) -> Vec<String> {
    if tcx() {
        let veth = veth.to_owned();
        let (_, programs) = run_in(node, move || {
            SchedClassifier::query_tcx(&veth, TcAttachType::Egress)
        })
        .expect("the node's namespace")
        .expect("TCX query");
        programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect()
    } else {
        let out = ip(&[
            "netns", "exec", node, "tc", "-j", "filter", "show", "dev", veth, "egress",
        ])
        .expect("tc");
        let filters: Value = serde_json::from_str(&out).expect("tc's JSON");
        filters
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["options"]["bpf_name"].as_str())
            .map(str::to_owned)
            .collect()
    }
}

/// Program names attached to the cgroup, per attach type, in attach order (bpftool).
fn cgroup_order(path: &Path, attach_type: &str) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(path)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool cgroup show: {out:?}");
    let list: Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["attach_type"] == attach_type)
        .filter_map(|p| p["name"].as_str())
        .map(str::to_owned)
        .collect()
}

#[test]
fn another_tools_programs_keep_working_and_their_place() {
    if !testkit::lab::available("another_tools_programs_keep_working_and_their_place") {
        return;
    }
    assert!(
        !STANDIN.is_empty(),
        "the stand-in object was not built: run `cargo xtask build-ebpf` before the tests"
    );
    let name = format!("hpt{}o", std::process::id() % 100_000);
    let lab = Lab::up(
        LabConfig::new(&name),
        Path::new(env!("CARGO_BIN_EXE_hoplab")),
    )
    .expect("lab up");
    let node = lab.state.node_netns.clone();
    let veth = lab.state.pods[0].host_veth.clone();
    let cgroup = lab.state.cgroup_root.clone();

    // The other tool, first: its qdisc before 6.6, its programs.
    let mut other = Ebpf::load(STANDIN).expect("stand-in object");
    let tc: &mut SchedClassifier = other
        .program_mut("other_tc")
        .expect("other_tc")
        .try_into()
        .expect("classifier");
    tc.load().expect("load other_tc");
    {
        let veth = veth.clone();
        run_in(&node, move || {
            if !tcx() {
                tc::qdisc_add_clsact(&veth).expect("the other tool's clsact qdisc");
            }
            tc.attach(&veth, TcAttachType::Egress).map(drop)
        })
        .expect("the node's namespace")
        .expect("attach other_tc");
    }
    let dir = File::open(&cgroup).expect("the lab's cgroup");
    let skb: &mut CgroupSkb = other
        .program_mut("other_skb")
        .expect("other_skb")
        .try_into()
        .expect("cgroup_skb");
    skb.load().expect("load other_skb");
    skb.attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
        .expect("attach other_skb");
    let ops: &mut SockOps = other
        .program_mut("other_sock_ops")
        .expect("other_sock_ops")
        .try_into()
        .expect("sock_ops");
    ops.load().expect("load other_sock_ops");
    ops.attach(&dir, CgroupAttachMode::Single)
        .expect("attach other_sock_ops");

    let before_tc = tc_order(&node, &veth);
    let before_skb = cgroup_order(&cgroup, "cgroup_inet_ingress");
    let before_ops = cgroup_order(&cgroup, "cgroup_sock_ops");
    assert_eq!(before_tc, ["other_tc"]);
    load(&lab);
    let alone = runs(&other);
    assert!(
        alone.iter().all(|&n| n > 0),
        "the stand-ins count: {alone:?}"
    );

    let netns = format!("/run/netns/{node}");
    let cgroup_arg = cgroup.to_str().expect("utf-8").to_owned();
    let mut during = (Vec::new(), Vec::new(), Vec::new());
    let mut beside = [0; 3];
    let measured = measure(
        &testkit::probe::binary(),
        &["--netns", &netns, "--cgroup-root", &cgroup_arg],
        || {
            during = (
                tc_order(&node, &veth),
                cgroup_order(&cgroup, "cgroup_inet_ingress"),
                cgroup_order(&cgroup, "cgroup_sock_ops"),
            );
            let start = runs(&other);
            load(&lab);
            let end = runs(&other);
            beside = [0, 1, 2].map(|i| end[i] - start[i]);
        },
    );
    let context = format!("{during:?}\n{}", measured.stderr);
    // First, then hopprobe's: on the veth and in the cgroup.
    assert_eq!(
        during.0.first().map(String::as_str),
        Some("other_tc"),
        "{context}"
    );
    assert!(
        during.0.iter().any(|n| n.starts_with("hp_tc_")),
        "{context}"
    );
    for (list, theirs, ours) in [
        (&during.1, &before_skb, "hp_skb_in"),
        (&during.2, &before_ops, "hp_sock_ops"),
    ] {
        assert_eq!(list.first(), theirs.first(), "{context}");
        assert!(list.iter().any(|n| n == ours), "{ours}: {context}");
    }
    // The same requests, the same runs, give or take a few packets' timing.
    let after_start = runs(&other);
    load(&lab);
    let after_end = runs(&other);
    let after = [0, 1, 2].map(|i| after_end[i] - after_start[i]);
    let first = alone;
    for i in 0..3 {
        for (when, n) in [("beside hopprobe", beside[i]), ("after it", after[i])] {
            assert!(
                n as f64 >= 0.8 * first[i] as f64,
                "stand-in {i} ran {n} times {when}, {} alone: {context}",
                first[i]
            );
        }
    }
    // hopprobe measured the same packets.
    let hops = measured.summary["hops"].as_array().expect("hops");
    assert!(
        hops.iter().any(|h| h["hop"] == "pod_delivery"
            && h["interface"] == veth.as_str()
            && h["count"]
                .as_u64()
                .is_some_and(|c| c >= 2 * REQUESTS as u64)),
        "{context}"
    );
    // All of the other tool's still there, in place; nothing of hopprobe's.
    assert_eq!(tc_order(&node, &veth), before_tc);
    assert_eq!(cgroup_order(&cgroup, "cgroup_inet_ingress"), before_skb);
    assert_eq!(cgroup_order(&cgroup, "cgroup_sock_ops"), before_ops);
    if !tcx() {
        assert!(
            leftovers::tc(&node).contains(&format!("qdisc {veth}")),
            "the other tool's clsact qdisc went: {:?}",
            leftovers::tc(&node)
        );
    }
    assert_eq!(leftovers::bpf_programs(), Vec::<String>::new());
    drop(other);
    drop(lab);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
