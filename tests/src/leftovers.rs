//! What a test run may have left on the machine.

use crate::netns::{PREFIX, ip};

/// Network namespaces and interfaces (in the root namespace) this crate's naming created.
pub fn network() -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(list) = ip(&["netns", "list"]) {
        found.extend(
            list.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(PREFIX))
                .map(|n| format!("netns {n}")),
        );
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        found.extend(
            links
                .lines()
                .filter_map(|l| l.split(':').nth(1))
                .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
                .filter(|n| n.starts_with(PREFIX))
                .map(|n| format!("link {n}")),
        );
    }
    found
}

/// Cgroups of `hopprobe check` (`hopprobe-check-<pid>`) and of labs the tests made
/// (`hopprobe-lab-hpt…`); a lab a user brought up is not a test's leftover.
pub fn cgroups() -> Vec<String> {
    let Some(root) = probe_user::names::cgroup::v2_mount() else {
        return Vec::new();
    };
    std::fs::read_dir(&root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.starts_with("hopprobe-check-")
                        || n.starts_with(&format!("hopprobe-lab-{PREFIX}"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Loaded BPF programs whose names are hopprobe's (`hp_` prefix; the kernel keeps 15 bytes).
pub fn bpf_programs() -> Vec<String> {
    aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|n| n.starts_with("hp_"))
        .collect()
}

/// Everything above, for a single assertion at the end of a test.
pub fn all() -> Vec<String> {
    let mut found = network();
    found.extend(cgroups().into_iter().map(|c| format!("cgroup {c}")));
    found.extend(
        bpf_programs()
            .into_iter()
            .map(|p| format!("bpf program {p}")),
    );
    found
}

/// What hopprobe may leave on the interfaces of network namespace `netns`, read from the
/// kernel with `tc` (netlink), not from hopprobe: clsact qdiscs (`qdisc <dev>`) and BPF filters
/// named `hp_…` (`filter <dev> <direction> <program>`). TCX links hold programs and show in
/// [`bpf_programs`].
pub fn tc(netns: &str) -> Vec<String> {
    let tc = |args: &[&str]| -> serde_json::Value {
        let mut full = vec!["netns", "exec", netns, "tc", "-j"];
        full.extend_from_slice(args);
        let out = ip(&full).unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tc's JSON ({e}): {out}"))
    };
    let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let mut found = Vec::new();
    for q in list(&tc(&["qdisc", "show"])) {
        if q["kind"] == "clsact" {
            let dev = q["dev"].as_str().unwrap_or("?").to_owned();
            found.push(format!("qdisc {dev}"));
            for direction in ["ingress", "egress"] {
                for f in list(&tc(&["filter", "show", "dev", &dev, direction])) {
                    if let Some(name) = f["options"]["bpf_name"].as_str()
                        && name.starts_with("hp_")
                    {
                        found.push(format!("filter {dev} {direction} {name}"));
                    }
                }
            }
        }
    }
    found
}

/// hopprobe's programs as bpftool lists them (`hp_…`): the kernel's view, independent of aya.
pub fn bpftool_programs() -> Vec<String> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .unwrap_or_else(|e| panic!("bpftool: {e}"));
    assert!(out.status.success(), "bpftool prog show: {out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| n.starts_with("hp_"))
        .map(str::to_owned)
        .collect()
}
