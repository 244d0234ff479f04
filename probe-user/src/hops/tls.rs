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

/// A handshake exchange's times.
pub fn times(x: &Exchange) -> hopprobe_formats::records::HandshakeTimes {
    hopprobe_formats::records::HandshakeTimes {
        client_first_ns: x.req_first_ns,
        client_last_ns: x.req_last_ns,
        server_first_ns: x.resp_first_ns,
        server_last_ns: x.resp_last_ns,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hops::HopAggregator, names::cgroup::Resolver};
    use probe_common::{
        conn::{AF_INET, FlowKey},
        exchange::{KIND_TLS_HANDSHAKE, PHASE_RESPONSE},
        tls::TLS_ON,
    };

    fn handshake(tls: u8, t: [u64; 4]) -> Exchange {
        Exchange {
            req_first_ns: t[0],
            req_last_ns: t[1],
            resp_first_ns: t[2],
            resp_last_ns: t[3],
            req_bytes: 500,
            resp_bytes: 3000,
            first_read_ns: 0,
            cgroup_id: 7,
            cookie: 1,
            flow: FlowKey {
                local_addr: [10, 78, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                remote_addr: [10, 77, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                local_port: 8443,
                remote_port: 40000,
                family: AF_INET,
                _pad: 0,
            },
            role: ROLE_SERVER,
            phase: PHASE_RESPONSE,
            kind: KIND_TLS_HANDSHAKE,
            tls,
            _pad: [0; 4],
        }
    }

    fn series(agg: &mut HopAggregator, hop: Hop) -> Vec<u64> {
        agg.summaries(&mut Resolver::new("/nonexistent".into()))
            .into_iter()
            .filter(|h| h.hop == hop)
            .map(|h| (h.latency.max_us * 1e3).round() as u64)
            .collect()
    }

    #[test]
    fn a_handshake_is_its_own_series_and_never_an_exchange() {
        let mut agg = HopAggregator::default();
        // TLS 1.3: ClientHello at 0, the server's flight 100..300 µs, the client's Finished at
        // 700 µs.
        agg.record_tls(&handshake(TLS_ON | TLS_13, [0, 700_000, 100_000, 300_000]));
        // TLS 1.2 full: the server's second flight (at 900 µs) answers the client's (600 µs).
        agg.record_tls(&handshake(
            TLS_ON | TLS_RESUMED,
            [0, 600_000, 100_000, 900_000],
        ));
        assert_eq!(agg.exchanges, 0);
        assert_eq!(
            agg.tls,
            Counts {
                handshakes: 2,
                resumed: 1,
                tls13: 1,
                client_auth: 0
            }
        );
        let handshake = series(&mut agg, Hop::TlsHandshake);
        assert_eq!(handshake.len(), 1, "one series per serving port");
        // The larger of 300 µs (1.3) and 100 + 300 µs (1.2: both server turns), within the
        // histogram's precision.
        let near = |got: u64, want: u64| got.abs_diff(want) <= want / 100;
        assert!(near(handshake[0], 400_000), "{handshake:?}");
        let finish = series(&mut agg, Hop::TlsClientFinish);
        assert!(finish.len() == 1 && near(finish[0], 400_000), "{finish:?}");
        let r = record(&handshake_exchange());
        assert_eq!(
            (r.version, r.resumed, r.record),
            ("1.3", false, "tls_handshake")
        );
    }

    fn handshake_exchange() -> Exchange {
        handshake(TLS_ON | TLS_13, [0, 1, 2, 3])
    }
}
