//! Which hook tells hopprobe when a process reads a request from its socket (the split of the
//! `app` hop into `app_queue` and `app_processing`), and attaching it.
//!
//! Preferred: `sock:sock_recv_length` (Linux 6.12+), one program that knows the socket.
//! Fallback, on older kernels (6.1 on EKS): syscall tracepoints — `accept`/`accept4` map the
//! new fd to its flow by the peer address, `read`/`readv`/`recvfrom`/`recvmsg` mark the first
//! read, `close` forgets the fd (see `probe-ebpf/src/syscalls.rs`).
//! Either way, `tcp:tcp_rcv_space_adjust` (every kernel hopprobe supports; attached in
//! `probe.rs` with the other optional tracepoints) times the reads the chosen hook cannot name:
//! sockets opened before hopprobe attached and, with the fallback, fds that were dup'ed.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{ProgramError, TracePoint},
};

use crate::attach::{ebpf, ebpf::error_chain, tracefs};

/// `--app-reads`: which hook marks a request's first read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReadHook {
    /// `sock:sock_recv_length` where the kernel has it, else the syscall tracepoints.
    #[default]
    Auto,
    /// The syscall tracepoints even where `sock_recv_length` exists (to compare the two).
    Syscalls,
}

/// A fallback program and the syscall tracepoints it runs on, with the fields it reads.
pub struct SyscallProgram {
    pub program: &'static str,
    pub tracepoints: &'static [&'static str],
    pub fields: &'static [(&'static str, usize)],
}

/// The program that marks a read in the fallback; attached means the fallback runs.
pub const SYSCALL_EXIT_RECV: &str = "hp_sys_exit_recv";

pub const SYSCALL_PROGRAMS: [SyscallProgram; 5] = [
    SyscallProgram {
        program: "hp_sys_enter_accept",
        tracepoints: &["sys_enter_accept", "sys_enter_accept4"],
        fields: &[("fd", 16), ("upeer_sockaddr", 24)],
    },
    SyscallProgram {
        program: "hp_sys_exit_accept",
        tracepoints: &["sys_exit_accept", "sys_exit_accept4"],
        fields: &[("ret", 16)],
    },
    SyscallProgram {
        program: "hp_sys_enter_recv",
        tracepoints: &[
            "sys_enter_read",
            "sys_enter_readv",
            "sys_enter_recvfrom",
            "sys_enter_recvmsg",
        ],
        fields: &[("fd", 16)],
    },
    SyscallProgram {
        program: SYSCALL_EXIT_RECV,
        tracepoints: &[
            "sys_exit_read",
            "sys_exit_readv",
            "sys_exit_recvfrom",
            "sys_exit_recvmsg",
        ],
        fields: &[("ret", 16)],
    },
    SyscallProgram {
        program: "hp_sys_enter_close",
        tracepoints: &["sys_enter_close"],
        fields: &[("fd", 16)],
    },
];

/// Why the syscall tracepoints cannot be used here, or `None` when their formats match.
pub fn syscall_formats_problem(tracefs_root: &Path) -> Option<String> {
    for p in &SYSCALL_PROGRAMS {
        for name in p.tracepoints {
            let path = tracefs_root.join(format!("events/syscalls/{name}/format"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                return Some(format!("this kernel has no syscalls:{name}"));
            };
            let fields = tracefs::parse_format(&text);
            for &(field, offset) in p.fields {
                if fields.get(field).map(|f| f.0) != Some(offset) {
                    return Some(format!(
                        "syscalls:{name}'s field {field} is not at offset {offset}"
                    ));
                }
            }
        }
    }
    None
}

/// Loads and attaches every fallback program; returns `(program, tracepoints)` attached.
pub fn attach_syscalls(
    ebpf: &mut Ebpf,
    tracefs_root: &Path,
) -> Result<Vec<(&'static str, String)>, String> {
    if let Some(problem) = syscall_formats_problem(tracefs_root) {
        return Err(problem);
    }
    let mut attached = Vec::new();
    for p in &SYSCALL_PROGRAMS {
        let tp: &mut TracePoint = ebpf
            .program_mut(p.program)
            .ok_or_else(|| format!("{} missing from the eBPF object", p.program))?
            .try_into()
            .map_err(|e: ProgramError| error_chain(&e))?;
        tp.load()
            .map_err(|e| format!("{}: {}", p.program, ebpf::error_brief(&e)))?;
        for name in p.tracepoints {
            tp.attach("syscalls", name)
                .map_err(|e| format!("{} on {name}: {}", p.program, ebpf::error_brief(&e)))?;
        }
        let targets: Vec<String> = p
            .tracepoints
            .iter()
            .map(|t| format!("syscalls:{t}"))
            .collect();
        attached.push((p.program, targets.join(",")));
    }
    Ok(attached)
}
