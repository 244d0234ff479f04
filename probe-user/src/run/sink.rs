//! Where the rings' records go: exchanges to the hop histograms, to the pairing of the hops that take two (`sidecar`, `app_self`) and, with `--records`,
//! to a JSON Lines file.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{BufWriter, Write},
};

use probe_common::{
    exchange::{Exchange, KIND_TLS_HANDSHAKE},
    tcflow::TcExchange,
};
use serde::Serialize;

use super::rings::Consumer;
use crate::{
    hops::{self, HopAggregator, datapath, stream::Pairing},
    names::{Metadata, cgroup::Resolver, parse_cgroup_path},
};

pub struct ExchangeSink<'a> {
    pub hops: HopAggregator,
    pub pairing: Pairing,
    /// By cgroup, looked up for every exchange: foldhash, not the default SipHash.
    proxies: HashMap<u64, bool, foldhash::fast::RandomState>,
    proxy_containers: &'a [String],
    metadata: &'a Metadata,
    pub records: Option<BufWriter<File>>,
    pub write_error: Option<std::io::Error>,
}

impl<'a> ExchangeSink<'a> {
    pub fn new(
        metadata: &'a Metadata,
        proxy_containers: &'a [String],
        records: Option<BufWriter<File>>,
    ) -> Self {
        Self {
            hops: HopAggregator::default(),
            pairing: Pairing::default(),
            proxies: HashMap::default(),
            proxy_containers,
            metadata,
            records,
            write_error: None,
        }
    }

    /// Whether the cgroup is a proxy container's; `None` while that is not known yet (a new
    /// cgroup not resolvable yet, or a container the API server has not named yet).
    fn is_proxy(&mut self, cgroup_id: u64, resolver: &mut Resolver) -> Option<bool> {
        if let Some(&known) = self.proxies.get(&cgroup_id) {
            return Some(known);
        }
        let path = resolver.resolve(cgroup_id)?;
        let names = self.metadata.lookup(&path);
        let proxy = names
            .as_ref()
            .and_then(|n| n.container.as_ref())
            .is_some_and(|c| self.proxy_containers.contains(c));
        let settled = !self.metadata.is_live()
            || names.is_some_and(|n| n.container.is_some())
            || parse_cgroup_path(&path).is_none_or(|ids| ids.container_id.is_none());
        if !settled {
            return None;
        }
        self.proxies.insert(cgroup_id, proxy);
        Some(proxy)
    }

    /// Forgets a deleted container's proxy-or-not.
    pub fn forget(&mut self, cgroup_id: u64) {
        self.proxies.remove(&cgroup_id);
    }

    /// One line of the records file, through the format's own writer.
    fn write_record<T: Serialize>(&mut self, record: &T) {
        if let Some(w) = self.records.as_mut()
            && let Err(e) = hopprobe_formats::write_line(w, record)
        {
            // Stop writing, keep measuring; the run reports the error at the end.
            self.write_error = Some(e);
            self.records = None;
        }
    }

    pub fn add_datapath(&mut self, x: &TcExchange, ifnames: &BTreeMap<u32, String>) {
        if self.records.is_some() {
            let r = datapath::record(x, ifnames, self.metadata);
            self.write_record(&r);
        }
    }

    pub fn add(&mut self, x: &Exchange, resolver: &mut Resolver) {
        if x.kind == KIND_TLS_HANDSHAKE {
            self.hops.record_tls(x);
            if self.records.is_some() {
                self.write_record(&hops::tls::record(x));
            }
            return;
        }
        self.hops.record(x);
        // An exchange of a cgroup not known yet pairs with nothing: taken as an app's, a
        // proxy's request would make an `app_self` of its own.
        if let Some(proxy) = self.is_proxy(x.cgroup_id, resolver) {
            self.pairing.add(x, proxy);
        }
        if self.records.is_some() {
            self.write_record(&hops::record(x));
        }
    }

    /// Flushes the records file; an error is kept for the end of the run like a write's.
    pub fn close_records(&mut self) {
        if let Some(mut w) = self.records.take()
            && let Err(e) = w.flush()
        {
            self.write_error = Some(e);
        }
    }
}

/// Everything the rings feed while hopprobe runs.
pub struct Collector<'a> {
    pub sink: ExchangeSink<'a>,
    pub resolver: Resolver,
    /// Interface names by index, kept after a veth vanished: its last exchanges may still be
    /// in the ring.
    pub ifnames: BTreeMap<u32, String>,
    /// Records too short to be what their ring holds (a kernel/user version mismatch).
    pub unknown: u64,
}

impl Consumer for Collector<'_> {
    fn exchange(&mut self, x: &Exchange) {
        self.sink.add(x, &mut self.resolver);
    }

    fn datapath(&mut self, x: &TcExchange) {
        self.sink.add_datapath(x, &self.ifnames);
    }

    fn short(&mut self, n: u64) {
        self.unknown += n;
    }
}
