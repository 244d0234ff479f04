//! Request/response exchanges seen at a socket, without parsing payloads.
//!
//! On each TCP socket, bytes arriving after bytes were sent open a new request (server side);
//! bytes sent after bytes arrived open its response. A client socket is the mirror image. This
//! works for any protocol that alternates, and captures no payload. TLS alternates too, with its
//! handshake flights: on a TLS connection only application data records count (see `tls`), and
//! the handshake is reported as an exchange of its own kind.

use core::mem::size_of;

use crate::conn::FlowKey;

/// The socket received the first payload: it serves requests.
pub const ROLE_SERVER: u8 = 1;
/// The socket sent the first payload: it makes requests.
pub const ROLE_CLIENT: u8 = 2;

/// A tracked socket with no request yet (a TLS connection during its handshake).
pub const PHASE_NONE: u8 = 0;
pub const PHASE_REQUEST: u8 = 1;
pub const PHASE_RESPONSE: u8 = 2;

/// A request and its response.
pub const KIND_REQUEST: u8 = 0;
/// A TLS handshake: `req_first_ns`..`req_last_ns` are the client's handshake records (the
/// ClientHello to its Finished), `resp_first_ns`..`resp_last_ns` the server's.
pub const KIND_TLS_HANDSHAKE: u8 = 1;

/// Which hook times the reads of the sockets it can name (`READ_HOOK` map, written by
/// userspace once the hooks are attached); `tcp:tcp_rcv_space_adjust` times the rest.
/// None: `tcp_rcv_space_adjust` times every read.
pub const READ_HOOK_NONE: u32 = 0;
/// `sock:sock_recv_length`: names the sockets it saw become ESTABLISHED (`SK_FLOW`).
pub const READ_HOOK_RECV_LENGTH: u32 = 1;
/// The syscall tracepoints: name the fds they saw accepted (the thread's read is in `READS`).
pub const READ_HOOK_SYSCALLS: u32 = 2;

/// One exchange as the socket saw it; also the per-socket state while it is in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    pub req_first_ns: u64,
    pub req_last_ns: u64,
    /// 0 while no response byte has been seen.
    pub resp_first_ns: u64,
    pub resp_last_ns: u64,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    /// Server side: when the process first read the request; client side: when it first read
    /// the response (the read hooks: `sock:sock_recv_length`, the syscall fallback,
    /// `tcp:tcp_rcv_space_adjust`); 0 when not seen. Splits the app's time into queue wait and
    /// processing, and a call's time from the caller's wake-up after it.
    pub first_read_ns: u64,
    pub cgroup_id: u64,
    pub cookie: u64,
    /// Local and remote as seen by this socket (after any NAT in front of it).
    pub flow: FlowKey,
    pub role: u8,
    pub phase: u8,
    /// `KIND_*`.
    pub kind: u8,
    /// `tls::TLS_*` bits: 0 on a plaintext connection.
    pub tls: u8,
    /// Explicit so the struct has no implicit padding.
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<Exchange>() == 120);

#[cfg(feature = "user")]
// SAFETY: repr(C) plain data without implicit padding (asserted above).
unsafe impl aya::Pod for Exchange {}

/// The socket hops of an exchange whose record was not sent (over `--records-rate`, or the
/// ring full), counted in the kernel's histograms instead (`EXCHANGE_HIST`): the hop series
/// count every exchange the kernel saw, the records are what a user asked to keep.
pub const EXHOP_APP: u8 = 1;
pub const EXHOP_APP_QUEUE: u8 = 2;
pub const EXHOP_APP_PROCESSING: u8 = 3;
pub const EXHOP_UPSTREAM: u8 = 4;
pub const EXHOP_UPSTREAM_READ_WAIT: u8 = 5;

/// Key of one such histogram: the series the record would have gone to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExHistKey {
    pub cgroup_id: u64,
    /// The destination as the socket addressed it, for the upstream hops; zero for the app's.
    pub remote_addr: [u8; 16],
    /// The serving port (app hops) or the destination's (upstream hops).
    pub port: u16,
    pub family: u16,
    /// `EXHOP_*`.
    pub hop: u8,
    /// Explicit so the struct has no implicit padding (hash keys compare all bytes).
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ExHistKey>() == 32);

#[cfg(feature = "user")]
// SAFETY: repr(C) plain data without implicit padding (asserted above).
unsafe impl aya::Pod for ExHistKey {}
