//! Whether this process may load and attach eBPF programs.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// A capability: its bit in the effective set and the name messages give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    bit: u32,
    pub name: &'static str,
}

pub const BPF: Cap = Cap {
    bit: CAP_BPF,
    name: "CAP_BPF",
};
const PERFMON: Cap = Cap {
    bit: CAP_PERFMON,
    name: "CAP_PERFMON",
};
const NET_ADMIN: Cap = Cap {
    bit: CAP_NET_ADMIN,
    name: "CAP_NET_ADMIN",
};
const SYS_ADMIN: Cap = Cap {
    bit: CAP_SYS_ADMIN,
    name: "CAP_SYS_ADMIN",
};

/// Effective capability set from `/proc/self/status`.
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// The capabilities beside CAP_BPF (which every hook needs, to create maps and load programs)
/// that the kernel asks for each hook, from its source and checked per kernel by the tests
/// (docs/deploy.md#capabilities): tracing programs and perf events need CAP_PERFMON; TC, cgroup
/// and sock_ops attachments CAP_NET_ADMIN; turning run-time statistics on CAP_SYS_ADMIN.
pub fn hook_needs(hook: crate::attach::programs::Hook) -> &'static [Cap] {
    use crate::attach::programs::Hook;
    match hook {
        Hook::Tracepoint | Hook::Kprobe | Hook::Fentry => &[PERFMON],
        Hook::TcClsact | Hook::CgroupSkb | Hook::SockOps => &[NET_ADMIN],
        Hook::RingBuffer => &[],
        Hook::BpfStats => &[SYS_ADMIN],
    }
}

/// The names of `needed` not in `caps`; none with CAP_SYS_ADMIN, which stands for all.
pub fn lacking(caps: u64, needed: &[Cap]) -> Vec<&'static str> {
    if has(caps, CAP_SYS_ADMIN) {
        return Vec::new();
    }
    needed
        .iter()
        .filter(|c| !has(caps, c.bit))
        .map(|c| c.name)
        .collect()
}

/// `kernel.perf_event_paranoid`, when readable.
pub fn perf_event_paranoid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Why `perf_event_open` (every tracepoint, kprobe) will be refused although CAP_PERFMON is
/// there: Debian's kernels add a level 3 to `kernel.perf_event_paranoid`, their default, at
/// which only CAP_SYS_ADMIN may open perf events (EACCES otherwise). Upstream kernels, EKS's
/// among them, stop at 2, where CAP_PERFMON is enough.
pub fn perf_paranoid_blocks(caps: u64) -> Option<String> {
    paranoid_blocks(caps, perf_event_paranoid()?)
}

fn paranoid_blocks(caps: u64, level: i32) -> Option<String> {
    (level >= 3 && !has(caps, CAP_SYS_ADMIN)).then(|| {
        format!(
            "kernel.perf_event_paranoid is {level}: above 2 (Debian's kernels) perf_event_open \
             needs CAP_SYS_ADMIN, not only CAP_PERFMON; `sysctl kernel.perf_event_paranoid=2` \
             on the node, or run privileged"
        )
    })
}

/// `None` when the capabilities suffice, otherwise what is missing in words.
pub fn missing(caps: u64) -> Option<String> {
    let lacking = lacking(caps, &[BPF, PERFMON, NET_ADMIN]);
    (!lacking.is_empty()).then(|| {
        format!(
            "missing privilege: hopprobe needs root or {} (effective set {caps:#x})",
            lacking.join(" + ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_line() {
        let status = "Name:\tx\nCapInh:\t0\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
    }

    #[test]
    fn root_or_sys_admin_is_enough() {
        assert_eq!(missing(0x1ff_ffff_ffff), None);
        assert_eq!(missing(1 << CAP_SYS_ADMIN), None);
    }

    #[test]
    fn names_what_is_missing() {
        let msg = missing(1 << CAP_BPF).expect("not enough");
        assert!(msg.contains("CAP_PERFMON + CAP_NET_ADMIN"), "{msg}");
        assert!(!msg.contains("CAP_BPF +"), "{msg}");
        assert!(missing(0).expect("nothing").contains("CAP_BPF"));
    }

    #[test]
    fn each_hook_names_what_it_lacks() {
        use crate::attach::programs::Hook;
        let caps = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert_eq!(lacking(caps, hook_needs(Hook::TcClsact)), ["CAP_NET_ADMIN"]);
        assert!(lacking(caps, hook_needs(Hook::Tracepoint)).is_empty());
        assert!(lacking(1 << CAP_SYS_ADMIN, hook_needs(Hook::BpfStats)).is_empty());
    }

    #[test]
    fn paranoid_level_3_needs_sys_admin() {
        let least = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);
        assert!(paranoid_blocks(least, 3).is_some_and(|m| m.contains("CAP_SYS_ADMIN")));
        assert_eq!(paranoid_blocks(least, 2), None);
        assert_eq!(paranoid_blocks(least | (1 << CAP_SYS_ADMIN), 3), None);
    }

    #[test]
    fn bpf_perfmon_net_admin_suffice() {
        assert_eq!(
            missing((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)),
            None
        );
    }
}
