//! Per-connection exchanges seen by the TC programs (node uplink, pods' veths), written to
//! `--records` as `"record":"datapath"` lines for `hopprobe report` to join loadgen's requests
//! with the pods' sockets across NAT (see `probe_common::tcflow`).

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use probe_common::{
    hist::{POINT_NODE_IN, POINT_NODE_OUT, POINT_POD_IN, POINT_POD_OUT},
    tcflow::{TC_STAT_NAMES, TcExchange},
};

use crate::{hops::addr, names::Metadata};

/// One exchange at one TC point, as written to the records file and read by the report.
pub use hopprobe_formats::records::{DATAPATH as RECORD_KIND, DatapathRecord, HandshakeTimes};

pub fn point_name(point: u32) -> &'static str {
    match point {
        POINT_NODE_IN => "node_in",
        POINT_NODE_OUT => "node_out",
        POINT_POD_IN => "pod_in",
        POINT_POD_OUT => "pod_out",
        _ => "unknown",
    }
}

/// The records line of an exchange at a TC point, with the interface's and pod's names.
pub fn record(
    x: &TcExchange,
    ifnames: &BTreeMap<u32, String>,
    metadata: &Metadata,
) -> DatapathRecord<&'static str> {
    let interface = ifnames.get(&x.key.ifindex).cloned();
    let pod = interface
        .as_deref()
        .and_then(|i| metadata.interface(i))
        .map(|m| m.pod.clone());
    let answered = x.resp_first_ns != 0;
    DatapathRecord {
        record: RECORD_KIND,
        point: point_name(x.point),
        ifindex: x.key.ifindex,
        interface,
        pod,
        client: addr::from_bytes(x.key.client_addr, x.key.client_port, x.ip_version == 4),
        server: addr::from_bytes(x.key.server_addr, x.key.server_port, x.ip_version == 4),
        isn: x.isn,
        index: x.index,
        syn_ns: x.syn_ns,
        synack_ns: (x.synack_ns != 0).then_some(x.synack_ns),
        req_first_ns: x.req_first_ns,
        req_last_ns: x.req_last_ns,
        resp_first_ns: answered.then_some(x.resp_first_ns),
        resp_last_ns: answered.then_some(x.resp_last_ns),
        req_bytes: x.req_bytes,
        resp_bytes: x.resp_bytes,
        tls: x.tls != 0,
        tls_handshake: (x.tls_client_first_ns != 0).then_some(HandshakeTimes {
            client_first_ns: x.tls_client_first_ns,
            client_last_ns: x.tls_client_last_ns,
            server_first_ns: x.tls_server_first_ns,
            server_last_ns: x.tls_server_last_ns,
        }),
    }
}

/// The TC tracking's own counters, by name.
pub fn read_counters(stats: &PerCpuArray<MapData, u64>) -> BTreeMap<&'static str, u64> {
    crate::attach::probe::sum_per_cpu(stats, &TC_STAT_NAMES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::tcflow::TcFlowKey;

    #[test]
    fn a_kernel_exchange_becomes_a_record_with_names() {
        let mut client_addr = [0u8; 16];
        client_addr[..4].copy_from_slice(&[10, 77, 0, 2]);
        let mut server_addr = [0u8; 16];
        server_addr[..4].copy_from_slice(&[10, 77, 0, 1]);
        let x = TcExchange {
            key: TcFlowKey {
                client_addr,
                server_addr,
                ifindex: 3,
                client_port: 40000,
                server_port: 30080,
            },
            point: POINT_NODE_IN,
            isn: 123,
            index: 0,
            req_seq_end: 0,
            resp_seq_end: 0,
            ip_version: 4,
            syn_ns: 1,
            synack_ns: 0,
            req_first_ns: 2,
            req_last_ns: 3,
            resp_first_ns: 0,
            resp_last_ns: 0,
            req_bytes: 10,
            resp_bytes: 0,
            tls: 0,
            _pad: 0,
            tls_client_first_ns: 0,
            tls_client_last_ns: 0,
            tls_server_first_ns: 0,
            tls_server_last_ns: 0,
        };
        let names = BTreeMap::from([(3, "eth0".to_string())]);
        let r = record(&x, &names, &Metadata::default());
        assert_eq!(r.client.to_string(), "10.77.0.2:40000");
        assert_eq!(r.server.to_string(), "10.77.0.1:30080");
        assert_eq!(r.point, "node_in");
        assert_eq!(r.interface.as_deref(), Some("eth0"));
        assert_eq!(r.resp_first_ns, None);
        let line = serde_json::to_string(&r).expect("json");
        assert!(line.contains("\"record\":\"datapath\""), "{line}");
    }
}
