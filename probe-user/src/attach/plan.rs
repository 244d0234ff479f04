//! The one decision of which programs attach where: `plan` takes what the kernel offers and
//! the user's options and says, for each program of the table (`programs::PROGRAMS`), attach
//! (where), skip (why) or fail (required, and why). `run` carries the plan out (`probe`,
//! `datapath`) and logs it; `check` prints it; so the two cannot disagree.

use std::{
    collections::BTreeMap,
    fmt::Write,
    path::{Path, PathBuf},
};

use probe_common::{
    exchange::{READ_HOOK_NONE, READ_HOOK_RECV_LENGTH, READ_HOOK_SYSCALLS},
    layout::{SetStateLayout, Tracepoint, sock::inet_sock_set_state},
};
use serde::Serialize;

use crate::attach::{
    programs::{
        Hook, HookSpec, Iface, Need, PROGRAMS, ProgramSpec, SOCK_RECV, SYS_EXIT_RECV,
        WITHOUT_APP_READS, Way, way_programs,
    },
    reads::ReadHook,
    tracefs::{self, Format},
};

/// What the kernel offers, as far as it was looked at.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The format of each tracepoint the table names that this kernel has, by
    /// `category:name`.
    pub formats: BTreeMap<String, Format>,
    /// Hook types known to be unavailable, with why (`check` attaches a do-nothing program to
    /// find out); the others are tried.
    pub unavailable: BTreeMap<Hook, String>,
    /// The cgroup v2 root the cgroup programs attach to.
    pub cgroup_root: Option<PathBuf>,
    /// Programs the kernel refused (the verifier, or an attach), with its words.
    pub refused: BTreeMap<&'static str, String>,
}

impl Facts {
    /// Reads the format of every tracepoint of the table from tracefs.
    pub fn read_formats(&mut self, tracefs_root: &Path) {
        for tp in PROGRAMS.iter().flat_map(|p| p.hook.tracepoints()) {
            if let Some(format) = tracefs::read_format(tracefs_root, tp) {
                self.formats.insert(tracefs::id(tp), format);
            }
        }
    }

    fn format(&self, tp: &Tracepoint) -> Option<&Format> {
        self.formats.get(&tracefs::id(tp))
    }

    /// The offsets to write into the programs' `SET_STATE_LAYOUT`: this kernel's.
    pub fn set_state_layout(&self) -> Result<SetStateLayout, String> {
        let tp = inet_sock_set_state::TRACEPOINT;
        if let Some(why) = tracefs::misfit(&tp, self.format(&tp)) {
            return Err(why);
        }
        let format = self.format(&tp).ok_or("checked above")?;
        tracefs::set_state_layout(format)
            .map_err(|field| format!("{} has no field {field}", tracefs::id(&tp)))
    }
}

/// The user's choices that bear on the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `--app-reads`.
    pub read_hook: ReadHook,
    /// False with `--no-datapath`.
    pub datapath: bool,
}

impl Options {
    /// `hopprobe run` without options (and what `check` shows).
    pub const DEFAULT: Self = Self {
        read_hook: ReadHook::Auto,
        datapath: true,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Attach it; `target` names where (tracepoints, the cgroup root, the interfaces).
    Attach { target: String },
    /// Leave it out; hopprobe runs without what it measures.
    Skip { reason: String },
    /// A required program that cannot run here: hopprobe cannot either.
    Fail { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub program: &'static str,
    #[serde(skip)]
    pub spec: &'static ProgramSpec,
    #[serde(flatten)]
    pub action: Action,
}

/// A decision for every program of the table, in its order.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub decisions: Vec<Decision>,
}

pub fn plan(facts: &Facts, options: &Options) -> Plan {
    let fits: BTreeMap<&str, Result<String, String>> = PROGRAMS
        .iter()
        .map(|p| (p.name, fit(p, facts, options)))
        .collect();
    let problems: BTreeMap<Way, Option<(&str, String)>> = Way::APP_READS
        .into_iter()
        .map(|way| (way, way_problem(way, &fits, options)))
        .collect();
    let chosen = Way::APP_READS
        .into_iter()
        .find(|way| problems[way].is_none());
    let decisions = PROGRAMS
        .iter()
        .map(|spec| {
            let fit = fits[spec.name].clone();
            let action = match (spec.need, fit) {
                (Need::Required, Ok(target)) => Action::Attach { target },
                (Need::Required, Err(reason)) => Action::Fail { reason },
                (Need::Optional { .. }, Ok(target)) => Action::Attach { target },
                (Need::Optional { .. }, Err(reason)) => Action::Skip { reason },
                (Need::OneOf(way), Ok(target)) if chosen == Some(way) => Action::Attach { target },
                (Need::OneOf(way), _) => Action::Skip {
                    reason: way_reason(spec.name, way, chosen, problems[&way].as_ref()),
                },
            };
            Decision {
                program: spec.name,
                spec,
                action,
            }
        })
        .collect();
    Plan { decisions }
}

/// Where `spec` attaches on this kernel, or why it cannot, leaving its way's siblings aside.
fn fit(spec: &ProgramSpec, facts: &Facts, options: &Options) -> Result<String, String> {
    if let HookSpec::Tc(..) = spec.hook
        && !options.datapath
    {
        return Err("--no-datapath".into());
    }
    if let Some(why) = facts.refused.get(spec.name) {
        return Err(why.clone());
    }
    let hook = spec.hook.hook();
    if let Some(why) = facts.unavailable.get(&hook) {
        return Err(format!("{} unavailable: {why}", hook.name()));
    }
    let cgroup_root = || {
        facts
            .cgroup_root
            .as_ref()
            .map_or_else(|| "the cgroup v2 root".into(), |p| p.display().to_string())
    };
    match spec.hook {
        HookSpec::Tracepoints(tps) => {
            if let Some(why) = tps
                .iter()
                .find_map(|tp| tracefs::misfit(tp, facts.format(tp)))
            {
                return Err(why);
            }
            Ok(tps.iter().map(tracefs::id).collect::<Vec<_>>().join(","))
        }
        HookSpec::CgroupSkb(_) | HookSpec::SockOps => Ok(cgroup_root()),
        HookSpec::Tc(Iface::Uplink, _) => Ok("the node's uplink".into()),
        HookSpec::Tc(Iface::PodVeth, _) => Ok("pod veths (host side)".into()),
    }
}

/// Why `way` cannot be used: the user's choice, or the first of its programs that does not fit.
fn way_problem<'a>(
    way: Way,
    fits: &BTreeMap<&'a str, Result<String, String>>,
    options: &Options,
) -> Option<(&'a str, String)> {
    if way == Way::SockRecvLength && options.read_hook == ReadHook::Syscalls {
        return Some(("", "--app-reads syscalls".into()));
    }
    way_programs(way).find_map(|p| {
        let (&name, fit) = fits.get_key_value(p.name)?;
        fit.as_ref().err().map(|why| (name, why.clone()))
    })
}

fn way_reason(
    program: &str,
    way: Way,
    chosen: Option<Way>,
    problem: Option<&(&str, String)>,
) -> String {
    match (chosen, problem) {
        (Some(c), _) if c < way => format!(
            "standby: {} sees reads (`--app-reads syscalls` takes these)",
            c.name()
        ),
        (_, Some((who, why))) => {
            let mut text = if who.is_empty() || *who == program {
                why.clone()
            } else {
                format!("{who}: {why}")
            };
            match chosen {
                Some(c) => {
                    let _ = write!(text, "; {} see reads instead", c.name());
                }
                None => {
                    let _ = write!(text, "; {WITHOUT_APP_READS}");
                }
            }
            text
        }
        // Not chosen though it fits and comes first: cannot happen.
        (_, None) => "not chosen".into(),
    }
}

impl Plan {
    pub fn get(&self, program: &str) -> Option<&Decision> {
        self.decisions.iter().find(|d| d.program == program)
    }

    pub fn attaches(&self, program: &str) -> bool {
        self.get(program)
            .is_some_and(|d| matches!(d.action, Action::Attach { .. }))
    }

    /// The first required program that cannot run here, and why.
    pub fn failure(&self) -> Option<(&'static str, &str)> {
        self.decisions.iter().find_map(|d| match &d.action {
            Action::Fail { reason } => Some((d.program, reason.as_str())),
            _ => None,
        })
    }

    /// The programs to attach, with where, in table order.
    pub fn to_attach(&self) -> impl Iterator<Item = (&'static ProgramSpec, &str)> {
        self.decisions.iter().filter_map(|d| match &d.action {
            Action::Attach { target } => Some((d.spec, target.as_str())),
            _ => None,
        })
    }

    /// Which reads `hp_tcp_rcv_space` leaves to the other read hook (see
    /// `probe_common::exchange::READ_HOOK_*`).
    pub fn read_hook(&self) -> u32 {
        if self.attaches(SOCK_RECV) {
            READ_HOOK_RECV_LENGTH
        } else if self.attaches(SYS_EXIT_RECV) {
            READ_HOOK_SYSCALLS
        } else {
            READ_HOOK_NONE
        }
    }

    /// The plan in one line, for the log: `program→target` for each program attached, then
    /// the ones left out, those with the same reason together.
    pub fn summary(&self) -> String {
        let mut out = self
            .to_attach()
            .map(|(spec, target)| format!("{}→{target}", spec.name))
            .collect::<Vec<_>>()
            .join(" ");
        let mut left_out: Vec<(Vec<&str>, &str, &str)> = Vec::new();
        for d in &self.decisions {
            let (verb, reason) = match &d.action {
                Action::Attach { .. } => continue,
                Action::Skip { reason } => ("skipped", reason.as_str()),
                Action::Fail { reason } => ("FAILS", reason.as_str()),
            };
            match left_out.last_mut() {
                Some((names, v, r)) if *v == verb && *r == reason => names.push(d.program),
                _ => left_out.push((vec![d.program], verb, reason)),
            }
        }
        for (names, verb, reason) in left_out {
            let _ = write!(out, "; {} {verb}: {reason}", names.join(","));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attach::tracefs::parse_format;

    const FORMATS_6_18: &str = include_str!("testdata/formats-6.18.txt");

    /// The formats of a 6.18 kernel (`testdata/`), with `edit` applied to the text of each:
    /// `(id, text) -> None` drops the tracepoint.
    pub(crate) fn facts_with(edit: impl Fn(&str, &str) -> Option<String>) -> Facts {
        let mut facts = Facts {
            cgroup_root: Some("/sys/fs/cgroup/unified".into()),
            ..Facts::default()
        };
        let text: String = FORMATS_6_18
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        for block in text.split("== ").filter(|b| !b.trim().is_empty()) {
            let (id, body) = block.split_once('\n').expect("a header line");
            if let Some(body) = edit(id, body) {
                facts.formats.insert(id.to_owned(), parse_format(&body));
            }
        }
        facts
    }

    pub(crate) fn linux_6_18() -> Facts {
        facts_with(|_, body| Some(body.to_owned()))
    }

    /// 6.1 lacks `sock_recv_length`; the other formats the programs read are the same.
    pub(crate) fn linux_6_1() -> Facts {
        facts_with(|id, body| (id != "sock:sock_recv_length").then(|| body.to_owned()))
    }

    /// `sock_recv_length` there, with `ret` moved.
    pub(crate) fn recv_length_moved() -> Facts {
        facts_with(|id, body| {
            Some(if id == "sock:sock_recv_length" {
                body.replace(
                    "int ret;\toffset:20;\tsize:4;",
                    "int ret;\toffset:28;\tsize:4;",
                )
            } else {
                body.to_owned()
            })
        })
    }

    fn action(plan: &Plan, program: &str) -> Action {
        plan.get(program).expect("in the table").action.clone()
    }

    fn attach(target: &str) -> Action {
        Action::Attach {
            target: target.into(),
        }
    }

    #[test]
    fn on_6_18_sock_recv_length_sees_reads_and_the_syscalls_stand_by() {
        let plan = plan(&linux_6_18(), &Options::DEFAULT);
        assert_eq!(plan.failure(), None);
        assert_eq!(action(&plan, SOCK_RECV), attach("sock:sock_recv_length"));
        for p in way_programs(Way::SyscallReads) {
            assert_eq!(
                action(&plan, p.name),
                Action::Skip {
                    reason:
                        "standby: sock_recv_length sees reads (`--app-reads syscalls` takes these)"
                            .into()
                }
            );
        }
        assert_eq!(plan.read_hook(), READ_HOOK_RECV_LENGTH);
        assert_eq!(
            action(&plan, "hp_sock_set_state"),
            attach("sock:inet_sock_set_state")
        );
        assert_eq!(action(&plan, "hp_skb_in"), attach("/sys/fs/cgroup/unified"));
        assert_eq!(
            action(&plan, "hp_tc_pod_in"),
            attach("pod veths (host side)")
        );
    }

    #[test]
    fn on_6_1_the_syscalls_see_reads() {
        let plan = plan(&linux_6_1(), &Options::DEFAULT);
        assert_eq!(
            action(&plan, SOCK_RECV),
            Action::Skip {
                reason: "this kernel has no sock:sock_recv_length; the syscall tracepoints see reads instead".into()
            }
        );
        assert_eq!(
            action(&plan, SYS_EXIT_RECV),
            attach(
                "syscalls:sys_exit_read,syscalls:sys_exit_readv,syscalls:sys_exit_recvfrom,syscalls:sys_exit_recvmsg"
            )
        );
        assert_eq!(
            action(&plan, "hp_sys_enter_accept"),
            attach("syscalls:sys_enter_accept,syscalls:sys_enter_accept4")
        );
        assert_eq!(plan.read_hook(), READ_HOOK_SYSCALLS);
        assert!(plan.attaches("hp_tcp_rcv_space"));
    }

    #[test]
    fn moved_offsets_make_the_syscalls_see_reads_and_say_why() {
        let plan = plan(&recv_length_moved(), &Options::DEFAULT);
        assert_eq!(
            action(&plan, SOCK_RECV),
            Action::Skip {
                reason: "sock:sock_recv_length's field ret is at offset 28, 4 bytes; the program \
                         reads offset 20, 4 bytes; the syscall tracepoints see reads instead"
                    .into()
            }
        );
        assert!(plan.attaches(SYS_EXIT_RECV));
        assert_eq!(plan.read_hook(), READ_HOOK_SYSCALLS);
    }

    #[test]
    fn app_reads_syscalls_is_obeyed_where_sock_recv_length_fits() {
        let options = Options {
            read_hook: ReadHook::Syscalls,
            ..Options::DEFAULT
        };
        let plan = plan(&linux_6_18(), &options);
        assert_eq!(
            action(&plan, SOCK_RECV),
            Action::Skip {
                reason: "--app-reads syscalls; the syscall tracepoints see reads instead".into()
            }
        );
        assert!(way_programs(Way::SyscallReads).all(|p| plan.attaches(p.name)));
    }

    #[test]
    fn one_missing_syscall_leaves_the_whole_fallback_out() {
        let facts = facts_with(|id, body| {
            (!id.ends_with("sys_enter_close") && id != "sock:sock_recv_length")
                .then(|| body.to_owned())
        });
        let plan = plan(&facts, &Options::DEFAULT);
        assert_eq!(
            action(&plan, "hp_sys_enter_accept"),
            Action::Skip {
                reason: format!(
                    "hp_sys_enter_close: this kernel has no syscalls:sys_enter_close; {WITHOUT_APP_READS}"
                )
            }
        );
        assert_eq!(plan.read_hook(), READ_HOOK_NONE);
        assert_eq!(plan.failure(), None);
    }

    #[test]
    fn a_refused_program_hands_over_to_the_next_way() {
        let mut facts = linux_6_18();
        facts
            .refused
            .insert(SOCK_RECV, "the kernel refused it: EINVAL".into());
        let plan = plan(&facts, &Options::DEFAULT);
        assert!(plan.attaches(SYS_EXIT_RECV));
        assert!(
            plan.summary()
                .contains("hp_sock_recv skipped: the kernel refused it: EINVAL; the syscall tracepoints see reads instead"),
            "{}",
            plan.summary()
        );
    }

    #[test]
    fn required_programs_fail_and_optional_ones_are_skipped() {
        let mut facts = facts_with(|id, body| {
            Some(if id == "sock:inet_sock_set_state" {
                body.replace("saddr_v6", "saddr6")
            } else {
                body.to_owned()
            })
        });
        facts
            .unavailable
            .insert(Hook::SockOps, "attach: EPERM".into());
        let options = Options {
            datapath: false,
            ..Options::DEFAULT
        };
        let plan = plan(&facts, &options);
        assert_eq!(
            plan.failure(),
            Some((
                "hp_sock_set_state",
                "sock:inet_sock_set_state has no field saddr_v6"
            ))
        );
        assert_eq!(
            action(&plan, "hp_sock_ops"),
            Action::Skip {
                reason: "sock_ops unavailable: attach: EPERM".into()
            }
        );
        assert_eq!(
            action(&plan, "hp_tc_node_in"),
            Action::Skip {
                reason: "--no-datapath".into()
            }
        );
        assert!(
            plan.summary().ends_with(
                "hp_tc_node_in,hp_tc_node_out,hp_tc_pod_in,hp_tc_pod_out skipped: --no-datapath"
            ),
            "{}",
            plan.summary()
        );
    }

    #[test]
    fn the_set_state_layout_follows_the_kernel() {
        assert_eq!(linux_6_18().set_state_layout(), Ok(SetStateLayout::DEFAULT));
        let moved = facts_with(|id, body| {
            Some(if id == "sock:inet_sock_set_state" {
                body.replace("offset:26;", "offset:90;")
            } else {
                body.to_owned()
            })
        });
        assert_eq!(moved.set_state_layout().map(|l| l.dport), Ok(90));
    }
}
