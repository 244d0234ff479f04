//! Connection state kept by the `sock:inet_sock_set_state` program, and the flow keys the
//! programs share.

use core::mem::size_of;

/// Which side opened the connection; kept per socket in the kernel.
pub const SIDE_ACTIVE: u8 = 1;
pub const SIDE_PASSIVE: u8 = 2;

/// Set in [`ConnState::flags`] when a passive handshake was timed from the SYN seen by the
/// `cgroup_skb` ingress program rather than from the SYN_RECV transition (which happens only
/// when the final ACK arrives and so misses the round trip).
pub const FLAG_START_FROM_SYN: u8 = 1;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Per-socket state kept by the tracepoint program between transitions.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnState {
    pub start_ns: u64,
    /// 0 until the socket is established.
    pub established_ns: u64,
    pub cgroup_id: u64,
    pub side: u8,
    pub flags: u8,
    /// Explicit so the struct has no implicit padding.
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<ConnState>() == 32);

/// A TCP flow as seen from the receiving socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    /// Explicit so the struct has no implicit padding (hash keys compare all bytes).
    pub _pad: u16,
}
const _: () = assert!(size_of::<FlowKey>() == 40);

impl FlowKey {
    /// A dual-stack socket (a `[::]` listener's child) talking IPv4 shows v4-mapped addresses
    /// (`::ffff:a.b.c.d`), while its packets, which cgroup_skb keys flows by, are IPv4: such a
    /// flow is rewritten as the IPv4 flow it is.
    pub fn unmap_v4(&mut self) {
        if self.family == AF_INET6 && v4_mapped(&self.local_addr) && v4_mapped(&self.remote_addr) {
            self.family = AF_INET;
            self.local_addr = unmap(&self.local_addr);
            self.remote_addr = unmap(&self.remote_addr);
        }
    }
}

fn v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

fn unmap(a: &[u8; 16]) -> [u8; 16] {
    let mut v4 = [0u8; 16];
    v4[..4].copy_from_slice(&a[12..16]);
    v4
}

/// The remote end of a passive socket: how `accept`'s peer address finds the socket's flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
    /// Explicit so the struct has no implicit padding (hash keys compare all bytes).
    pub _pad: u32,
}
const _: () = assert!(size_of::<PeerKey>() == 24);

impl PeerKey {
    pub fn remote_of(flow: &FlowKey) -> Self {
        Self {
            addr: flow.remote_addr,
            port: flow.remote_port,
            family: flow.family,
            _pad: 0,
        }
    }

    /// As [`FlowKey::unmap_v4`], for the one address.
    pub fn unmap_v4(&mut self) {
        if self.family == AF_INET6 && v4_mapped(&self.addr) {
            self.family = AF_INET;
            self.addr = unmap(&self.addr);
        }
    }
}

/// When and for which cgroup the first SYN of a flow reached a listening socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SynSeen {
    pub ts_ns: u64,
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<SynSeen>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), fully initialised plain data without padding (asserted above).
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::SynSeen {}
}

/// Per-cgroup TCP event counters, indexed by the `TCP_*` constants.
pub type TcpCounters = [u64; 3];
pub const TCP_RETRANSMITS: usize = 0;
pub const TCP_RESETS_SENT: usize = 1;
pub const TCP_RESETS_RECEIVED: usize = 2;
