//! Which hook tells hopprobe when a process reads a request from its socket (the split of the
//! `app` hop into `app_queue` and `app_processing`).
//!
//! Preferred: `sock:sock_recv_length` (Linux 6.12+), one program that knows the socket.
//! Fallback, on older kernels (6.1 on EKS): syscall tracepoints — `accept`/`accept4` map the
//! new fd to its flow by the peer address, `read`/`readv`/`recvfrom`/`recvmsg` mark the first
//! read, `close` forgets the fd (see `probe-ebpf/src/syscalls.rs`).
//! Either way, `tcp:tcp_rcv_space_adjust` (every kernel hopprobe supports) times the reads the
//! chosen hook cannot name: sockets opened before hopprobe attached and, with the fallback, fds
//! that were dup'ed.
//!
//! The programs of each way are in `programs::PROGRAMS` (`Need::OneOf`); `plan` picks the way.

/// `--app-reads`: which hook marks a request's first read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReadHook {
    /// `sock:sock_recv_length` where the kernel has it, else the syscall tracepoints.
    #[default]
    Auto,
    /// The syscall tracepoints even where `sock_recv_length` exists (to compare the two).
    Syscalls,
}
