//! A TCP packet's IP and TCP headers, for every observation point. Each `bpf_skb_load_bytes`
//! is a helper call and a copy, and the socket programs spent more of their time in them than
//! in anything but map lookups (`cargo xtask bench-probe`, perf), so the headers come in one
//! load where the packet allows (IPv4 without options; IPv6 and IPv4 with options take two),
//! and the socket and TC points share them.

use aya_ebpf::programs::sk_buff::SkBuff;
use probe_common::{
    conn::{AF_INET, AF_INET6},
    hist::PktKey,
};

const IPPROTO_TCP: u8 = 6;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_HLEN: usize = 14;

/// The fields the programs use, as the packet carries them (source and destination, not
/// local and remote).
pub struct Tcp {
    pub family: u16,
    /// IPv4 addresses fill the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Sequence and acknowledgement numbers in network byte order, as loaded.
    pub seq_be: u32,
    pub ack_be: u32,
    pub flags: u8,
    /// Payload bytes: the IP length less the headers (a TSO super-segment's whole payload).
    pub payload: u32,
    /// Where the payload starts in the skb, for the programs that read its first bytes (TLS
    /// record headers).
    pub payload_off: u32,
}

impl Tcp {
    /// What NAT does not change (see `datapath`).
    pub fn pkt_key(&self) -> PktKey {
        PktKey {
            seq: self.seq_be,
            ack: self.ack_be,
            len: self.payload as u16,
            flags: self.flags,
            _pad: 0,
        }
    }
}

#[repr(C)]
struct Ipv4 {
    version_ihl: u8,
    tos: u8,
    total_len: u16,
    id: u16,
    frag: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
struct Ipv6 {
    version_class_flow: u32,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

#[repr(C)]
struct TcpHeader {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    data_offset: u8,
    flags: u8,
    window: u16,
    check: u16,
    urgent: u16,
}

/// IPv4 without options: both headers in one load.
#[repr(C)]
struct Ipv4Tcp {
    ip: Ipv4,
    tcp: TcpHeader,
}

fn tcp_fields(
    t: &TcpHeader,
    l4: usize,
    family: u16,
    src: [u8; 16],
    dst: [u8; 16],
    ip_payload: u32,
) -> Tcp {
    let doff = (t.data_offset >> 4) as u32 * 4;
    Tcp {
        family,
        src,
        dst,
        sport: u16::from_be(t.sport),
        dport: u16::from_be(t.dport),
        seq_be: t.seq,
        ack_be: t.ack,
        flags: t.flags,
        payload: ip_payload.saturating_sub(doff),
        payload_off: l4 as u32 + doff,
    }
}

/// An IPv4 address in the first 4 bytes of 16. Built from words: filling a zeroed array
/// byte-wise made LLVM call a `memset` subprogram twice per packet, 3–4 % of the socket
/// programs' time (perf).
#[inline(always)]
fn widen(v4: [u8; 4]) -> [u8; 16] {
    let words: [u32; 4] = [u32::from_ne_bytes(v4), 0, 0, 0];
    // SAFETY: same size, and every bit pattern is a valid `[u8; 16]`.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// The headers of a TCP packet whose IP header starts at `l3`; which IP version comes from
/// the skb's protocol, so no load is spent on it.
#[inline(always)]
fn at(skb: &SkBuff, l3: usize) -> Result<Tcp, i64> {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let protocol = u16::from_be(unsafe { (*skb.skb).protocol } as u16);
    match protocol {
        ETH_P_IP => {
            let both = skb.load::<Ipv4Tcp>(l3)?;
            let ihl = (both.ip.version_ihl & 0x0f) as usize * 4;
            if both.ip.protocol != IPPROTO_TCP || ihl < 20 {
                return Err(0);
            }
            let (src, dst) = (widen(both.ip.src), widen(both.ip.dst));
            let ip_payload = (u16::from_be(both.ip.total_len) as u32).saturating_sub(ihl as u32);
            if ihl == 20 {
                Ok(tcp_fields(
                    &both.tcp,
                    l3 + ihl,
                    AF_INET,
                    src,
                    dst,
                    ip_payload,
                ))
            } else {
                // Options push the TCP header past the bytes loaded.
                let tcp = skb.load::<TcpHeader>(l3 + ihl)?;
                Ok(tcp_fields(&tcp, l3 + ihl, AF_INET, src, dst, ip_payload))
            }
        }
        ETH_P_IPV6 => {
            let ip = skb.load::<Ipv6>(l3)?;
            // Extension headers before TCP are rare; such packets are not tracked.
            if ip.next_header != IPPROTO_TCP {
                return Err(0);
            }
            let tcp = skb.load::<TcpHeader>(l3 + 40)?;
            let payload = u16::from_be(ip.payload_len) as u32;
            Ok(tcp_fields(&tcp, l3 + 40, AF_INET6, ip.src, ip.dst, payload))
        }
        _ => Err(0),
    }
}

/// A packet that starts at its IP header (`cgroup_skb`).
#[inline(always)]
pub fn at_l3(skb: &SkBuff) -> Result<Tcp, i64> {
    at(skb, 0)
}

/// A packet that starts at its Ethernet header (TC).
#[inline(always)]
pub fn at_l2(skb: &SkBuff) -> Result<Tcp, i64> {
    at(skb, ETH_HLEN)
}
