//! Deleted pods' series, in a run that exports metrics: their owners (cgroups, host veths)
//! are found gone, their counts move to `Retired` under the labels they were exported with,
//! and their keys leave the kernel's maps and userspace's aggregators — so that a run of
//! weeks holds the node's current pods, not every pod it ever saw.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuHashMap};
use tracing::debug;

use super::{
    Maps,
    metrics::{self, Gone, Scope},
    sink::Collector,
};
use crate::{export::Limits, export::retired::Retired, names::Metadata};

/// How long a gone owner's names are kept after its series were retired: its last records
/// may still arrive (a proxy's are paired up to a minute late) and must name it as before.
const FORGET_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Cgroup(u64),
    Iface(u32),
}

pub struct Retirement {
    grace: Duration,
    limits: Limits,
    pub retired: Retired,
    /// Owners found gone, since when; their names are kept for `FORGET_AFTER`.
    gone_since: HashMap<Owner, Instant>,
}

impl Retirement {
    pub fn new(grace: Duration, limits: Limits) -> Self {
        Self {
            grace,
            limits,
            retired: Retired::default(),
            gone_since: HashMap::new(),
        }
    }

    /// How often to look: often enough that a series goes within a quarter of its grace
    /// period late, at most every 10 s (each look reads every map's keys).
    pub fn period(&self) -> Duration {
        (self.grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    /// Finds owners gone since the last look, retires their series and ages the retired
    /// ones. `live_ifaces`: the interfaces the datapath watches now, if it runs.
    pub fn look(
        &mut self,
        maps: &mut Maps,
        c: &mut Collector<'_>,
        metadata: &Metadata,
        live_ifaces: Option<&BTreeMap<u32, String>>,
    ) {
        let now = Instant::now();
        let gone = self.find_gone(maps, c, live_ifaces);
        if !gone.cgroups.is_empty() || !gone.ifindexes.is_empty() {
            let series = metrics::series_of(maps, c, metadata, self.limits, Scope::Gone(&gone));
            debug!(
                cgroups = gone.cgroups.len(),
                interfaces = gone.ifindexes.len(),
                series = series.series(),
                "retiring the series of removed owners"
            );
            self.retired.fold(series);
            remove_keys(maps, c, &gone);
            for &id in &gone.cgroups {
                self.gone_since.entry(Owner::Cgroup(id)).or_insert(now);
            }
            for &i in &gone.ifindexes {
                self.gone_since.entry(Owner::Iface(i)).or_insert(now);
            }
        }
        self.gone_since.retain(|owner, since| {
            if now.duration_since(*since) < FORGET_AFTER {
                return true;
            }
            match *owner {
                Owner::Cgroup(id) => {
                    if !c.sink.pairing.forget(id) {
                        return true;
                    }
                    c.sink.forget(id);
                    c.resolver.forget(id);
                }
                Owner::Iface(i) => {
                    c.ifnames.remove(&i);
                }
            }
            false
        });
        if !self.retired.is_empty() {
            let live = metrics::series_of(maps, c, metadata, self.limits, Scope::All);
            self.retired.age(&live, now, self.grace);
        }
    }

    /// Owners that have keys somewhere and are no longer on the node. Only owners once seen
    /// alive count: an id the resolver never found (outside its hierarchy) is not gone.
    fn find_gone(
        &self,
        maps: &Maps,
        c: &Collector<'_>,
        live_ifaces: Option<&BTreeMap<u32, String>>,
    ) -> Gone {
        let mut cgroups: Vec<u64> = c.sink.hops.cgroups().collect();
        cgroups.extend(c.sink.pairing.cgroups());
        cgroups.extend(maps.ex_hists.keys().flatten().map(|k| k.cgroup_id));
        cgroups.extend(maps.sock_hists.keys().flatten().map(|k| k.cgroup_id));
        cgroups.extend(maps.tcp_counters.keys().flatten());
        let mut ifindexes = Vec::new();
        for k in maps.hists.keys().flatten() {
            cgroups.push(k.cgroup_id);
            ifindexes.push(k.ifindex);
        }
        cgroups.sort_unstable();
        cgroups.dedup();
        ifindexes.sort_unstable();
        ifindexes.dedup();
        Gone {
            cgroups: cgroups
                .into_iter()
                .filter(|&id| id != 0 && c.resolver.gone(id))
                .collect(),
            ifindexes: match live_ifaces {
                Some(live) => ifindexes
                    .into_iter()
                    .filter(|i| *i != 0 && !live.contains_key(i) && c.ifnames.contains_key(i))
                    .collect(),
                None => Default::default(),
            },
        }
    }
}

/// Removes the gone owners' keys everywhere their counts were read from.
fn remove_keys(maps: &mut Maps, c: &mut Collector<'_>, gone: &Gone) {
    let scope = Scope::Gone(gone);
    c.sink.hops.retain(|k| !scope.has(k.cgroup_id, 0));
    remove_where(&mut maps.ex_hists, |k| scope.has(k.cgroup_id, 0));
    remove_where(&mut maps.sock_hists, |k| scope.has(k.cgroup_id, 0));
    remove_where(&mut maps.tcp_counters, |k| scope.has(*k, 0));
    remove_where(&mut maps.hists, |k| scope.has(k.cgroup_id, k.ifindex));
}

/// Deletes the keys `gone` picks. A program may add to one between the read and the
/// delete: those few counts are lost (the owner is gone; nothing of it runs any more but
/// packets and sockets already on their way).
fn remove_where<K: aya::Pod, V: aya::Pod>(
    map: &mut PerCpuHashMap<MapData, K, V>,
    gone: impl Fn(&K) -> bool,
) {
    let keys: Vec<K> = map.keys().flatten().filter(|k| gone(k)).collect();
    for k in keys {
        let _ = map.remove(&k);
    }
}
