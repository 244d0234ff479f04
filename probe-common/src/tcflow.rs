//! Per-connection exchanges as the node's TC hooks see them (uplink, pods' host-side veths).
//!
//! A connection is named at each point by the 4-tuple it has there (kube-proxy's DNAT and
//! masquerade change it between points) and by the client's initial sequence number, which NAT
//! leaves alone. `hopprobe report` links the uplink's view of a request (the load generator's
//! 4-tuple) to the pod's (the socket's 4-tuple) through that number.

use core::mem::size_of;

/// A connection at one interface: the side that sent the SYN is the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcFlowKey {
    /// IPv4 uses the first four bytes.
    pub client_addr: [u8; 16],
    pub server_addr: [u8; 16],
    pub ifindex: u32,
    pub client_port: u16,
    pub server_port: u16,
}
const _: () = assert!(size_of::<TcFlowKey>() == 40);

/// One exchange of a connection at one interface; also the per-connection state in the kernel.
/// Request = client → server payload, response = server → client payload.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcExchange {
    pub key: TcFlowKey,
    /// Where the SYN was seen (`hist::POINT_*`).
    pub point: u32,
    /// The client's initial sequence number (the SYN's).
    pub isn: u32,
    /// Exchange number on this connection, from 0.
    pub index: u32,
    /// End (seq + len) of the furthest request / response payload seen: a segment that does
    /// not go beyond it is a retransmission and is not a new request.
    pub req_seq_end: u32,
    pub resp_seq_end: u32,
    /// 4 for IPv4, 6 for IPv6.
    pub ip_version: u32,
    pub syn_ns: u64,
    /// When the server's SYN-ACK passed (0: not seen): SYN → SYN-ACK is the handshake's time
    /// on the node's side of this point.
    pub synack_ns: u64,
    pub req_first_ns: u64,
    pub req_last_ns: u64,
    /// 0 while no response byte has passed.
    pub resp_first_ns: u64,
    pub resp_last_ns: u64,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    /// `tls::TLS_*` bits: 0 on a plaintext connection. On a TLS one only application data
    /// records make exchanges, and exchange 0 carries the handshake's times at this point.
    pub tls: u32,
    /// Explicit so the struct has no implicit padding.
    pub _pad: u32,
    /// The ClientHello's first byte, the client's last handshake byte, the server's first and
    /// last handshake bytes; 0 when not TLS or not complete.
    pub tls_client_first_ns: u64,
    pub tls_client_last_ns: u64,
    pub tls_server_first_ns: u64,
    pub tls_server_last_ns: u64,
}
const _: () = assert!(size_of::<TcExchange>() == 168);

/// Counters of the per-connection TC tracking (own map, `TC_FLOW_STATS`).
pub const TC_STAT_SENT: u32 = 0;
pub const TC_STAT_DROPS: u32 = 1;
pub const TC_STAT_COUNT: u32 = 2;
pub const TC_STAT_NAMES: [&str; TC_STAT_COUNT as usize] =
    ["datapath_exchanges_sent", "datapath_exchange_drops"];

#[cfg(feature = "user")]
// SAFETY: repr(C) plain data without implicit padding (asserted above).
unsafe impl aya::Pod for TcFlowKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for TcExchange {}
