//! Socket addresses from the kernel's fixed 16-byte address fields.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use probe_common::conn::{AF_INET, FlowKey};

/// An IPv4 address sits in the first four bytes; the rest are zero.
pub fn from_bytes(bytes: [u8; 16], port: u16, v4: bool) -> SocketAddr {
    let ip = if v4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    SocketAddr::new(ip, port)
}

/// The local or the remote end of a socket's flow.
pub fn of_flow(flow: &FlowKey, local: bool) -> SocketAddr {
    let (bytes, port) = if local {
        (flow.local_addr, flow.local_port)
    } else {
        (flow.remote_addr, flow.remote_port)
    };
    from_bytes(bytes, port, flow.family == AF_INET)
}
