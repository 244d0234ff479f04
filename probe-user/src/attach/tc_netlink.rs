//! The clsact qdisc and its BPF filters through rtnetlink (kernels before 6.6): what aya does
//! not offer — listing filters, deleting one, deleting the qdisc — without the `tc` binary,
//! which a minimal image does not have; and a veth for `check` to attach to where
//! it may not make a network namespace of its own. Runs in the calling thread's network
//! namespace.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage},
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The clsact qdisc's own handle (`ffff:`).
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// A direction of the clsact qdisc: where its filters hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Self; 2] = [Self::Ingress, Self::Egress];

    fn parent(self) -> TcHandle {
        TcHandle {
            major: 0xffff,
            minor: match self {
                Self::Ingress => TcHandle::MIN_INGRESS,
                Self::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// A filter on a clsact direction, as the kernel lists it.
#[derive(Debug, Clone)]
pub struct Filter {
    pub direction: Direction,
    /// Priority and protocol, as the kernel packs them (`tcm_info`): a delete names both.
    info: u32,
    handle: TcHandle,
    pub kind: String,
    /// The BPF program's name as attached (`TCA_BPF_NAME`), for `bpf` filters.
    pub bpf_name: Option<String>,
}

impl Filter {
    pub fn priority(&self) -> u16 {
        (self.info >> 16) as u16
    }
}

struct Route {
    socket: Socket,
    seq: u32,
}

impl Route {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and collects the messages of its answer until the ACK or the end of
    /// the dump; a negative errno in the answer is the request's error.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut answer = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut at = 0;
            while at < bytes.len() {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                if length == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message of length 0",
                    ));
                }
                at += length;
                if message.header.sequence_number != self.seq {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(m) => answer.push(m),
                    NetlinkPayload::Done(_) => return Ok(answer),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answer),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The filters on the clsact qdisc of interface `ifindex`, both directions; none when the
/// interface has no clsact qdisc.
pub fn filters(ifindex: u32) -> io::Result<Vec<Filter>> {
    let mut route = Route::open()?;
    let mut found = Vec::new();
    for direction in Direction::BOTH {
        let mut query = TcMessage::with_index(ifindex as i32);
        query.header.parent = direction.parent();
        let answer = match route.request(
            RouteNetlinkMessage::GetTrafficFilter(query),
            NLM_F_REQUEST | NLM_F_DUMP,
        ) {
            Ok(a) => a,
            // No clsact qdisc: nothing hangs there.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(e) => return Err(e),
        };
        for message in answer {
            let RouteNetlinkMessage::NewTrafficFilter(m) = message else {
                continue;
            };
            let mut kind = String::new();
            let mut bpf_name = None;
            for attribute in &m.attributes {
                match attribute {
                    TcAttribute::Kind(k) => kind.clone_from(k),
                    TcAttribute::Options(options) => {
                        for option in options {
                            if let TcOption::Bpf(TcFilterBpfOption::ProgName(n)) = option {
                                bpf_name = Some(n.clone());
                            }
                        }
                    }
                    _ => {}
                }
            }
            // A dump lists a priority's chain head (handle 0) beside its filters.
            if u32::from(m.header.handle) == 0 {
                continue;
            }
            found.push(Filter {
                direction,
                info: m.header.info,
                handle: m.header.handle,
                kind,
                bpf_name,
            });
        }
    }
    Ok(found)
}

/// Deletes one filter [`filters`] listed.
pub fn delete_filter(ifindex: u32, filter: &Filter) -> io::Result<()> {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = filter.direction.parent();
    message.header.handle = filter.handle;
    message.header.info = filter.info;
    message
        .attributes
        .push(TcAttribute::Kind(filter.kind.clone()));
    Route::open()?
        .request(
            RouteNetlinkMessage::DelTrafficFilter(message),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(drop)
}

/// Whether interface `ifindex` has a clsact qdisc.
pub fn has_clsact(ifindex: u32) -> io::Result<bool> {
    let answer = Route::open()?.request(
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(ifindex as i32)),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    Ok(answer.iter().any(|m| match m {
        RouteNetlinkMessage::NewQueueDiscipline(q) => {
            q.header.index == ifindex as i32
                && q.header.parent == TcHandle::CLSACT
                && q.attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact"))
        }
        _ => false,
    }))
}

/// Deletes interface `ifindex`'s clsact qdisc, and with it every filter on it.
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = TcHandle::CLSACT;
    message.header.handle = CLSACT_HANDLE;
    message.attributes.push(TcAttribute::Kind("clsact".into()));
    Route::open()?
        .request(
            RouteNetlinkMessage::DelQueueDiscipline(message),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(drop)
}

/// Creates a veth pair `name` / `name`p (down, no address: nothing reaches it; veth is what
/// every CNI's node has, where the dummy driver may be missing) and returns `name`'s index.
pub fn add_veth(name: &str) -> io::Result<u32> {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(format!("{name}p")));
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.into()));
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    Route::open()?.request(
        RouteNetlinkMessage::NewLink(message),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )?;
    nix::net::if_::if_nametoindex(name).map_err(io::Error::from)
}

/// Deletes interface `ifindex` (a veth takes its peer along), and with it anything attached.
pub fn delete_link(ifindex: u32) -> io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    Route::open()?
        .request(
            RouteNetlinkMessage::DelLink(message),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(drop)
}
