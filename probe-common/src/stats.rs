//! Indexes of the per-CPU counters the programs keep so that nothing is lost silently.

/// A connection measurement or an RTT sample the socket histograms (`SOCK_HIST`) had no room
/// for: a new key past its limit.
pub const SOCK_HIST_FAILED: u32 = 0;
/// A socket could not be tracked because the connection map rejected the insert.
pub const CONN_INSERT_FAILED: u32 = 1;
/// A SYN could not be stamped because the SYN map rejected the insert.
pub const SYN_INSERT_FAILED: u32 = 2;
/// Connection measurements (handshakes, lifetimes, failed connects) counted into `SOCK_HIST`.
pub const CONN_MEASURED: u32 = 3;
/// Sockets that closed without the probe having seen them open (opened before it attached, or
/// evicted from the LRU map).
pub const UNTRACKED_CLOSE: u32 = 4;

/// An exchange record could not be reserved in its ring buffer.
pub const EXCHANGE_DROPS: u32 = 5;
/// A socket's exchange could not be tracked because the map rejected the insert.
pub const EXCHANGE_INSERT_FAILED: u32 = 6;
/// Exchange records written.
pub const EXCHANGES_SENT: u32 = 7;

/// Packets reaching a pod's veth that were seen before (at the uplink or another pod's veth):
/// matched across NAT.
pub const POD_IN_MATCHED: u32 = 8;
/// Packets reaching a pod's veth without an earlier sighting (started on the node itself, or
/// the earlier point is not attached, or NAT changed what the key is made of).
pub const POD_IN_UNMATCHED: u32 = 9;

/// Exchange records the rate limit (`--records-rate`) kept out of the ring buffer.
pub const EXCHANGES_RATE_LIMITED: u32 = 10;
/// Exchange records produced, counted before the rate limit: exactly `exchanges_sent` +
/// `exchange_drops` (ring full) + `exchanges_rate_limited`.
pub const EXCHANGES_PRODUCED: u32 = 11;

/// The LRU maps whose inserts and deletes are counted, in the order of their counters. The
/// kernel evicts from an LRU map without telling anyone; userspace derives the evictions as
/// inserted − deleted − entries still present (see `probe_user::evictions`).
pub const LRU_MAPS: [&str; 10] = [
    "CONNS",
    "SYNS",
    "SK_FLOW",
    "FLOW_COOKIE",
    "EXCHANGES",
    "PKT_SEEN",
    "FLOW_SOCK",
    "PEER_FLOW",
    "FD_FLOW",
    "EARLY_REQUESTS",
];
pub const LRU_CONNS: u32 = 0;
pub const LRU_SYNS: u32 = 1;
pub const LRU_SK_FLOW: u32 = 2;
pub const LRU_FLOW_COOKIE: u32 = 3;
pub const LRU_EXCHANGES: u32 = 4;
pub const LRU_PKT_SEEN: u32 = 5;
pub const LRU_FLOW_SOCK: u32 = 6;
pub const LRU_PEER_FLOW: u32 = 7;
pub const LRU_FD_FLOW: u32 = 8;
pub const LRU_EARLY_REQUESTS: u32 = 9;
const LRU_FIRST: u32 = 12;

/// Counter of new keys written into LRU map `map` (an update of a present key is not one).
pub const fn lru_inserted(map: u32) -> u32 {
    LRU_FIRST + 2 * map
}

/// Counter of keys the programs deleted from LRU map `map` (a delete that found nothing,
/// because the kernel had evicted the key, is not one).
pub const fn lru_deleted(map: u32) -> u32 {
    LRU_FIRST + 2 * map + 1
}

/// Connections whose first payload was a TLS ClientHello (or, seen mid-stream, a TLS record).
pub const TLS_CONNECTIONS: u32 = LRU_FIRST + 2 * LRU_MAPS.len() as u32;
/// TLS connections whose records could not be followed (see `tls`): none of their exchanges
/// are reported.
pub const TLS_LOST: u32 = TLS_CONNECTIONS + 1;

/// Exchanges whose record was not sent and whose hops went to `EXCHANGE_HIST` instead.
pub const EXCHANGES_AGGREGATED: u32 = TLS_LOST + 1;
/// Of those, hop values `EXCHANGE_HIST` had no room for (its key limit): lost to the series.
pub const EXCHANGE_HIST_FAILED: u32 = TLS_LOST + 2;

pub const COUNT: u32 = TLS_LOST + 3;

pub const NAMES: [&str; COUNT as usize] = [
    "sock_hist_failed",
    "conn_insert_failed",
    "syn_insert_failed",
    "conn_measured",
    "untracked_close",
    "exchange_drops",
    "exchange_insert_failed",
    "exchanges_sent",
    "pod_in_matched",
    "pod_in_unmatched",
    "exchanges_rate_limited",
    "exchanges_produced",
    "lru_conns_inserted",
    "lru_conns_deleted",
    "lru_syns_inserted",
    "lru_syns_deleted",
    "lru_sk_flow_inserted",
    "lru_sk_flow_deleted",
    "lru_flow_cookie_inserted",
    "lru_flow_cookie_deleted",
    "lru_exchanges_inserted",
    "lru_exchanges_deleted",
    "lru_pkt_seen_inserted",
    "lru_pkt_seen_deleted",
    "lru_flow_sock_inserted",
    "lru_flow_sock_deleted",
    "lru_peer_flow_inserted",
    "lru_peer_flow_deleted",
    "lru_fd_flow_inserted",
    "lru_fd_flow_deleted",
    "lru_early_requests_inserted",
    "lru_early_requests_deleted",
    "tls_connections",
    "tls_lost",
    "exchanges_aggregated",
    "exchange_hist_failed",
];

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn lru_counters_are_named_after_their_map() {
        for (i, map) in LRU_MAPS.iter().enumerate() {
            let m = map.to_ascii_lowercase();
            assert_eq!(
                NAMES[lru_inserted(i as u32) as usize],
                format!("lru_{m}_inserted")
            );
            assert_eq!(
                NAMES[lru_deleted(i as u32) as usize],
                format!("lru_{m}_deleted")
            );
        }
        assert_eq!(
            NAMES[EXCHANGES_RATE_LIMITED as usize],
            "exchanges_rate_limited"
        );
    }
}
