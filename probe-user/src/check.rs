//! `hopprobe check`: which hook types this kernel offers, proven by attaching trivial programs.
//!
//! A feature probe that only loads a program can say "yes" where attaching then fails (kprobes
//! on a kernel without CONFIG_KPROBES load fine), so each check attaches a do-nothing program
//! from the embedded object to a harmless target and detaches it again: a tracepoint, the
//! loopback device of a private network namespace, a private cgroup.

use std::{
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

use crate::{
    attach::{ebpf, ebpf::error_chain, privilege, reads, tracefs},
    names::cgroup,
    run::table,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// Every program and the hooks it can run on, in order of preference.
pub const PROGRAMS: &[(&str, &str, &[Hook])] = &[
    (
        "hp_sock_set_state",
        "handshake latency and connection lifetime",
        &[Hook::Tracepoint],
    ),
    (
        "hp_sock_recv",
        "app queue wait: when a process reads a request (sock_recv_length, Linux 6.12+)",
        &[Hook::Tracepoint],
    ),
    (
        "hp_tcp_rcv_space",
        "app queue wait on sockets opened before hopprobe attached: tcp_recvmsg copied data",
        &[Hook::Tracepoint],
    ),
    (
        "hp_sys_enter_accept",
        "app queue wait where sock_recv_length is missing: accept's peer address",
        &[Hook::Tracepoint],
    ),
    (
        "hp_sys_exit_accept",
        "app queue wait (fallback): accepted fd -> socket's flow",
        &[Hook::Tracepoint],
    ),
    (
        "hp_sys_enter_recv",
        "app queue wait (fallback): a read of an accepted fd begins",
        &[Hook::Tracepoint],
    ),
    (
        "hp_sys_exit_recv",
        "app queue wait (fallback): the read returned data: first read of the request",
        &[Hook::Tracepoint],
    ),
    (
        "hp_sys_enter_close",
        "app queue wait (fallback): forget a closed fd",
        &[Hook::Tracepoint],
    ),
    (
        "hp_tcp_retransmit",
        "retransmits per cgroup",
        &[Hook::Tracepoint],
    ),
    (
        "hp_tcp_send_reset",
        "resets sent per cgroup",
        &[Hook::Tracepoint],
    ),
    (
        "hp_tcp_receive_reset",
        "resets received per cgroup",
        &[Hook::Tracepoint],
    ),
    (
        "hp_sock_ops",
        "smoothed RTT per cgroup and service port (RTT callbacks)",
        &[Hook::SockOps],
    ),
    (
        "hp_skb_in",
        "first SYN of passive handshakes; exchanges (bytes in)",
        &[Hook::CgroupSkb],
    ),
    (
        "hp_skb_out",
        "exchanges (bytes out); packets sent by sockets",
        &[Hook::CgroupSkb],
    ),
    (
        "hp_tc_node_in",
        "packets arriving at the node's uplink",
        &[Hook::TcClsact],
    ),
    (
        "hp_tc_node_out",
        "packets leaving by the node's uplink",
        &[Hook::TcClsact],
    ),
    (
        "hp_tc_pod_in",
        "packets entering a pod (host veth egress)",
        &[Hook::TcClsact],
    ),
    (
        "hp_tc_pod_out",
        "packets leaving a pod (host veth ingress)",
        &[Hook::TcClsact],
    ),
];

#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    pub hook: Hook,
    pub required: bool,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramPlan {
    pub program: &'static str,
    pub purpose: &'static str,
    /// The first available hook in order of preference; `None` when none is.
    pub hook: Option<Hook>,
    /// What the kernel's verifier said when the program was loaded for real.
    pub verifier: Verdict,
    /// Where `hopprobe run` attaches it on this kernel, or why it does not.
    pub attaches_to: String,
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
}

impl Report {
    pub fn ok(&self) -> bool {
        self.missing_required.is_empty()
            && self
                .programs
                .iter()
                .all(|p| p.verifier.loaded != Some(false))
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
        let rows: Vec<Vec<String>> = self
            .programs
            .iter()
            .map(|p| {
                vec![
                    p.program.to_owned(),
                    p.hook.map_or("NONE (disabled)", Hook::name).to_owned(),
                    p.attaches_to.clone(),
                    p.verifier.summary(),
                    p.purpose.to_owned(),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &["program", "runs on", "attaches to", "verifier", "measures"],
            &rows,
        ));
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
                }
            }
            out.push_str(&format!(
                "NOT OK: hopprobe cannot run here; {}\n",
                why.join("; ")
            ));
        }
        out
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs every check. Never panics; each failure becomes a row with its reason.
pub fn run() -> Report {
    let kernel = kernel_release();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let cgroup_v2 = cgroup::v2_mount();
    let caps = privilege::effective_caps();

    if let Some(missing) = privilege::missing(caps) {
        let tracefs = "not checked (needs privilege)".to_owned();
        let hooks = Hook::ALL
            .iter()
            .map(|&hook| HookStatus {
                hook,
                required: hook.required(),
                available: false,
                detail: missing.clone(),
            })
            .collect();
        return finish(kernel, btf, tracefs, cgroup_v2, hooks);
    }

    let (tracefs_text, layout) = match tracefs::ensure(true) {
        Ok(t) => {
            let text = if t.mounted_now {
                format!("{} (mounted now)", t.root.display())
            } else {
                t.root.display().to_string()
            };
            let layout = tracefs::set_state_layout(&t.root).unwrap_or(SetStateLayout::DEFAULT);
            (text, Ok(layout))
        }
        Err(e) => (e.to_string(), Err(e.to_string())),
    };

    let mut hooks = Vec::new();
    let mut ebpf = match ebpf::load(
        layout.as_ref().unwrap_or(&SetStateLayout::DEFAULT),
        ebpf::MapSizes::default(),
    ) {
        Ok(ebpf) => Some(ebpf),
        Err(e) => {
            let why = error_chain(&e);
            for hook in Hook::ALL {
                hooks.push(HookStatus {
                    hook,
                    required: hook.required(),
                    available: false,
                    detail: format!("cannot load hopprobe's eBPF object: {why}"),
                });
            }
            None
        }
    };
    if let Some(ebpf) = ebpf.as_mut() {
        for hook in Hook::ALL {
            let result = match hook {
                Hook::Tracepoint => match &layout {
                    Ok(_) => check_tracepoint(ebpf),
                    Err(e) => Err(e.clone()),
                },
                Hook::TcClsact => check_tc(ebpf),
                Hook::CgroupSkb | Hook::SockOps => match &cgroup_v2 {
                    Some(root) => check_cgroup(ebpf, root, hook),
                    None => Err("no cgroup v2 mount in /proc/self/mounts".into()),
                },
                Hook::RingBuffer => check_ringbuf(),
                Hook::Kprobe => check_kprobe(ebpf),
                Hook::Fentry => check_fentry(ebpf, btf),
                Hook::BpfStats => check_stats(),
            };
            let (available, detail) = match result {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            hooks.push(HookStatus {
                hook,
                required: hook.required(),
                available,
                detail,
            });
        }
    }
    let verdicts = match ebpf.as_mut() {
        Some(ebpf) => PROGRAMS
            .iter()
            .map(|(name, _, _)| verify(ebpf, name))
            .collect(),
        None => Vec::new(),
    };
    let mut report = finish(kernel, btf, tracefs_text, cgroup_v2, hooks);
    for (plan, verdict) in report.programs.iter_mut().zip(verdicts) {
        plan.verifier = verdict;
    }
    if let Ok(t) = tracefs::ensure(false) {
        let recv_length = t.root.join("events/sock/sock_recv_length/format").exists();
        let fallback = reads::syscall_formats_problem(&t.root);
        for plan in &mut report.programs {
            if let Some(target) = attaches_to(plan.program, recv_length, fallback.as_deref()) {
                plan.attaches_to = target;
            }
        }
    }
    report
}

/// Where `hopprobe run` (with `--app-reads auto`) attaches the read hooks on this kernel: the
/// syscall programs stand by where `sock_recv_length` exists.
fn attaches_to(program: &str, recv_length: bool, fallback: Option<&str>) -> Option<String> {
    if program == "hp_sock_recv" {
        return Some(if recv_length {
            "sock:sock_recv_length".into()
        } else {
            "not attached: no sock:sock_recv_length (syscall fallback)".into()
        });
    }
    let fixed = match program {
        "hp_sock_set_state" => Some("sock:inet_sock_set_state"),
        "hp_tcp_rcv_space" => Some("tcp:tcp_rcv_space_adjust"),
        "hp_tcp_retransmit" => Some("tcp:tcp_retransmit_skb"),
        "hp_tcp_send_reset" => Some("tcp:tcp_send_reset"),
        "hp_tcp_receive_reset" => Some("tcp:tcp_receive_reset"),
        "hp_sock_ops" => Some("cgroup v2 root"),
        "hp_skb_in" => Some("cgroup v2 root, ingress"),
        "hp_skb_out" => Some("cgroup v2 root, egress"),
        "hp_tc_node_in" => Some("uplink, TC ingress"),
        "hp_tc_node_out" => Some("uplink, TC egress"),
        "hp_tc_pod_in" => Some("pod veths, TC egress"),
        "hp_tc_pod_out" => Some("pod veths, TC ingress"),
        _ => None,
    };
    if let Some(target) = fixed {
        return Some(target.into());
    }
    let p = reads::SYSCALL_PROGRAMS
        .iter()
        .find(|p| p.program == program)?;
    Some(match (recv_length, fallback) {
        (true, _) => "standby: sock_recv_length is used (--app-reads syscalls)".into(),
        (false, Some(problem)) => format!("not attached: {problem}"),
        (false, None) => p
            .tracepoints
            .iter()
            .map(|t| format!("syscalls:{t}"))
            .collect::<Vec<_>>()
            .join(","),
    })
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

fn finish(
    kernel: String,
    btf: bool,
    tracefs: String,
    cgroup_v2: Option<PathBuf>,
    hooks: Vec<HookStatus>,
) -> Report {
    let available = |hook: Hook| hooks.iter().any(|h| h.hook == hook && h.available);
    let programs = PROGRAMS
        .iter()
        .map(|(program, purpose, prefs)| ProgramPlan {
            program,
            purpose,
            hook: prefs.iter().copied().find(|h| available(*h)),
            verifier: Verdict::default(),
            attaches_to: String::new(),
        })
        .collect();
    let missing_required = hooks
        .iter()
        .filter(|h| h.required && !h.available)
        .map(|h| h.hook)
        .collect();
    Report {
        kernel,
        btf,
        tracefs,
        cgroup_v2,
        hooks,
        programs,
        missing_required,
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
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("creating a private network namespace: {e}"))?;
            // Kernels before 6.6 attach through netlink and need the clsact qdisc; adding it
            // on 6.6+ is harmless, and the namespace takes it away with it.
            let clsact = tc::qdisc_add_clsact("lo");
            let link = p.attach("lo", TcAttachType::Ingress).map_err(|e| {
                let mut msg = format!("attach: {}", error_chain(&e));
                if let Err(q) = clsact {
                    msg.push_str(&format!(" (adding clsact qdisc: {})", error_chain(&q)));
                }
                msg
            })?;
            p.detach(link).map_err(|e| error_chain(&e))?;
            Ok("attached to lo ingress in a private network namespace".into())
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
    let cg = TempCgroup::new(root)?;
    let dir = File::open(&cg.0).map_err(|e| format!("opening {}: {e}", cg.0.display()))?;
    if hook == Hook::CgroupSkb {
        let p: &mut CgroupSkb = program(ebpf, "hp_check_cgroup_skb")?;
        p.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
        let link = p
            .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .map_err(|e| format!("attach: {}", error_chain(&e)))?;
        p.detach(link).map_err(|e| error_chain(&e))?;
    } else {
        let p: &mut SockOps = program(ebpf, "hp_check_sock_ops")?;
        p.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
        let link = p
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|e| format!("attach: {}", error_chain(&e)))?;
        p.detach(link).map_err(|e| error_chain(&e))?;
    }
    Ok(format!(
        "attached to a private cgroup under {}",
        root.display()
    ))
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

    fn status(hook: Hook, available: bool) -> HookStatus {
        HookStatus {
            hook,
            required: hook.required(),
            available,
            detail: String::new(),
        }
    }

    #[test]
    fn optional_hooks_do_not_fail_the_check() {
        let hooks = Hook::ALL.iter().map(|&h| status(h, h.required())).collect();
        let r = finish("6.18".into(), true, "/t".into(), None, hooks);
        assert!(r.ok(), "{}", r.render());
        assert!(r.render().contains("OK: every hook"));
    }

    #[test]
    fn a_rejected_program_fails_the_check_with_the_verifiers_reason() {
        let hooks = Hook::ALL.iter().map(|&h| status(h, true)).collect();
        let mut r = finish("6.1".into(), true, "/t".into(), None, hooks);
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
    fn a_missing_required_hook_fails_and_disables_its_program() {
        let hooks = Hook::ALL
            .iter()
            .map(|&h| status(h, h != Hook::CgroupSkb))
            .collect();
        let r = finish("6.1".into(), true, "/t".into(), None, hooks);
        assert_eq!(r.missing_required, vec![Hook::CgroupSkb]);
        let plan = r
            .programs
            .iter()
            .find(|p| p.program == "hp_skb_in")
            .expect("listed");
        assert_eq!(plan.hook, None);
        assert!(r.render().contains("missing required hooks: cgroup_skb"));
    }
}
