//! Where each eBPF program's time goes (`BENCH_PERF=1 cargo xtask bench-probe`): `perf record
//! -a -g` over a c = 1 run, each sample with one of hopprobe's programs on its stack set to
//! that program (the outermost `bpf_prog_<tag>_hp_*` frame: the entry program, not the
//! subprogram it called) and to what it was doing: its own instructions, or the kernel
//! function it called (a map lookup, an insert or delete, the clock, ...). Multiplied by the
//! program's ns per run from `--bpf-stats` in the same run, each share becomes ns per run: the
//! instruction sequences that keep a program above three times its hook's floor, measured.

use std::collections::BTreeMap;

/// What a program was doing when sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Work {
    /// Its own instructions (loads from map values included).
    Own,
    /// Hash and LRU map lookups (the verifier inlines the call to `__htab_map_lookup_elem`).
    Lookup,
    /// Inserts into and deletes from hash and LRU maps (the LRU's free lists included).
    InsertDelete,
    /// `bpf_ktime_get_ns`.
    Clock,
    /// Packet bytes (`bpf_skb_load_bytes`).
    Packet,
    /// The socket's cookie and cgroup, `bpf_sk_fullsock`, the current task's cgroup.
    Socket,
    /// Ring buffer reserve, submit, output and query.
    Ring,
    /// Anything else in the kernel under the program.
    Other,
}

impl Work {
    pub const ALL: [Work; 8] = [
        Work::Own,
        Work::Lookup,
        Work::InsertDelete,
        Work::Clock,
        Work::Packet,
        Work::Socket,
        Work::Ring,
        Work::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Work::Own => "own",
            Work::Lookup => "lookup",
            Work::InsertDelete => "ins/del",
            Work::Clock => "clock",
            Work::Packet => "packet",
            Work::Socket => "socket",
            Work::Ring => "ring",
            Work::Other => "other",
        }
    }
}

/// Kernel functions (leading underscores aside) by the work they belong to, a prefix naming
/// a family; the first match from the program's call downwards decides, so `memcmp` under an
/// update counts as the update's.
const KERNEL: &[(&str, Work)] = &[
    ("htab_lru_map_update_elem", Work::InsertDelete),
    ("htab_lru_map_delete_elem", Work::InsertDelete),
    ("htab_map_update_elem", Work::InsertDelete),
    ("htab_map_delete_elem", Work::InsertDelete),
    ("htab_percpu_map_update_elem", Work::InsertDelete),
    ("htab_lru_percpu_map_update_elem", Work::InsertDelete),
    ("bpf_lru_", Work::InsertDelete),
    ("htab_map_lookup_elem", Work::Lookup),
    ("htab_lru_map_lookup_elem", Work::Lookup),
    ("htab_percpu_map_lookup_elem", Work::Lookup),
    ("lookup_nulls_elem_raw", Work::Lookup),
    ("lookup_elem_raw", Work::Lookup),
    ("htab_map_hash", Work::Lookup),
    ("bpf_ktime_get_ns", Work::Clock),
    ("ktime_get_mono_fast_ns", Work::Clock),
    ("read_tsc", Work::Clock),
    ("bpf_skb_load_bytes", Work::Packet),
    ("bpf_get_socket_cookie", Work::Socket),
    ("sock_gen_cookie", Work::Socket),
    ("bpf_skb_cgroup_id", Work::Socket),
    ("bpf_sk_fullsock", Work::Socket),
    ("bpf_get_current_cgroup_id", Work::Socket),
    ("bpf_ringbuf_", Work::Ring),
];

fn kernel_work(function: &str) -> Option<Work> {
    let function = function.trim_start_matches('_');
    KERNEL
        .iter()
        .find(|(name, _)| function.starts_with(name))
        .map(|&(_, w)| w)
}

/// The program a JIT symbol names (`bpf_prog_<tag>_<name>`), if it is one.
fn bpf_program(symbol: &str) -> Option<&str> {
    let rest = symbol.strip_prefix("bpf_prog_")?;
    let (tag, name) = rest.split_once('_')?;
    tag.bytes().all(|b| b.is_ascii_hexdigit()).then_some(name)
}

/// Samples per entry program (`hp_*`) and work, from `perf script -F ip,sym` output: one
/// frame per line (address, symbol), leaf first, samples separated by blank lines.
pub fn attribute(script: &str) -> BTreeMap<String, BTreeMap<Work, u64>> {
    let mut out: BTreeMap<String, BTreeMap<Work, u64>> = BTreeMap::new();
    for sample in script.split("\n\n") {
        let frames: Vec<&str> = sample
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                f.next()?;
                // `sym+0x1a`, with `-F ip,sym` usually without the offset.
                Some(f.next()?.split('+').next().unwrap_or(""))
            })
            .collect();
        let Some(entry) = frames
            .iter()
            .rev()
            .filter_map(|s| bpf_program(s))
            .find(|name| name.starts_with("hp_"))
        else {
            continue;
        };
        let innermost_bpf = frames.iter().position(|s| bpf_program(s).is_some());
        let work = match innermost_bpf {
            Some(0) => Work::Own,
            // The kernel frames between the leaf and the program, the program's call first.
            Some(i) => frames[..i]
                .iter()
                .rev()
                .find_map(|f| kernel_work(f))
                .unwrap_or(Work::Other),
            None => continue,
        };
        *out.entry(entry.to_owned())
            .or_default()
            .entry(work)
            .or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "
\tffffffff81533bd1 lookup_nulls_elem_raw
\tffffffffc002d269 bpf_prog_5a1eb3ffccc6fa16_track
\tffffffffc002cfe5 bpf_prog_a4f6886dce4e2a21_hp_skb_out
\tffffffff8156d6c1 __bpf_prog_run_save_cb

\tffffffff81533bd1 memcmp
\tffffffff81533bd1 lookup_nulls_elem_raw
\tffffffff81533bd1 htab_lru_map_update_elem
\tffffffffc002cfe5 bpf_prog_a4f6886dce4e2a21_hp_skb_out

\tffffffffc002cfe5 bpf_prog_a4f6886dce4e2a21_pass
\tffffffffc002cfe5 bpf_prog_a4f6886dce4e2a21_hp_tc_pod_in

\tffffffff8130f5d3 read_tsc
\tffffffff814317fd ktime_get_mono_fast_ns
\tffffffffc002ce25 bpf_prog_a4f6886dce4e2a21_hp_skb_out

\tffffffff8130f5d3 some_unrelated_function
\tffffffffc002ce25 bpf_prog_a4f6886dce4e2a21_hp_skb_in

\tffffffff81533bd1 __htab_map_lookup_elem
\tffffffffc002ce25 bpf_prog_a4f6886dce4e2a21_hp_sock_recv

\tffffffff81533bd1 __sock_gen_cookie
\tffffffffc002ce25 bpf_prog_a4f6886dce4e2a21_hp_sock_recv

\tffffffff8224379b pv_native_safe_halt
\tffffffff822452b5 default_idle

\tffffffff8130f5d3 read_tsc
\tffffffffc002ce25 bpf_prog_a4f6886dce4e2a21_floor_cgroup_skb
";

    #[test]
    fn samples_go_to_their_entry_program_and_the_call_it_made() {
        let by = attribute(SCRIPT);
        let skb_out = &by["hp_skb_out"];
        assert_eq!(skb_out.get(&Work::Lookup), Some(&1), "{by:?}");
        // memcmp and the lookup inside an update are the update's.
        assert_eq!(skb_out.get(&Work::InsertDelete), Some(&1), "{by:?}");
        assert_eq!(skb_out.get(&Work::Clock), Some(&1), "{by:?}");
        // A subprogram's own instructions are its entry program's.
        assert_eq!(by["hp_tc_pod_in"].get(&Work::Own), Some(&1), "{by:?}");
        assert_eq!(by["hp_skb_in"].get(&Work::Other), Some(&1), "{by:?}");
        // Leading underscores aside: the verifier's inlined lookup, the cookie's generator.
        assert_eq!(by["hp_sock_recv"].get(&Work::Lookup), Some(&1), "{by:?}");
        assert_eq!(by["hp_sock_recv"].get(&Work::Socket), Some(&1), "{by:?}");
        // Neither idle time nor another tool's program is anyone's.
        assert_eq!(by.len(), 4, "{by:?}");
    }
}
