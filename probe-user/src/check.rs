//! `hopprobe check`: which hook types this kernel offers, proven by attaching trivial programs,
//! and the plan `hopprobe run` would carry out here (`attach::plan`, the same function).
//!
//! A feature probe that only loads a program can say "yes" where attaching then fails (kprobes
//! on a kernel without CONFIG_KPROBES load fine), so each check attaches a do-nothing program
//! from the embedded object to a harmless target and detaches it again: a tracepoint, the
//! loopback device of a private network namespace, a private cgroup. What the checks find, the
//! tracepoint formats and the verifier's verdicts on the real programs are the facts the plan
//! is made from.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf,
    maps::MapType,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, KProbe, SchedClassifier, SockOps,
        TcAttachType, TracePoint, tc,
    },
    sys::{Stats, enable_stats, is_map_supported},
};
use probe_common::layout::SetStateLayout;
use serde::Serialize;

pub use crate::attach::programs::Hook;
use crate::{
    attach::{
        ebpf,
        ebpf::error_chain,
        plan::{self, Action, Facts, Options, Plan},
        privilege,
        programs::PROGRAMS,
        tracefs,
    },
    names::cgroup,
    run::table,
};

#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    pub hook: Hook,
    pub required: bool,
    pub available: bool,
    pub detail: String,
}

/// One program: the table's row and the plan's decision for this kernel.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramPlan {
    pub program: &'static str,
    pub purpose: &'static str,
    /// `required`, `optional`, or `reads #N`: the Nth way of seeing reads in order of
    /// preference (the first whose programs all fit is attached, the others stand by).
    pub need: &'static str,
    /// The hook type it runs on here; `None` when the plan leaves it out.
    pub hook: Option<Hook>,
    /// The hook as `run`'s summary names it (`cgroup_skb/ingress`...).
    pub runs_on: &'static str,
    /// What `hopprobe run` does with it on this kernel: attach where, skip why, fail why.
    pub plan: Action,
    /// What the kernel's verifier said when the program was loaded for real.
    pub verifier: Verdict,
}

/// The verifier's verdict on one of hopprobe's programs, loaded as `hopprobe run` loads it.
/// Instruction counts differ between kernels (and grow towards the verifier's limit), so the
/// VM test matrix reports them per kernel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Whether the verifier accepted the program; `None` when it was not tried.
    pub loaded: Option<bool>,
    /// Instructions the verifier processed (Linux 5.16+ reports it).
    pub verified_insns: Option<u32>,
    /// The load error, verifier log tail included, when it was rejected or not tried.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub btf: bool,
    pub tracefs: String,
    pub cgroup_v2: Option<PathBuf>,
    pub hooks: Vec<HookStatus>,
    pub programs: Vec<ProgramPlan>,
    /// Empty when every required hook is available.
    pub missing_required: Vec<Hook>,
}

impl Verdict {
    fn summary(&self) -> String {
        match (self.loaded, self.verified_insns) {
            (Some(true), Some(n)) => format!("{n} insns"),
            (Some(true), None) => "loaded".into(),
            (Some(false), _) => "REJECTED".into(),
            (None, _) => "not tried".into(),
        }
    }

    /// Why `run` could not use the program, if the verdict says so.
    fn refusal(&self) -> Option<String> {
        match (self.loaded, &self.error) {
            (Some(true), _) | (_, None) => None,
            (Some(false), Some(e)) => Some(format!("the verifier rejected it: {e}")),
            (None, Some(e)) => Some(e.clone()),
        }
    }
}

impl Report {
    /// The report of the checks' `hooks`, with a row per decision of `plan`.
    pub fn new(
        kernel: String,
        btf: bool,
        tracefs: String,
        cgroup_v2: Option<PathBuf>,
        hooks: Vec<HookStatus>,
        plan: &Plan,
        mut verdicts: BTreeMap<&str, Verdict>,
    ) -> Self {
        let programs = plan
            .decisions
            .iter()
            .map(|d| ProgramPlan {
                program: d.program,
                purpose: d.spec.purpose,
                need: d.spec.need.name(),
                hook: matches!(d.action, Action::Attach { .. }).then(|| d.spec.hook.hook()),
                runs_on: d.spec.hook.name(),
                plan: d.action.clone(),
                verifier: verdicts.remove(d.program).unwrap_or_default(),
            })
            .collect();
        let missing_required = hooks
            .iter()
            .filter(|h| h.required && !h.available)
            .map(|h| h.hook)
            .collect();
        Self {
            kernel,
            btf,
            tracefs,
            cgroup_v2,
            hooks,
            programs,
            missing_required,
        }
    }

    pub fn ok(&self) -> bool {
        self.missing_required.is_empty()
            && self
                .programs
                .iter()
                .all(|p| p.verifier.loaded != Some(false) && !matches!(p.plan, Action::Fail { .. }))
    }

    pub fn render(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut out = format!(
            "kernel {}  BTF {}  tracefs {}  cgroup v2 {}\n\n",
            self.kernel,
            yes_no(self.btf),
            self.tracefs,
            self.cgroup_v2
                .as_ref()
                .map_or_else(|| "not mounted".to_owned(), |p| p.display().to_string())
        );
        let rows: Vec<Vec<String>> = self
            .hooks
            .iter()
            .map(|h| {
                vec![
                    h.hook.name().to_owned(),
                    if h.required { "required" } else { "optional" }.to_owned(),
                    if h.available {
                        "available"
                    } else {
                        "unavailable"
                    }
                    .to_owned(),
                    h.detail.clone(),
                ]
            })
            .collect();
        out.push_str(&table::render(&["hook", "need", "status", "detail"], &rows));
        out.push('\n');
        out.push_str(&self.render_programs());
        out.push('\n');
        if self.ok() {
            out.push_str("OK: every hook hopprobe needs is available.\n");
        } else {
            let names: Vec<&str> = self.missing_required.iter().map(|h| h.name()).collect();
            let mut why = Vec::new();
            if !names.is_empty() {
                why.push(format!("missing required hooks: {}", names.join(", ")));
            }
            for p in &self.programs {
                if let (Some(false), Some(e)) = (p.verifier.loaded, &p.verifier.error) {
                    why.push(format!("the verifier rejected {}: {e}", p.program));
                } else if let Action::Fail { reason } = &p.plan {
                    why.push(format!("{} cannot run: {reason}", p.program));
                }
            }
            out.push_str(&format!(
                "NOT OK: hopprobe cannot run here; {}\n",
                why.join("; ")
            ));
        }
        out
    }

    /// The plan, a row per program: where `hopprobe run` attaches it, or why not.
    fn render_programs(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .programs
            .iter()
            .map(|p| {
                vec![
                    p.program.to_owned(),
                    p.need.to_owned(),
                    p.runs_on.to_owned(),
                    match &p.plan {
                        Action::Attach { target } => target.clone(),
                        Action::Skip { reason } => format!("not attached: {reason}"),
                        Action::Fail { reason } => format!("CANNOT RUN: {reason}"),
                    },
                    p.verifier.summary(),
                    p.purpose.to_owned(),
                ]
            })
            .collect();
        table::render(
            &[
                "program",
                "need",
                "runs on",
                "attaches to (hopprobe run)",
                "verifier",
                "measures",
            ],
            &rows,
        )
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn all_hooks(detail: &str) -> Vec<HookStatus> {
    Hook::ALL
        .iter()
        .map(|&hook| HookStatus {
            hook,
            required: hook.required(),
            available: false,
            detail: detail.to_owned(),
        })
        .collect()
}

/// Runs every check and makes the plan from what they found. Never panics; each failure
/// becomes a row with its reason.
pub fn run() -> Report {
    let kernel = kernel_release();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let cgroup_v2 = cgroup::v2_mount();
    let caps = privilege::effective_caps();
    let mut facts = Facts {
        cgroup_root: cgroup_v2.clone(),
        ..Facts::default()
    };
    let report = |facts: &mut Facts, tracefs, hooks: Vec<HookStatus>, verdicts| {
        for h in hooks.iter().filter(|h| !h.available) {
            facts.unavailable.insert(h.hook, h.detail.clone());
        }
        let plan = plan::plan(facts, &Options::DEFAULT);
        Report::new(
            kernel.clone(),
            btf,
            tracefs,
            cgroup_v2.clone(),
            hooks,
            &plan,
            verdicts,
        )
    };

    // Without CAP_BPF nothing loads; with it, each hook is tried and a failure names the
    // capability that hook lacks.
    if !privilege::lacking(caps, &[privilege::BPF]).is_empty()
        && let Some(missing) = privilege::missing(caps)
    {
        let tracefs = "not checked (needs privilege)".to_owned();
        return report(&mut facts, tracefs, all_hooks(&missing), BTreeMap::new());
    }

    let (tracefs_text, tracefs_problem) = match tracefs::ensure(true) {
        Ok(t) => {
            facts.read_formats(&t.root);
            let text = if t.mounted_now {
                format!("{} (mounted now)", t.root.display())
            } else {
                t.root.display().to_string()
            };
            (text, None)
        }
        Err(e) => (e.to_string(), Some(e.to_string())),
    };
    // A format the programs do not fit is the plan's to report; the hooks are checked anyway.
    let layout = facts.set_state_layout().unwrap_or(SetStateLayout::DEFAULT);
    let mut ebpf = match ebpf::load(&layout, ebpf::MapSizes::default()) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            let why = format!("cannot load hopprobe's eBPF object: {}", error_chain(&e));
            return report(&mut facts, tracefs_text, all_hooks(&why), BTreeMap::new());
        }
    };
    let hooks = Hook::ALL
        .iter()
        .map(|&hook| {
            let result = match hook {
                Hook::Tracepoint => match &tracefs_problem {
                    None => check_tracepoint(&mut ebpf),
                    Some(e) => Err(e.clone()),
                },
                Hook::TcClsact => check_tc(&mut ebpf),
                Hook::CgroupSkb | Hook::SockOps => match &cgroup_v2 {
                    Some(root) => check_cgroup(&mut ebpf, root, hook),
                    None => Err("no cgroup v2 mount in /proc/self/mounts".into()),
                },
                Hook::RingBuffer => check_ringbuf(),
                Hook::Kprobe => check_kprobe(&mut ebpf),
                Hook::Fentry => check_fentry(&mut ebpf, btf),
                Hook::BpfStats => check_stats(),
            };
            let (available, detail) = match result {
                Ok(d) => (true, d),
                Err(d)
                    if d.contains("Permission denied")
                        && matches!(hook, Hook::Tracepoint | Hook::Kprobe)
                        && let Some(why) = privilege::perf_paranoid_blocks(caps) =>
                {
                    (false, format!("{why}: {d}"))
                }
                // Named only where the kernel refused: a hook the kernel lacks stays so.
                Err(d) if d.contains("Operation not permitted") => {
                    match privilege::lacking(caps, privilege::hook_needs(hook)).as_slice() {
                        [] => (false, d),
                        lacking => (
                            false,
                            format!("needs {} (missing): {d}", lacking.join(" + ")),
                        ),
                    }
                }
                Err(d) => (false, d),
            };
            HookStatus {
                hook,
                required: hook.required(),
                available,
                detail,
            }
        })
        .collect();
    let verdicts: BTreeMap<&str, Verdict> = PROGRAMS
        .iter()
        .map(|p| (p.name, verify(&mut ebpf, p.name)))
        .collect();
    for (&name, verdict) in &verdicts {
        if let Some(why) = verdict.refusal() {
            facts.refused.insert(name, why);
        }
    }
    report(&mut facts, tracefs_text, hooks, verdicts)
}

/// Loads one of the real programs (nothing is attached) and reads the verifier's statistics.
fn verify(ebpf: &mut Ebpf, name: &str) -> Verdict {
    use aya::programs::Program;
    let Some(program) = ebpf.program_mut(name) else {
        return Verdict {
            error: Some(format!("program {name} missing from the eBPF object")),
            ..Verdict::default()
        };
    };
    let loaded = match program {
        Program::TracePoint(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        Program::SchedClassifier(p) => p.load(),
        Program::SockOps(p) => p.load(),
        other => {
            return Verdict {
                error: Some(format!(
                    "{name}: {:?} programs are not loaded by `check`",
                    other.prog_type()
                )),
                ..Verdict::default()
            };
        }
    };
    if let Err(e) = loaded {
        return Verdict {
            loaded: Some(false),
            verified_insns: None,
            error: Some(ebpf::error_brief(&e)),
        };
    }
    match program.info() {
        Ok(info) => Verdict {
            loaded: Some(true),
            verified_insns: info.verified_instruction_count(),
            error: None,
        },
        Err(e) => Verdict {
            loaded: Some(true),
            verified_insns: None,
            error: Some(format!("reading program info: {}", error_chain(&e))),
        },
    }
}

type Check = Result<String, String>;

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .map_err(|e| error_chain(&e))
}

fn check_tracepoint(ebpf: &mut Ebpf) -> Check {
    let p: &mut TracePoint = program(ebpf, "hp_check_tracepoint")?;
    p.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
    let link = p
        .attach("sock", "inet_sock_set_state")
        .map_err(|e| format!("attach: {}", error_chain(&e)))?;
    p.detach(link).map_err(|e| error_chain(&e))?;
    Ok("attached to sock:inet_sock_set_state".into())
}

/// Attaches to `lo` in a network namespace that exists only for this thread, so nothing of the
/// host's traffic control is touched and nothing can be left behind.
fn check_tc(ebpf: &mut Ebpf) -> Check {
    let p: &mut SchedClassifier = program(ebpf, "hp_check_tc")?;
    p.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Check {
            // Without CAP_SYS_ADMIN (the least-privilege DaemonSet) there is no private
            // namespace: a veth pair of its own in this one, down and deleted after.
            let (iface, own_veth, place) =
                match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                    Ok(()) => (
                        "lo".to_owned(),
                        None,
                        "lo ingress in a private network namespace",
                    ),
                    Err(nix::errno::Errno::EPERM) => {
                        let name = format!("hpchk{}", std::process::id() % 10_000_000);
                        let index = crate::attach::tc_netlink::add_veth(&name)
                            .map_err(|e| format!("creating a veth pair: {e}"))?;
                        (
                            name,
                            Some(index),
                            "a veth of its own (no private namespace here)",
                        )
                    }
                    Err(e) => return Err(format!("creating a private network namespace: {e}")),
                };
            // Kernels before 6.6 attach through netlink and need the clsact qdisc; adding it
            // on 6.6+ is harmless, and the namespace or the interface takes it away with it.
            let clsact = tc::qdisc_add_clsact(&iface);
            let attached = p.attach(&iface, TcAttachType::Ingress).map_err(|e| {
                let mut msg = format!("attach: {}", error_chain(&e));
                if let Err(q) = clsact {
                    msg.push_str(&format!(" (adding clsact qdisc: {})", error_chain(&q)));
                }
                msg
            });
            let detached = attached.and_then(|link| p.detach(link).map_err(|e| error_chain(&e)));
            if let Some(index) = own_veth {
                crate::attach::tc_netlink::delete_link(index)
                    .map_err(|e| format!("deleting the veth {iface}: {e}"))?;
            }
            detached?;
            Ok(format!("attached to {place}"))
        })
        .join()
        .unwrap_or_else(|_| Err("the check thread panicked".into()))
    })
}

/// A cgroup that exists only while a check runs.
struct TempCgroup(PathBuf);

impl TempCgroup {
    fn new(root: &Path) -> Result<Self, String> {
        let path = root.join(format!("hopprobe-check-{}", std::process::id()));
        fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

fn check_cgroup(ebpf: &mut Ebpf, root: &Path, hook: Hook) -> Check {
    // The DaemonSet mounts the cgroup tree read-only: then the root itself, for a moment,
    // beside whatever else is attached there (both programs let everything pass).
    // A link (what aya makes from 5.7) never displaces another program, whatever the mode.
    let mode = CgroupAttachMode::Single;
    let (cg, place) = match TempCgroup::new(root) {
        Ok(cg) => (
            Some(cg),
            format!("a private cgroup under {}", root.display()),
        ),
        Err(_) => (
            None,
            format!(
                "the cgroup root {} (read-only here) for a moment",
                root.display()
            ),
        ),
    };
    let path = cg.as_ref().map_or(root, |c| c.0.as_path());
    let dir = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    if hook == Hook::CgroupSkb {
        let p: &mut CgroupSkb = program(ebpf, "hp_check_cgroup_skb")?;
        p.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
        let link = p
            .attach(&dir, CgroupSkbAttachType::Ingress, mode)
            .map_err(|e| format!("attach: {}", error_chain(&e)))?;
        p.detach(link).map_err(|e| error_chain(&e))?;
    } else {
        let p: &mut SockOps = program(ebpf, "hp_check_sock_ops")?;
        p.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
        let link = p
            .attach(&dir, mode)
            .map_err(|e| format!("attach: {}", error_chain(&e)))?;
        p.detach(link).map_err(|e| error_chain(&e))?;
    }
    Ok(format!("attached to {place}"))
}

fn check_ringbuf() -> Check {
    match is_map_supported(MapType::RingBuf) {
        Ok(true) => Ok("BPF_MAP_TYPE_RINGBUF can be created".into()),
        Ok(false) => Err("BPF_MAP_TYPE_RINGBUF not supported (needs Linux 5.8)".into()),
        Err(e) => Err(error_chain(&e)),
    }
}

fn check_kprobe(ebpf: &mut Ebpf) -> Check {
    // aya uses the kprobe PMU, else tracefs kprobe_events; a kernel without CONFIG_KPROBES has
    // neither.
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let events = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| Path::new(t).join("kprobe_events").exists());
    if !pmu && !events {
        return Err(
            "kernel built without CONFIG_KPROBES (no kprobe PMU, no kprobe_events in tracefs)"
                .into(),
        );
    }
    let p: &mut KProbe = program(ebpf, "hp_check_kprobe")?;
    p.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
    let link = p
        .attach("tcp_connect", 0)
        .map_err(|e| format!("attach to tcp_connect: {}", error_chain(&e)))?;
    p.detach(link).map_err(|e| error_chain(&e))?;
    Ok("attached to tcp_connect".into())
}

fn check_fentry(ebpf: &mut Ebpf, btf: bool) -> Check {
    if !btf {
        return Err("no kernel BTF (/sys/kernel/btf/vmlinux): fentry needs it".into());
    }
    let btf = Btf::from_sys_fs().map_err(|e| format!("reading kernel BTF: {}", error_chain(&e)))?;
    let p: &mut FEntry = program(ebpf, "hp_check_fentry")?;
    p.load("tcp_connect", &btf).map_err(|e| {
        format!(
            "load: {} (BPF trampolines are not available on this kernel)",
            error_chain(&e)
        )
    })?;
    let link = p
        .attach()
        .map_err(|e| format!("attach to tcp_connect: {}", error_chain(&e)))?;
    p.detach(link).map_err(|e| error_chain(&e))?;
    Ok("attached to tcp_connect".into())
}

fn check_stats() -> Check {
    // The returned fd keeps run-time statistics on; dropping it turns them off again.
    enable_stats(Stats::RunTime)
        .map(|_fd| "BPF_ENABLE_STATS(run time) works: per-program run time and count".into())
        .map_err(|e| format!("BPF_ENABLE_STATS: {}", error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::plan::tests::{linux_6_1, linux_6_18, recv_length_moved};

    fn status(hook: Hook, available: bool) -> HookStatus {
        HookStatus {
            hook,
            required: hook.required(),
            available,
            detail: String::new(),
        }
    }

    fn report(facts: &mut Facts, hooks: Vec<HookStatus>) -> (Plan, Report) {
        for h in hooks.iter().filter(|h| !h.available) {
            facts.unavailable.insert(h.hook, "unavailable here".into());
        }
        let plan = plan::plan(facts, &Options::DEFAULT);
        let r = Report::new(
            "6.18".into(),
            true,
            "/t".into(),
            None,
            hooks,
            &plan,
            BTreeMap::new(),
        );
        (plan, r)
    }

    fn all_available() -> Vec<HookStatus> {
        Hook::ALL.iter().map(|&h| status(h, true)).collect()
    }

    /// The row `check` prints for `program`.
    fn row<'a>(text: &'a str, program: &str) -> &'a str {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(program))
            .unwrap_or_else(|| panic!("no row for {program} in\n{text}"))
    }

    /// What `check` prints and what `run` attaches (`Plan::to_attach`, which
    /// `probe::carry_out` walks) are one plan: every program `run` attaches is printed with
    /// its target, every other one with the plan's reason.
    fn assert_check_shows_runs_plan(plan: &Plan, report: &Report) {
        let text = report.render();
        let attached: Vec<&str> = plan.to_attach().map(|(spec, _)| spec.name).collect();
        for (spec, target) in plan.to_attach() {
            assert!(row(&text, spec.name).contains(target), "{target}:\n{text}");
        }
        for d in &plan.decisions {
            match &d.action {
                Action::Attach { .. } => assert!(attached.contains(&d.program)),
                Action::Skip { reason } | Action::Fail { reason } => {
                    assert!(!attached.contains(&d.program));
                    assert!(row(&text, d.program).contains(reason.as_str()), "{text}");
                }
            }
        }
        let json = serde_json::to_value(report).expect("serialises");
        for (i, d) in plan.decisions.iter().enumerate() {
            assert_eq!(json["programs"][i]["program"], d.program);
            assert_eq!(
                json["programs"][i]["plan"],
                serde_json::to_value(&d.action).expect("serialises")
            );
        }
    }

    #[test]
    fn on_6_1_check_shows_the_syscall_fallback_run_attaches() {
        let (plan, r) = report(&mut linux_6_1(), all_available());
        assert_check_shows_runs_plan(&plan, &r);
        assert!(!plan.attaches("hp_sock_recv"));
        assert!(plan.attaches("hp_sys_exit_recv"));
        let text = r.render();
        assert!(
            row(&text, "hp_sock_recv")
                .contains("not attached: this kernel has no sock:sock_recv_length"),
            "{text}"
        );
        assert!(r.ok(), "{text}");
    }

    #[test]
    fn on_6_18_check_shows_sock_recv_length_run_attaches() {
        let (plan, r) = report(&mut linux_6_18(), all_available());
        assert_check_shows_runs_plan(&plan, &r);
        assert!(plan.attaches("hp_sock_recv"));
        assert!(row(&r.render(), "hp_sys_enter_close").contains("standby"));
    }

    #[test]
    fn moved_offsets_show_the_fallback_in_check_and_run_alike() {
        let (plan, r) = report(&mut recv_length_moved(), all_available());
        assert_check_shows_runs_plan(&plan, &r);
        assert!(!plan.attaches("hp_sock_recv"));
        assert!(plan.attaches("hp_sys_exit_recv"));
        assert!(
            row(&r.render(), "hp_sock_recv").contains("field ret is at offset 28"),
            "{}",
            r.render()
        );
    }

    #[test]
    fn optional_hooks_do_not_fail_the_check() {
        let hooks = Hook::ALL.iter().map(|&h| status(h, h.required())).collect();
        let (_, r) = report(&mut linux_6_18(), hooks);
        assert!(r.ok(), "{}", r.render());
        assert!(r.render().contains("OK: every hook"));
    }

    #[test]
    fn a_rejected_program_fails_the_check_with_the_verifiers_reason() {
        let (_, mut r) = report(&mut linux_6_18(), all_available());
        assert!(r.ok());
        r.programs[0].verifier = Verdict {
            loaded: Some(false),
            verified_insns: None,
            error: Some("invalid func unknown#210".into()),
        };
        r.programs[1].verifier = Verdict {
            loaded: Some(true),
            verified_insns: Some(480),
            error: None,
        };
        assert!(!r.ok());
        let text = r.render();
        assert!(
            text.contains("the verifier rejected hp_sock_set_state: invalid func unknown#210"),
            "{text}"
        );
        assert!(text.contains("480 insns"), "{text}");
        assert!(!text.contains("missing required hooks"), "{text}");
    }

    #[test]
    fn a_rejected_read_program_hands_over_to_the_fallback_in_the_plan() {
        let mut facts = linux_6_18();
        let rejected = Verdict {
            loaded: Some(false),
            verified_insns: None,
            error: Some("R1 invalid mem access".into()),
        };
        facts
            .refused
            .insert("hp_sock_recv", rejected.refusal().expect("a refusal"));
        let (plan, r) = report(&mut facts, all_available());
        assert_check_shows_runs_plan(&plan, &r);
        assert!(plan.attaches("hp_sys_exit_recv"));
    }

    #[test]
    fn a_missing_required_hook_fails_and_disables_its_program() {
        let hooks = Hook::ALL
            .iter()
            .map(|&h| status(h, h != Hook::CgroupSkb))
            .collect();
        let (plan, r) = report(&mut linux_6_18(), hooks);
        assert_check_shows_runs_plan(&plan, &r);
        assert_eq!(r.missing_required, vec![Hook::CgroupSkb]);
        let p = r
            .programs
            .iter()
            .find(|p| p.program == "hp_skb_in")
            .expect("listed");
        assert_eq!(p.hook, None);
        assert!(r.render().contains("missing required hooks: cgroup_skb"));
        assert!(
            row(&r.render(), "hp_skb_in").contains("not attached: cgroup_skb unavailable"),
            "{}",
            r.render()
        );
    }

    #[test]
    fn a_required_program_that_cannot_run_fails_the_check() {
        let hooks = Hook::ALL
            .iter()
            .map(|&h| status(h, h != Hook::Tracepoint))
            .collect();
        let (_, r) = report(&mut linux_6_18(), hooks);
        assert!(!r.ok());
        let text = r.render();
        assert!(
            text.contains("hp_sock_set_state cannot run: tracepoint unavailable"),
            "{text}"
        );
        assert!(
            row(&text, "hp_sock_set_state").contains("CANNOT RUN"),
            "{text}"
        );
    }
}
