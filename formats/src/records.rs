//! hopprobe's records (`hopprobe run --records FILE`, read by `hopprobe report --probe`):
//! JSON Lines, one line per exchange seen at a socket ([`SockExchange`]), at a TC point
//! ([`DatapathRecord`], told apart by `"record":"datapath"`), or per TLS handshake seen at a
//! socket ([`TlsHandshake`], `"record":"tls_handshake"`). Times are the node's CLOCK_MONOTONIC
//! in nanoseconds.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ReadError;

/// `record` of a datapath line; socket exchange lines have no `record`.
pub const DATAPATH: &str = "datapath";
/// `record` of a TLS handshake line.
pub const TLS_HANDSHAKE: &str = "tls_handshake";
/// `role` of an exchange on a socket that accepted its connection.
pub const SERVER: &str = "server";
/// `role` of an exchange on a socket that connected.
pub const CLIENT: &str = "client";

/// One request/response exchange on one socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SockExchange<S = String> {
    /// The socket's cookie (unique while the kernel runs).
    pub cookie: u64,
    pub cgroup_id: u64,
    /// [`SERVER`] or [`CLIENT`].
    pub role: S,
    /// The socket's own address, as it sees it (after any NAT in front of it).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub req_first_ns: u64,
    pub req_last_ns: u64,
    /// `None`: the connection ended before any response byte.
    pub resp_first_ns: Option<u64>,
    pub resp_last_ns: Option<u64>,
    /// Server side: when the process first read the request; client side: when it first read
    /// the response. `None` when no read hook saw it.
    pub first_read_ns: Option<u64>,
    #[serde(default)]
    pub req_bytes: u64,
    #[serde(default)]
    pub resp_bytes: u64,
    /// The exchange travelled in TLS application data records (bytes count the records).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A TLS handshake as one socket saw it, from the records' plaintext headers: the client's
/// handshake records (ClientHello to its Finished) and the server's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsHandshake<S = String> {
    /// Always [`TLS_HANDSHAKE`].
    pub record: S,
    pub cookie: u64,
    pub cgroup_id: u64,
    /// [`SERVER`]: this socket accepted the connection (it received the ClientHello).
    pub role: S,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `1.2` or `1.3`.
    pub version: S,
    /// A resumed session (TLS 1.3 pre-shared key, TLS 1.2 abbreviated handshake).
    pub resumed: bool,
    /// TLS 1.3: the client sent a certificate (mutual TLS).
    pub client_auth: bool,
    pub client_first_ns: u64,
    pub client_last_ns: u64,
    pub server_first_ns: u64,
    pub server_last_ns: u64,
    pub client_bytes: u64,
    pub server_bytes: u64,
}

impl<S: AsRef<str>> TlsHandshake<S> {
    /// ClientHello → the server's last handshake record, as this socket saw them.
    pub fn server_ns(&self) -> u64 {
        self.server_last_ns.saturating_sub(self.client_first_ns)
    }

    /// The server's last handshake record → the client's Finished, when the client finishes
    /// last (TLS 1.3, resumed TLS 1.2).
    pub fn client_finish_ns(&self) -> Option<u64> {
        (self.client_last_ns > self.server_last_ns)
            .then(|| self.client_last_ns - self.server_last_ns)
    }
}

impl<S: AsRef<str>> SockExchange<S> {
    pub fn is_server(&self) -> bool {
        self.role.as_ref() == SERVER
    }
}

/// One exchange at one TC point (node uplink, pods' veths), for joining loadgen's requests
/// with the pods' sockets across NAT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatapathRecord<S = String> {
    /// Always [`DATAPATH`]: tells these lines from socket exchanges.
    pub record: S,
    /// Where the connection's SYN passed: `node_in` (from outside, at the uplink), `pod_in`
    /// (into a pod, at its veth), `pod_out` (a pod's own outbound connection), `node_out`,
    /// `unknown`.
    pub point: S,
    pub ifindex: u32,
    pub interface: Option<String>,
    /// The pod behind the veth, from `--metadata` or the Kubernetes API.
    pub pod: Option<String>,
    /// The connection's 4-tuple at this point: the client sent the SYN.
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// The client's initial sequence number: the same at every point, whatever NAT did.
    pub isn: u32,
    /// Exchange number on the connection, from 0.
    pub index: u32,
    pub syn_ns: u64,
    /// When the server's SYN-ACK passed back; older records do not have it.
    #[serde(default)]
    pub synack_ns: Option<u64>,
    pub req_first_ns: u64,
    pub req_last_ns: u64,
    pub resp_first_ns: Option<u64>,
    pub resp_last_ns: Option<u64>,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    /// The connection is TLS: only application data records make its exchanges (and count
    /// in the bytes).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,
    /// Exchange 0 of a TLS connection: its handshake as this point saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_handshake: Option<HandshakeTimes>,
}

/// A TLS handshake's times at one point: the ClientHello's first byte and the client's last
/// handshake byte; the server's first and last handshake bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeTimes {
    pub client_first_ns: u64,
    pub client_last_ns: u64,
    pub server_first_ns: u64,
    pub server_last_ns: u64,
}

impl HandshakeTimes {
    /// The time the handshake spent on the server's side of this point: ClientHello in → the
    /// server's last handshake byte out, less the client's own round trip when the client
    /// sent a second flight before the server's last one (TLS 1.2's full handshake, whose
    /// second server flight answers it; its first is then timed to its first byte).
    pub fn server_side_ns(&self) -> u64 {
        if self.client_last_ns >= self.server_last_ns {
            self.server_last_ns.saturating_sub(self.client_first_ns)
        } else {
            self.server_first_ns.saturating_sub(self.client_first_ns)
                + self.server_last_ns.saturating_sub(self.client_last_ns)
        }
    }
}

/// One line of the records file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Record<S = String> {
    Exchange(SockExchange<S>),
    Datapath(DatapathRecord<S>),
    TlsHandshake(TlsHandshake<S>),
}

impl<'de> Deserialize<'de> for Record {
    /// By `record`: [`DATAPATH`], [`TLS_HANDSHAKE`] or none. ([`parse_line`] takes a shortcut for the lines as
    /// hopprobe writes them.)
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        match v.get("record") {
            None => SockExchange::deserialize(v).map(Record::Exchange),
            Some(k) if k == DATAPATH => DatapathRecord::deserialize(v).map(Record::Datapath),
            Some(k) if k == TLS_HANDSHAKE => TlsHandshake::deserialize(v).map(Record::TlsHandshake),
            Some(k) => return Err(D::Error::custom(format!("unknown record kind {k}"))),
        }
        .map_err(D::Error::custom)
    }
}

/// One line as hopprobe writes it. Records files are large: the lines hopprobe wrote parse
/// straight into their type; only a line that names a `record` some other way goes through
/// [`Record`]'s `Deserialize`.
pub fn parse_line(line: &str) -> Result<Record, serde_json::Error> {
    if line.contains(r#""record":"datapath""#) {
        serde_json::from_str(line).map(Record::Datapath)
    } else if line.contains(r#""record""#) {
        serde_json::from_str(line)
    } else {
        serde_json::from_str(line).map(Record::Exchange)
    }
}

/// The lines of a records file, split by kind, in the order of the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    pub exchanges: Vec<SockExchange>,
    pub datapath: Vec<DatapathRecord>,
    pub tls_handshakes: Vec<TlsHandshake>,
}

/// Reads a records file's text. Blank lines are skipped.
pub fn read(text: &str) -> Result<Records, ReadError> {
    let mut out = Records::default();
    for (n, line) in crate::lines(text) {
        match parse_line(line).map_err(|e| ReadError::line(n, "a hopprobe record", e))? {
            Record::Exchange(x) => out.exchanges.push(x),
            Record::Datapath(d) => out.datapath.push(d),
            Record::TlsHandshake(h) => out.tls_handshakes.push(h),
        }
    }
    Ok(out)
}
