//! Every eBPF program hopprobe attaches, in one table: what it measures, the hook it runs on,
//! whether hopprobe can run without it, and the tracepoint fields it reads. `plan` decides from
//! it, `probe` and `datapath` attach from it, `check` prints it.

use aya::programs::{CgroupSkbAttachType, TcAttachType};
use probe_common::layout::{
    Tracepoint,
    sock::{inet_sock_set_state, sock_recv_length},
    syscalls::{
        SYS_ENTER_ACCEPT, SYS_ENTER_ACCEPT4, SYS_ENTER_CLOSE, SYS_ENTER_READ, SYS_ENTER_READV,
        SYS_ENTER_RECVFROM, SYS_ENTER_RECVMSG, SYS_EXIT_ACCEPT, SYS_EXIT_ACCEPT4, SYS_EXIT_READ,
        SYS_EXIT_READV, SYS_EXIT_RECVFROM, SYS_EXIT_RECVMSG,
    },
    tcp::{tcp_rcv_space_adjust, tcp_receive_reset, tcp_retransmit_skb, tcp_send_reset},
};
use serde::Serialize;

/// A hook type, as `hopprobe check` proves it by attaching a do-nothing program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Tracepoint,
    TcClsact,
    CgroupSkb,
    SockOps,
    RingBuffer,
    Kprobe,
    Fentry,
    BpfStats,
}

impl Hook {
    pub const ALL: [Hook; 8] = [
        Hook::Tracepoint,
        Hook::TcClsact,
        Hook::CgroupSkb,
        Hook::SockOps,
        Hook::RingBuffer,
        Hook::Kprobe,
        Hook::Fentry,
        Hook::BpfStats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Tracepoint => "tracepoint",
            Hook::TcClsact => "tc_clsact",
            Hook::CgroupSkb => "cgroup_skb",
            Hook::SockOps => "sock_ops",
            Hook::RingBuffer => "ring_buffer",
            Hook::Kprobe => "kprobe",
            Hook::Fentry => "fentry",
            Hook::BpfStats => "bpf_stats",
        }
    }

    /// The core hop measurements use only hooks that exist here and on EKS kernels; kprobe,
    /// fentry and run-time statistics are optional accelerations and diagnostics.
    pub fn required(self) -> bool {
        matches!(
            self,
            Hook::Tracepoint | Hook::TcClsact | Hook::CgroupSkb | Hook::SockOps | Hook::RingBuffer
        )
    }
}

/// Which interfaces a TC program goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iface {
    /// The node's uplink (default route, or `--uplink`).
    Uplink,
    /// The host side of pod veths (`--pod-ifaces`).
    PodVeth,
}

/// Which way packets go past a cgroup or TC hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn cgroup_skb(self) -> CgroupSkbAttachType {
        match self {
            Direction::Ingress => CgroupSkbAttachType::Ingress,
            Direction::Egress => CgroupSkbAttachType::Egress,
        }
    }

    pub fn tc(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookSpec {
    /// Every tracepoint listed (one program serves several syscalls).
    Tracepoints(&'static [Tracepoint]),
    /// The cgroup v2 root, one direction.
    CgroupSkb(Direction),
    /// The cgroup v2 root.
    SockOps,
    /// Each interface of a kind, one direction (attached per interface by `datapath`).
    Tc(Iface, Direction),
}

impl HookSpec {
    pub fn hook(self) -> Hook {
        match self {
            HookSpec::Tracepoints(_) => Hook::Tracepoint,
            HookSpec::CgroupSkb(_) => Hook::CgroupSkb,
            HookSpec::SockOps => Hook::SockOps,
            HookSpec::Tc(..) => Hook::TcClsact,
        }
    }

    /// The hook as `run`'s summary names it.
    pub fn name(self) -> &'static str {
        match self {
            HookSpec::Tracepoints(_) => "tracepoint",
            HookSpec::CgroupSkb(Direction::Ingress) => "cgroup_skb/ingress",
            HookSpec::CgroupSkb(Direction::Egress) => "cgroup_skb/egress",
            HookSpec::SockOps => "sock_ops",
            HookSpec::Tc(_, Direction::Ingress) => "tc/ingress",
            HookSpec::Tc(_, Direction::Egress) => "tc/egress",
        }
    }

    /// The do-nothing program `--bpf-floor` attaches beside this hook's, and the name its cost
    /// is reported under.
    pub fn floor(self) -> Floor {
        match self {
            HookSpec::Tracepoints(_) => FLOORS[0],
            HookSpec::CgroupSkb(_) => FLOORS[1],
            HookSpec::SockOps => FLOORS[2],
            HookSpec::Tc(..) => FLOORS[3],
        }
    }

    pub fn tracepoints(self) -> &'static [Tracepoint] {
        match self {
            HookSpec::Tracepoints(tps) => tps,
            _ => &[],
        }
    }
}

/// One of several ways of seeing the same thing: of the ways of a group, the first whose
/// programs all fit the kernel is attached and the others stand by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Way {
    /// `sock:sock_recv_length` (Linux 6.12+): one program that knows the socket.
    SockRecvLength,
    /// Syscall tracepoints (every kernel): `accept` maps the fd to its flow, reads mark the
    /// first read, `close` forgets the fd (see `probe-ebpf/src/syscalls.rs`).
    SyscallReads,
}

impl Way {
    /// Ways of seeing a process read a request (`--app-reads`), in order of preference.
    pub const APP_READS: [Way; 2] = [Way::SockRecvLength, Way::SyscallReads];

    pub fn name(self) -> &'static str {
        match self {
            Way::SockRecvLength => "sock_recv_length",
            Way::SyscallReads => "the syscall tracepoints",
        }
    }
}

/// Without any way of seeing reads (see `Way::APP_READS`).
pub const WITHOUT_APP_READS: &str = "no hook sees reads but tcp_rcv_space_adjust";

/// Whether hopprobe runs without a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `run` fails without it.
    Required,
    /// `run` goes on without it, without what `without` says.
    Optional { without: &'static str },
    /// One way of seeing something ([`Way`]); one of its group is attached.
    OneOf(Way),
}

impl Need {
    /// As `check` prints it: `reads #N` is the Nth way of seeing reads in order of preference.
    pub fn name(self) -> &'static str {
        match self {
            Need::Required => "required",
            Need::Optional { .. } => "optional",
            Need::OneOf(Way::SockRecvLength) => "reads #1",
            Need::OneOf(Way::SyscallReads) => "reads #2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramSpec {
    /// Its function's name in the eBPF object.
    pub name: &'static str,
    /// What it measures.
    pub purpose: &'static str,
    pub hook: HookSpec,
    pub need: Need,
}

/// Every program's name starts with it: how hopprobe (and its tests) tell its own programs and
/// TC filters from another tool's on the same hooks.
pub const NAME_PREFIX: &str = "hp_";

pub const SET_STATE: &str = "hp_sock_set_state";
pub const SOCK_RECV: &str = "hp_sock_recv";
pub const RCV_SPACE: &str = "hp_tcp_rcv_space";
/// Attached means the syscall fallback sees reads (see `Plan::read_hook`).
pub const SYS_EXIT_RECV: &str = "hp_sys_exit_recv";

const WITHOUT_DATAPATH: &str = "no datapath hops";
const WITHOUT_EXCHANGES: &str = "no exchanges; passive handshakes timed from SYN_RECV";

/// Every program, in the order `run` attaches them and `check` lists them.
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        name: SET_STATE,
        purpose: "handshake latency and connection lifetime",
        hook: HookSpec::Tracepoints(&[inet_sock_set_state::TRACEPOINT]),
        need: Need::Required,
    },
    ProgramSpec {
        name: SOCK_RECV,
        purpose: "app queue wait: when a process reads a request (sock_recv_length, Linux 6.12+)",
        hook: HookSpec::Tracepoints(&[sock_recv_length::TRACEPOINT]),
        need: Need::OneOf(Way::SockRecvLength),
    },
    // With either way of seeing reads: it times the reads of sockets opened before hopprobe
    // attached, which neither way can name.
    ProgramSpec {
        name: RCV_SPACE,
        purpose: "app queue wait on sockets opened before hopprobe attached: tcp_recvmsg copied data",
        hook: HookSpec::Tracepoints(&[tcp_rcv_space_adjust::TRACEPOINT]),
        need: Need::Optional {
            without: "reads of sockets opened before hopprobe attached are not timed",
        },
    },
    ProgramSpec {
        name: "hp_sys_enter_accept",
        purpose: "app queue wait where sock_recv_length is missing: accept's peer address",
        hook: HookSpec::Tracepoints(&[SYS_ENTER_ACCEPT, SYS_ENTER_ACCEPT4]),
        need: Need::OneOf(Way::SyscallReads),
    },
    ProgramSpec {
        name: "hp_sys_exit_accept",
        purpose: "app queue wait (fallback): accepted fd -> socket's flow",
        hook: HookSpec::Tracepoints(&[SYS_EXIT_ACCEPT, SYS_EXIT_ACCEPT4]),
        need: Need::OneOf(Way::SyscallReads),
    },
    ProgramSpec {
        name: "hp_sys_enter_recv",
        purpose: "app queue wait (fallback): a read of an accepted fd begins",
        hook: HookSpec::Tracepoints(&[
            SYS_ENTER_READ,
            SYS_ENTER_READV,
            SYS_ENTER_RECVFROM,
            SYS_ENTER_RECVMSG,
        ]),
        need: Need::OneOf(Way::SyscallReads),
    },
    ProgramSpec {
        name: SYS_EXIT_RECV,
        purpose: "app queue wait (fallback): the read returned data: first read of the request",
        hook: HookSpec::Tracepoints(&[
            SYS_EXIT_READ,
            SYS_EXIT_READV,
            SYS_EXIT_RECVFROM,
            SYS_EXIT_RECVMSG,
        ]),
        need: Need::OneOf(Way::SyscallReads),
    },
    ProgramSpec {
        name: "hp_sys_enter_close",
        purpose: "app queue wait (fallback): forget a closed fd",
        hook: HookSpec::Tracepoints(&[SYS_ENTER_CLOSE]),
        need: Need::OneOf(Way::SyscallReads),
    },
    ProgramSpec {
        name: "hp_tcp_retransmit",
        purpose: "retransmits per cgroup",
        hook: HookSpec::Tracepoints(&[tcp_retransmit_skb::TRACEPOINT]),
        need: Need::Optional {
            without: "no retransmit counts",
        },
    },
    ProgramSpec {
        name: "hp_tcp_send_reset",
        purpose: "resets sent per cgroup",
        hook: HookSpec::Tracepoints(&[tcp_send_reset::TRACEPOINT]),
        need: Need::Optional {
            without: "no counts of resets sent",
        },
    },
    ProgramSpec {
        name: "hp_tcp_receive_reset",
        purpose: "resets received per cgroup",
        hook: HookSpec::Tracepoints(&[tcp_receive_reset::TRACEPOINT]),
        need: Need::Optional {
            without: "no counts of resets received",
        },
    },
    ProgramSpec {
        name: "hp_sock_ops",
        purpose: "smoothed RTT per cgroup and service port (RTT callbacks)",
        hook: HookSpec::SockOps,
        need: Need::Optional {
            without: "no smoothed RTT",
        },
    },
    ProgramSpec {
        name: "hp_skb_in",
        purpose: "first SYN of passive handshakes; exchanges (bytes in)",
        hook: HookSpec::CgroupSkb(Direction::Ingress),
        need: Need::Optional {
            without: WITHOUT_EXCHANGES,
        },
    },
    ProgramSpec {
        name: "hp_skb_out",
        purpose: "exchanges (bytes out); packets sent by sockets",
        hook: HookSpec::CgroupSkb(Direction::Egress),
        need: Need::Optional {
            without: WITHOUT_EXCHANGES,
        },
    },
    ProgramSpec {
        name: "hp_tc_node_in",
        purpose: "packets arriving at the node's uplink",
        hook: HookSpec::Tc(Iface::Uplink, Direction::Ingress),
        need: Need::Optional {
            without: WITHOUT_DATAPATH,
        },
    },
    ProgramSpec {
        name: "hp_tc_node_out",
        purpose: "packets leaving by the node's uplink",
        hook: HookSpec::Tc(Iface::Uplink, Direction::Egress),
        need: Need::Optional {
            without: WITHOUT_DATAPATH,
        },
    },
    // The host side of a pod's veth: its egress goes into the pod.
    ProgramSpec {
        name: "hp_tc_pod_in",
        purpose: "packets entering a pod (host veth egress)",
        hook: HookSpec::Tc(Iface::PodVeth, Direction::Egress),
        need: Need::Optional {
            without: WITHOUT_DATAPATH,
        },
    },
    ProgramSpec {
        name: "hp_tc_pod_out",
        purpose: "packets leaving a pod (host veth ingress)",
        hook: HookSpec::Tc(Iface::PodVeth, Direction::Ingress),
        need: Need::Optional {
            without: WITHOUT_DATAPATH,
        },
    },
];

/// The programs `hopprobe check` attaches to prove a hook type; they measure nothing.
pub const CHECK_PREFIX: &str = "hp_check_";

/// A do-nothing program of `check`'s that `--bpf-floor` runs after hopprobe's on a hook: its
/// run time is the least a program on that hook costs on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    pub program: &'static str,
    /// As the summary's `programs` list it.
    pub reported_as: &'static str,
}

/// One per hook type (a do-nothing program's run time does not depend on the event or the
/// direction, so one tracepoint stands for all).
pub const FLOORS: [Floor; 4] = [
    Floor {
        program: "hp_check_tracepoint",
        reported_as: "floor/tracepoint",
    },
    Floor {
        program: "hp_check_cgroup_skb",
        reported_as: "floor/cgroup_skb",
    },
    Floor {
        program: "hp_check_sock_ops",
        reported_as: "floor/sock_ops",
    },
    Floor {
        program: FLOOR_TC,
        reported_as: "floor/tc",
    },
];
/// Not `check`'s `hp_check_tc`, which ends the chain (`TC_ACT_OK`): this one hands the packet
/// on, as ours do.
pub const FLOOR_TC: &str = "hp_check_tc_next";

/// The floor a program of the table is compared with (`--bpf-floor`), by name as reported.
pub fn floor_of(program: &str) -> Option<&'static str> {
    PROGRAMS
        .iter()
        .find(|p| p.name == program)
        .map(|p| p.hook.floor().reported_as)
}

/// The name a program's cost is reported under: a floor's, or its own.
pub fn reported_name(program: &str) -> String {
    FLOORS
        .iter()
        .find(|f| f.program == program)
        .map_or_else(|| program.to_owned(), |f| f.reported_as.to_owned())
}

/// The TC programs for interfaces of kind `iface`, with their direction.
pub fn tc_programs(iface: Iface) -> impl Iterator<Item = (&'static str, TcAttachType)> {
    PROGRAMS.iter().filter_map(move |p| match p.hook {
        HookSpec::Tc(i, direction) if i == iface => Some((p.name, direction.tc())),
        _ => None,
    })
}

/// The programs of one way of seeing something.
pub fn way_programs(way: Way) -> impl Iterator<Item = &'static ProgramSpec> {
    PROGRAMS.iter().filter(move |p| p.need == Need::OneOf(way))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_are_unique_and_not_check_programs() {
        let names: BTreeSet<&str> = PROGRAMS.iter().map(|p| p.name).collect();
        assert_eq!(names.len(), PROGRAMS.len());
        assert!(names.iter().all(|n| !n.starts_with(CHECK_PREFIX)));
    }

    /// A killed hopprobe's TC filters are found by this prefix, and so are the tests' leftovers.
    #[test]
    fn every_name_has_the_prefix() {
        let tc = tc_programs(Iface::Uplink).chain(tc_programs(Iface::PodVeth));
        for name in PROGRAMS
            .iter()
            .map(|p| p.name)
            .chain(tc.map(|(n, _)| n))
            .chain([FLOOR_TC, CHECK_PREFIX])
        {
            assert!(name.starts_with(NAME_PREFIX), "{name}");
        }
    }

    #[test]
    fn every_way_has_programs_and_only_tracepoints_read_fields() {
        for way in Way::APP_READS {
            assert!(way_programs(way).next().is_some(), "{way:?}");
        }
        for p in PROGRAMS {
            let tracepoints = matches!(p.hook, HookSpec::Tracepoints(_));
            assert_eq!(!p.hook.tracepoints().is_empty(), tracepoints, "{}", p.name);
        }
        assert_eq!(tc_programs(Iface::Uplink).count(), 2);
        assert_eq!(tc_programs(Iface::PodVeth).count(), 2);
    }

    #[test]
    fn every_program_has_the_floor_of_its_hook_and_floors_are_check_programs() {
        assert_eq!(floor_of("hp_skb_out"), Some("floor/cgroup_skb"));
        assert_eq!(floor_of("hp_tc_pod_in"), Some("floor/tc"));
        assert_eq!(floor_of("hp_sock_ops"), Some("floor/sock_ops"));
        assert_eq!(floor_of("hp_tcp_rcv_space"), Some("floor/tracepoint"));
        assert_eq!(floor_of("nothing"), None);
        for f in FLOORS {
            assert!(f.program.starts_with(CHECK_PREFIX), "{f:?}");
            assert_eq!(reported_name(f.program), f.reported_as);
        }
        assert_eq!(reported_name("hp_skb_in"), "hp_skb_in");
    }

    /// The object hopprobe embeds, as `ebpf::load` takes it.
    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf.o"));

    /// Every program of the eBPF object is in the table (or is one of `check`'s), and every
    /// program of the table is in the object, of the kind its hook loads.
    #[test]
    fn the_table_lists_every_program_of_the_object() {
        use aya_obj::ProgramSection as S;
        if OBJECT.is_empty() {
            eprintln!("SKIPPED: no eBPF object embedded; `cargo xtask build-ebpf` builds it");
            return;
        }
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        let in_object: BTreeSet<&str> = object
            .programs
            .keys()
            .map(String::as_str)
            .filter(|n| !n.starts_with(CHECK_PREFIX))
            .collect();
        let in_table: BTreeSet<&str> = PROGRAMS.iter().map(|p| p.name).collect();
        assert_eq!(in_object, in_table, "programs of the object vs the table");
        for p in PROGRAMS {
            let section = &object.programs[p.name].section;
            let kind_fits = match p.hook {
                HookSpec::Tracepoints(_) => matches!(section, S::TracePoint),
                HookSpec::CgroupSkb(_) => matches!(section, S::CgroupSkb { .. }),
                HookSpec::SockOps => matches!(section, S::SockOps),
                HookSpec::Tc(..) => matches!(section, S::SchedClassifier),
            };
            assert!(kind_fits, "{}: {section:?} vs {:?}", p.name, p.hook);
        }
        for f in FLOORS {
            assert!(object.programs.contains_key(f.program), "{f:?}");
        }
    }
}
