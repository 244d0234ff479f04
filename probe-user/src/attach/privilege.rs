//! Whether this process may load and attach eBPF programs.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

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

/// `None` when the capabilities suffice, otherwise what is missing in words.
pub fn missing(caps: u64) -> Option<String> {
    if has(caps, CAP_SYS_ADMIN) {
        return None;
    }
    let lacking: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|(c, _)| !has(caps, *c))
    .map(|(_, n)| n)
    .collect();
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
    fn bpf_perfmon_net_admin_suffice() {
        assert_eq!(
            missing((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)),
            None
        );
    }
}
