//! App queue wait on kernels without `sock:sock_recv_length` (before 6.12): syscall
//! tracepoints, which every kernel hopprobe supports has.
//!
//! - `accept`/`accept4` exit: the new fd's socket is found by the peer address the kernel
//!   wrote to the caller's buffer, looked up in `PEER_FLOW` (passive sockets by remote address,
//!   from the `inet_sock_set_state` tracepoint); `(tgid, fd)` → flow goes into `FD_FLOW`.
//! - `read`/`readv`/`recvfrom`/`recvmsg`: the entry remembers the thread's fd when it is one
//!   of those; the exit, when it returned data, marks the first read of the socket's request
//!   (as `sock_recv_length` does).
//! - `close`: forgets the fd.
//!
//! Not named here: accepts that pass no address buffer, fds that were dup'ed or passed to
//! another process, and sockets accepted before hopprobe attached. Their reads are timed by
//! `hp_tcp_rcv_space` (`tracepoints.rs`), which defers to this path only for the reads whose
//! entry found the fd (`READS`).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use probe_common::{
    conn::{AF_INET, AF_INET6, PeerKey},
    layout::syscalls::{FD, RET, UPEER_SOCKADDR},
    stats::LRU_FD_FLOW,
};

use crate::{
    maps::{ACCEPT_ADDR, FD_FLOW, PEER_FLOW, READS, lru_insert, lru_remove},
    tracepoints::{mark_first_read, read_field},
};

fn fd_key(fd: u64) -> u64 {
    let tgid = bpf_get_current_pid_tgid() >> 32;
    (tgid << 32) | (fd & 0xffff_ffff)
}

fn pid_tgid() -> u64 {
    bpf_get_current_pid_tgid()
}

/// `accept(fd, addr, len)`, `accept4(fd, addr, len, flags)`: remember where the peer's
/// address will be written.
#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn hp_sys_enter_accept(ctx: TracePointContext) -> u32 {
    // SAFETY: offset checked against the format by userspace; the helper bounds the read.
    if let Ok(addr) = unsafe { read_field(&ctx, UPEER_SOCKADDR) }
        && addr != 0
    {
        let _ = ACCEPT_ADDR.insert(&pid_tgid(), &addr, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn hp_sys_exit_accept(ctx: TracePointContext) -> u32 {
    let id = pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(addr) = (unsafe { ACCEPT_ADDR.get(&id) }).copied() else {
        return 0;
    };
    let _ = ACCEPT_ADDR.remove(&id);
    // SAFETY: as above.
    let Ok(fd) = (unsafe { read_field(&ctx, RET) }) else {
        return 0;
    };
    if fd < 0 {
        return 0;
    }
    let Some(peer) = peer(addr) else {
        return 0;
    };
    // SAFETY: the value is copied out at once.
    if let Some(flow) = unsafe { PEER_FLOW.get(&peer) }.copied() {
        let _ = lru_insert(&FD_FLOW, LRU_FD_FLOW, &fd_key(fd as u64), &flow);
    }
    0
}

/// The peer address `accept` wrote to user memory at `addr`.
fn peer(addr: u64) -> Option<PeerKey> {
    // SAFETY: user memory read through the helper, which fails cleanly on a bad pointer.
    let buf: [u8; 24] = unsafe { bpf_probe_read_user(addr as *const [u8; 24]) }.ok()?;
    let family = u16::from_ne_bytes([buf[0], buf[1]]);
    let port = u16::from_be_bytes([buf[2], buf[3]]);
    let mut key = PeerKey {
        addr: [0; 16],
        port,
        family,
        _pad: 0,
    };
    if family == AF_INET {
        key.addr[..4].copy_from_slice(&buf[4..8]);
    } else if family == AF_INET6 {
        key.addr.copy_from_slice(&buf[8..24]);
        key.unmap_v4();
    } else {
        return None;
    }
    Some(key)
}

/// `read`, `readv`, `recvfrom`, `recvmsg` (fd first): remember an accepted socket's fd.
#[tracepoint(category = "syscalls", name = "sys_enter_read")]
pub fn hp_sys_enter_recv(ctx: TracePointContext) -> u32 {
    // SAFETY: as above.
    let Ok(fd) = (unsafe { read_field(&ctx, FD) }) else {
        return 0;
    };
    // SAFETY: the value is copied out at once.
    if let Some(flow) = unsafe { FD_FLOW.get(&fd_key(fd)) }.copied() {
        let _ = READS.insert(&pid_tgid(), &flow, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn hp_sys_exit_recv(ctx: TracePointContext) -> u32 {
    let id = pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(flow) = (unsafe { READS.get(&id) }).copied() else {
        return 0;
    };
    let _ = READS.remove(&id);
    // SAFETY: as above.
    if let Ok(ret) = unsafe { read_field(&ctx, RET) }
        && ret > 0
    {
        mark_first_read(&flow);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn hp_sys_enter_close(ctx: TracePointContext) -> u32 {
    // SAFETY: as above.
    if let Ok(fd) = unsafe { read_field(&ctx, FD) } {
        lru_remove(&FD_FLOW, LRU_FD_FLOW, &fd_key(fd));
    }
    0
}
