//! TLS handshakes seen at sockets (`probe_common::tls`): their own hop series and records,
//! never requests.

use probe_common::{
    exchange::{Exchange, ROLE_SERVER},
    tls::{TLS_13, TLS_CLIENT_AUTH, TLS_RESUMED},
};

use super::{Hop, HopKey, addr};

/// One line of `--records` for a handshake.
pub type Record = hopprobe_formats::records::TlsHandshake<&'static str>;

/// The records line of a handshake exchange (`KIND_TLS_HANDSHAKE`).
pub fn record(x: &Exchange) -> Record {
    use hopprobe_formats::records::{CLIENT, SERVER, TLS_HANDSHAKE};
    Record {
        record: TLS_HANDSHAKE,
        cookie: x.cookie,
        cgroup_id: x.cgroup_id,
        role: if x.role == ROLE_SERVER {
            SERVER
        } else {
            CLIENT
        },
        local: addr::of_flow(&x.flow, true),
        remote: addr::of_flow(&x.flow, false),
        version: if x.tls & TLS_13 != 0 { "1.3" } else { "1.2" },
        resumed: x.tls & TLS_RESUMED != 0,
        client_auth: x.tls & TLS_CLIENT_AUTH != 0,
        client_first_ns: x.req_first_ns,
        client_last_ns: x.req_last_ns,
        server_first_ns: x.resp_first_ns,
        server_last_ns: x.resp_last_ns,
        client_bytes: x.req_bytes,
        server_bytes: x.resp_bytes,
    }
}

/// The series a handshake's times go to: by serving port on the side that accepted, by peer on
/// the side that connected, as `app` and `upstream` are.
pub fn keys(x: &Exchange) -> [HopKey; 2] {
    let base = HopKey::of(x);
    [Hop::TlsHandshake, Hop::TlsClientFinish].map(|hop| HopKey {
        hop,
        ..base.clone()
    })
}

/// Counts of the handshakes seen, for the summary's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub handshakes: u64,
    pub resumed: u64,
    pub tls13: u64,
    pub client_auth: u64,
}

impl Counts {
    pub fn add(&mut self, x: &Exchange) {
        self.handshakes += 1;
        self.resumed += u64::from(x.tls & TLS_RESUMED != 0);
        self.tls13 += u64::from(x.tls & TLS_13 != 0);
        self.client_auth += u64::from(x.tls & TLS_CLIENT_AUTH != 0);
    }
}
