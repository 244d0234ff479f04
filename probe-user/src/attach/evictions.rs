//! LRU evictions, which the kernel does not report.
//!
//! The programs count every new key they insert into an LRU map and every key they delete
//! (`stats::lru_inserted`, `stats::lru_deleted`); nothing else removes keys except the
//! kernel's eviction. So for each map, evicted = inserted − deleted − keys present now. After
//! the programs are detached the counts no longer move and the number is exact; while they run,
//! keys inserted or deleted during the count (it walks the map key by key) can move it by that
//! many either way, and it is clamped at 0.

use std::collections::BTreeMap;

use aya::{
    Pod,
    maps::{HashMap, IterableMap, MapData},
};
use probe_common::{
    conn::{ConnState, FlowKey, PeerKey, SynSeen},
    exchange::Exchange,
    hist::{PktKey, PktSeen},
    sockops::FlowSock,
    stats::{self, LRU_MAPS},
};

use crate::attach::probe::{AttachError, Probe};

/// The summary's name of each map's eviction count, in `LRU_MAPS` order.
pub const NAMES: [&str; LRU_MAPS.len()] = [
    "evicted_conns",
    "evicted_syns",
    "evicted_sk_flow",
    "evicted_flow_cookie",
    "evicted_exchanges",
    "evicted_pkt_seen",
    "evicted_flow_sock",
    "evicted_peer_flow",
    "evicted_fd_flow",
    "evicted_early_requests",
];

/// Something whose keys can be counted.
trait Keys {
    fn count_keys(&self) -> u64;
}

impl<K: Pod, V: Pod> Keys for HashMap<MapData, K, V> {
    fn count_keys(&self) -> u64 {
        // A key deleted while the walk stands on it restarts the walk at the first key; the
        // cap keeps a busy map from keeping it going for ever.
        let cap = self
            .map()
            .info()
            .map_or(1 << 20, |i| 2 * u64::from(i.max_entries()));
        self.keys().take(cap as usize).filter(Result::is_ok).count() as u64
    }
}

/// The LRU maps, taken out of the probe so that they stay readable after it detaches.
pub struct LruMaps {
    counted: Vec<Box<dyn Keys>>,
    /// Exchanges in progress; the run reads the answered ones at the end.
    pub exchanges: HashMap<MapData, u64, Exchange>,
}

impl LruMaps {
    pub fn take(probe: &mut Probe) -> Result<Self, AttachError> {
        let conns: HashMap<MapData, u64, ConnState> = probe.take("CONNS")?;
        let syns: HashMap<MapData, FlowKey, SynSeen> = probe.take("SYNS")?;
        let sk_flow: HashMap<MapData, u64, FlowKey> = probe.take("SK_FLOW")?;
        let flow_cookie: HashMap<MapData, FlowKey, u64> = probe.take("FLOW_COOKIE")?;
        let pkt_seen: HashMap<MapData, PktKey, PktSeen> = probe.take("PKT_SEEN")?;
        let flow_sock: HashMap<MapData, FlowKey, FlowSock> = probe.take("FLOW_SOCK")?;
        let peer_flow: HashMap<MapData, PeerKey, FlowKey> = probe.take("PEER_FLOW")?;
        let fd_flow: HashMap<MapData, u64, FlowKey> = probe.take("FD_FLOW")?;
        let early: HashMap<MapData, FlowKey, Exchange> = probe.take("EARLY_REQUESTS")?;
        Ok(Self {
            // In LRU_MAPS order, with EXCHANGES's place taken by `exchanges`.
            counted: vec![
                Box::new(conns),
                Box::new(syns),
                Box::new(sk_flow),
                Box::new(flow_cookie),
                Box::new(pkt_seen),
                Box::new(flow_sock),
                Box::new(peer_flow),
                Box::new(fd_flow),
                Box::new(early),
            ],
            exchanges: probe.take("EXCHANGES")?,
        })
    }

    /// Keys present now in each map, in `LRU_MAPS` order.
    pub fn present(&self) -> [u64; LRU_MAPS.len()] {
        let mut out = [0; LRU_MAPS.len()];
        let mut counted = self.counted.iter();
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = if i == stats::LRU_EXCHANGES as usize {
                self.exchanges.count_keys()
            } else {
                counted.next().map_or(0, |m| m.count_keys())
            };
        }
        out
    }

    /// Adds `evicted_<map>` to `counters`, which hold the kernel's insert and delete counts.
    pub fn add_evictions(&self, counters: &mut BTreeMap<&'static str, u64>) {
        for (name, n) in NAMES.iter().zip(evicted(counters, &self.present())) {
            counters.insert(name, n);
        }
    }
}

/// inserted − deleted − present per map, from counters named as in `stats::NAMES`.
pub fn evicted(
    counters: &BTreeMap<&'static str, u64>,
    present: &[u64; LRU_MAPS.len()],
) -> [u64; LRU_MAPS.len()] {
    let mut out = [0; LRU_MAPS.len()];
    for (i, slot) in out.iter_mut().enumerate() {
        let get = |idx: u32| {
            counters
                .get(stats::NAMES[idx as usize])
                .copied()
                .unwrap_or(0)
        };
        let inserted = get(stats::lru_inserted(i as u32));
        let deleted = get(stats::lru_deleted(i as u32));
        *slot = inserted.saturating_sub(deleted).saturating_sub(present[i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_went_missing() {
        let mut counters = BTreeMap::new();
        counters.insert("lru_conns_inserted", 3000);
        counters.insert("lru_conns_deleted", 1500);
        counters.insert("lru_syns_inserted", 10);
        counters.insert("lru_syns_deleted", 10);
        let mut present = [0; LRU_MAPS.len()];
        present[0] = 1024;
        let e = evicted(&counters, &present);
        assert_eq!(e[0], 476);
        assert_eq!(e[1], 0);
        // A count taken while programs run can see more keys than the counters explain.
        present[1] = 2;
        assert_eq!(evicted(&counters, &present)[1], 0);
    }
}
