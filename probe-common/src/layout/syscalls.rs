//! `syscalls:*` tracepoints, the fallback that sees reads where `sock:sock_recv_length` is
//! missing. Every `sys_enter_*` record has the arguments after the common header and
//! `__syscall_nr`, each 8 bytes whatever its C type; every `sys_exit_*` has `ret` there.

use crate::layout::{Field, FieldLayout, Tracepoint};

/// `fd`, the first argument of `read`, `readv`, `recvfrom`, `recvmsg` and `close`.
pub const FD: Field<u64> = Field::new("fd", 16);
/// The second argument of `accept` and `accept4`: where the peer's address is written.
pub const UPEER_SOCKADDR: Field<u64> = Field::new("upeer_sockaddr", 24);
/// What a syscall returned.
pub const RET: Field<i64> = Field::new("ret", 16);

const ENTER_FD: &[FieldLayout] = &[FD.layout()];
const ENTER_ACCEPT: &[FieldLayout] = &[UPEER_SOCKADDR.layout()];
const EXIT: &[FieldLayout] = &[RET.layout()];

const fn syscall(name: &'static str, fields: &'static [FieldLayout]) -> Tracepoint {
    Tracepoint::fixed("syscalls", name, fields)
}

pub const SYS_ENTER_ACCEPT: Tracepoint = syscall("sys_enter_accept", ENTER_ACCEPT);
pub const SYS_ENTER_ACCEPT4: Tracepoint = syscall("sys_enter_accept4", ENTER_ACCEPT);
pub const SYS_EXIT_ACCEPT: Tracepoint = syscall("sys_exit_accept", EXIT);
pub const SYS_EXIT_ACCEPT4: Tracepoint = syscall("sys_exit_accept4", EXIT);
pub const SYS_ENTER_READ: Tracepoint = syscall("sys_enter_read", ENTER_FD);
pub const SYS_ENTER_READV: Tracepoint = syscall("sys_enter_readv", ENTER_FD);
pub const SYS_ENTER_RECVFROM: Tracepoint = syscall("sys_enter_recvfrom", ENTER_FD);
pub const SYS_ENTER_RECVMSG: Tracepoint = syscall("sys_enter_recvmsg", ENTER_FD);
pub const SYS_EXIT_READ: Tracepoint = syscall("sys_exit_read", EXIT);
pub const SYS_EXIT_READV: Tracepoint = syscall("sys_exit_readv", EXIT);
pub const SYS_EXIT_RECVFROM: Tracepoint = syscall("sys_exit_recvfrom", EXIT);
pub const SYS_EXIT_RECVMSG: Tracepoint = syscall("sys_exit_recvmsg", EXIT);
pub const SYS_ENTER_CLOSE: Tracepoint = syscall("sys_enter_close", ENTER_FD);
