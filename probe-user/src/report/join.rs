//! Joining loadgen's requests with hopprobe's records, and each request's decomposition.
//!
//! 1. A request is found at the node's uplink by its 4-tuple (the load generator's socket
//!    addresses, which the uplink sees unchanged) and time: the `node_in` datapath record of
//!    that connection and exchange.
//! 2. The clocks of the load generator and the node are not assumed to agree: their offset is
//!    estimated from the joined requests themselves, NTP-style. Each request bounds it from
//!    both sides (its request left the client before it reached the node; the response left
//!    the node before it reached the client); assuming equal one-way delays gives an estimate
//!    per request, and the median over the 10 % of requests with the smallest round trip
//!    outside the node is taken (the least queueing, the most symmetric).
//! 3. From the uplink the connection is followed by the client's initial sequence number,
//!    which kube-proxy's NAT leaves alone, to the pod's veth (`pod_in`), and from there by its
//!    4-tuple after NAT to the socket that served it. Inside a container, each outbound call
//!    is attributed to the request the process was serving
//!    (see [`crate::hops::calls::pair_children`]) and followed the same way: through its pod's veth
//!    and the ISN to the next pod, or over loopback to the container it called in the same
//!    pod (sidecar ↔ app).
//! 4. The hops are differences of consecutive timestamps along that path, so they add up to
//!    the node's span (uplink in → uplink out) exactly; the rest of the end-to-end time is
//!    *unaccounted*: the network outside the node, the client's connect and its own
//!    scheduling. A timestamp that comes before its predecessor (clock estimate, reordering)
//!    gives a 0 hop and pushes the rest; a negative remainder is clamped to 0 and counted.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
};

use hopprobe_formats::{loadgen_records::Request, records::SockExchange};
use serde::Serialize;

use super::input::ProbeRecords;
use crate::hops::{
    calls::{Timed, pair_children},
    datapath::DatapathRecord,
};

/// Who a cgroup is, for naming hops.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// cgroup id → (pod, container).
    pub containers: HashMap<u64, (String, String)>,
    /// Container names that are proxies (their time is `sidecar_in` / `sidecar_out`).
    pub proxies: Vec<String>,
}

impl Names {
    fn of(&self, cgroup_id: u64) -> (String, Option<String>) {
        match self.containers.get(&cgroup_id) {
            Some((pod, c)) => (pod.clone(), Some(c.clone())),
            None => (format!("cgroup {cgroup_id}"), None),
        }
    }

    fn is_proxy(&self, cgroup_id: u64) -> bool {
        self.containers
            .get(&cgroup_id)
            .is_some_and(|(_, c)| self.proxies.contains(c))
    }
}

/// One hop of one request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Segment {
    /// `<pod> <hop>`, e.g. `productpage-v1 app_queue`; `loopback` between containers of a pod.
    pub hop: String,
    pub ns: u64,
}

/// One request's end-to-end time, split.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Breakdown {
    pub seq: u64,
    /// On the load generator's clock.
    pub start_ns: u64,
    pub e2e_ns: u64,
    /// e2e − Σ hops: outside the node (clamped at 0).
    pub unaccounted_ns: u64,
    /// Hops inside the node, in path order; they sum to the uplink span.
    pub segments: Vec<Segment>,
    /// The request was followed into a pod's socket (not only seen at the uplink).
    pub reached_pod: bool,
    /// A timestamp was out of order or the remainder was negative and clamped to 0.
    pub clamped: bool,
}

impl Breakdown {
    pub fn hops_ns(&self) -> u64 {
        self.segments.iter().map(|s| s.ns).sum()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Joined {
    /// node clock + offset = load generator's clock, when it could be estimated.
    pub offset: ClockOffset,
    /// Requests that completed without error (the ones joined).
    pub requests: usize,
    pub breakdowns: Vec<Breakdown>,
    /// Requests not joined with an uplink exchange.
    pub unjoined: usize,
    pub clamped: usize,
    pub counts: JoinCounts,
    /// The joined requests' exchange numbers and clocks contradict each other: nothing was
    /// joined, and the report compares distributions instead (`offset.note` says why).
    pub fallback: bool,
}

impl Joined {
    pub fn join_rate(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.breakdowns.len() as f64 / self.requests as f64
    }
}

/// How far two sightings of one connection's SYN (uplink, veth) may be apart.
const SYN_WINDOW_NS: u64 = 1_000_000_000;

struct Index<'a> {
    names: &'a Names,
    ex: &'a [SockExchange],
    /// Server exchanges by the peer address their socket sees, sorted by req_first.
    servers_by_remote: HashMap<SocketAddr, Vec<usize>>,
    /// pod_in datapath records by ISN.
    pod_in_by_isn: HashMap<u32, Vec<&'a DatapathRecord>>,
    /// pod_out datapath records by client address.
    pod_out_by_client: HashMap<SocketAddr, Vec<&'a DatapathRecord>>,
    /// server exchange → its outbound calls, in order.
    children: HashMap<usize, Vec<usize>>,
}

impl Timed for SockExchange {
    fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }

    fn is_server(&self) -> bool {
        self.role == "server"
    }

    fn req_first_ns(&self) -> u64 {
        self.req_first_ns
    }

    fn took_ns(&self) -> u64 {
        self.first_read_ns.unwrap_or(self.req_last_ns)
    }

    fn resp_first_ns(&self) -> Option<u64> {
        self.resp_first_ns
    }

    fn resp_last_ns(&self) -> Option<u64> {
        self.resp_last_ns
    }
}

impl<'a> Index<'a> {
    fn new(names: &'a Names, probe: &'a ProbeRecords) -> Self {
        let ex = &probe.exchanges[..];
        let mut servers_by_remote: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
        for (i, x) in ex.iter().enumerate() {
            if x.role == "server" && x.resp_last_ns.is_some() {
                servers_by_remote.entry(x.remote).or_default().push(i);
            }
        }
        for v in servers_by_remote.values_mut() {
            v.sort_by_key(|&i| ex[i].req_first_ns);
        }
        let mut pod_in_by_isn: HashMap<u32, Vec<&DatapathRecord>> = HashMap::new();
        let mut pod_out_by_client: HashMap<SocketAddr, Vec<&DatapathRecord>> = HashMap::new();
        for d in &probe.datapath {
            match d.point.as_str() {
                "pod_in" => pod_in_by_isn.entry(d.isn).or_default().push(d),
                "pod_out" => pod_out_by_client.entry(d.client).or_default().push(d),
                _ => {}
            }
        }
        Self {
            names,
            ex,
            servers_by_remote,
            pod_in_by_isn,
            pod_out_by_client,
            children: pair_children(ex),
        }
    }

    /// The server exchange whose socket sees `peer` as its remote, served at `ip`, whose
    /// request arrived at or after `after` (nearest first), if it arrived by `until` (when the
    /// response left: a later one is another exchange, this one's record being lost).
    fn server_from(
        &self,
        peer: SocketAddr,
        ip: Option<std::net::IpAddr>,
        after: u64,
        until: Option<u64>,
    ) -> Option<usize> {
        let list = self.servers_by_remote.get(&peer)?;
        // A little slack: the socket's first byte cannot precede the veth's, but clocks of
        // different hooks are read at slightly different moments.
        let from = after.saturating_sub(1_000);
        list.iter()
            .copied()
            .filter(|&i| ip.is_none_or(|ip| self.ex[i].local.ip() == ip))
            .find(|&i| self.ex[i].req_first_ns >= from)
            .filter(|&i| until.is_none_or(|t| self.ex[i].req_first_ns <= t))
    }

    /// The `pod_in` record of the connection whose SYN had `isn`, same exchange number,
    /// nearest in time.
    fn pod_in(
        &self,
        isn: u32,
        index: u32,
        syn_ns: u64,
        not_ifindex: u32,
    ) -> Option<&'a DatapathRecord> {
        self.pod_in_by_isn
            .get(&isn)?
            .iter()
            .filter(|d| d.index == index && d.ifindex != not_ifindex)
            .filter(|d| d.syn_ns.abs_diff(syn_ns) < SYN_WINDOW_NS)
            .min_by_key(|d| d.syn_ns.abs_diff(syn_ns))
            .copied()
    }

    /// Where the connection `d` saw (at the uplink or leaving a pod's veth) went into a pod:
    /// that pod's `pod_in` record, the server exchange its socket saw, and the pod's name.
    fn pod_entered(&self, d: &DatapathRecord) -> Option<(&'a DatapathRecord, usize, String)> {
        let vin = self.pod_in(d.isn, d.index, d.syn_ns, d.ifindex)?;
        let s = self.server_from(
            vin.client,
            Some(vin.server.ip()),
            vin.req_first_ns,
            vin.resp_first_ns,
        )?;
        let pod = vin
            .pod
            .clone()
            .unwrap_or_else(|| self.names.of(self.ex[s].cgroup_id).0);
        Some((vin, s, pod))
    }

    fn label(&self, pod: &str, hop: &str) -> String {
        format!("{pod} {hop}")
    }

    /// Checkpoints of a server exchange after its first request byte: queue, processing with
    /// its calls nested, sending the response. `depth` bounds the recursion.
    fn serve(&self, s: usize, depth: usize, out: &mut Vec<(String, u64)>, reached: &mut bool) {
        *reached = true;
        let sx = &self.ex[s];
        let (pod, _) = self.names.of(sx.cgroup_id);
        let proxy = self.names.is_proxy(sx.cgroup_id);
        let (queue, before, after) = if proxy {
            ("sidecar_queue", "sidecar_in", "sidecar_out")
        } else {
            ("app_queue", "app_processing", "app_processing")
        };
        if let Some(r) = sx.first_read_ns {
            out.push((self.label(&pod, queue), r));
        }
        let calls = self.children.get(&s).map(Vec::as_slice).unwrap_or(&[]);
        for (n, &k) in calls.iter().enumerate() {
            let kx = &self.ex[k];
            let hop = if n == 0 { before } else { "app_processing" };
            out.push((self.label(&pod, hop), kx.req_first_ns));
            self.call(k, &pod, depth + 1, out, reached);
        }
        let resp_first = sx.resp_first_ns.unwrap_or(sx.req_last_ns);
        out.push((
            self.label(&pod, if calls.is_empty() { before } else { after }),
            resp_first,
        ));
        out.push((
            self.label(&pod, "app_send"),
            sx.resp_last_ns.unwrap_or(resp_first),
        ));
    }

    /// Checkpoints of an outbound call after its first request byte, to its last response
    /// byte: through the pods' veths to another pod, over loopback, or one `upstream` hop when
    /// the callee is not found.
    fn call(
        &self,
        k: usize,
        pod: &str,
        depth: usize,
        out: &mut Vec<(String, u64)>,
        reached: &mut bool,
    ) {
        let kx = &self.ex[k];
        let end = kx.resp_last_ns.unwrap_or(kx.req_first_ns);
        if depth < 12 {
            // Through the node: the pod's veth saw the connection leave.
            let vout = self.pod_out_by_client.get(&kx.local).and_then(|v| {
                v.iter()
                    .filter(|d| d.req_first_ns + 1_000 >= kx.req_first_ns && d.req_first_ns <= end)
                    .min_by_key(|d| d.req_first_ns)
            });
            if let Some(vout) = vout
                && let Some((vin, s, callee)) = self.pod_entered(vout)
            {
                out.push((self.label(pod, "pod_send"), vout.req_first_ns));
                out.push((self.label(&callee, "datapath_in"), vin.req_first_ns));
                out.push((self.label(&callee, "pod_delivery"), self.ex[s].req_first_ns));
                self.serve(s, depth, out, reached);
                let sx = &self.ex[s];
                out.push((
                    self.label(&callee, "pod_send"),
                    vin.resp_last_ns.unwrap_or(sx.resp_last_ns.unwrap_or(0)),
                ));
                out.push((
                    self.label(&callee, "datapath_out"),
                    vout.resp_last_ns.unwrap_or(0),
                ));
                out.push((self.label(pod, "pod_delivery"), end));
                return;
            }
            // The callee's socket sees this socket's address: inside the pod (sidecar ↔ app),
            // or another pod (by the names) over a connection the veths did not see open (a
            // proxy's pooled connection from before hopprobe attached), whose way through the
            // node is then one hop each way.
            if let Some(s) = self.server_from(kx.local, None, kx.req_first_ns, Some(end)) {
                let (callee, known) = self.names.of(self.ex[s].cgroup_id);
                let other_pod = known.is_some()
                    && self.names.containers.contains_key(&kx.cgroup_id)
                    && callee != pod;
                let hop = if other_pod {
                    self.label(&callee, "datapath (not followed)")
                } else {
                    "loopback".to_string()
                };
                out.push((hop.clone(), self.ex[s].req_first_ns));
                self.serve(s, depth, out, reached);
                out.push((hop, end));
                return;
            }
        }
        out.push((self.label(pod, "upstream_unlinked"), end));
    }
}

/// Turns checkpoints into segments: consecutive differences, a checkpoint earlier than the
/// one before it gives 0 (and `clamped`). Segments with the same name are summed.
fn segments(start: u64, points: &[(String, u64)], clamped: &mut bool) -> (Vec<Segment>, u64) {
    let mut out: Vec<Segment> = Vec::new();
    let mut cursor = start;
    for (hop, t) in points {
        let ns = if *t >= cursor {
            let d = t - cursor;
            cursor = *t;
            d
        } else {
            *clamped = true;
            0
        };
        match out.iter_mut().find(|s| &s.hop == hop) {
            Some(s) => s.ns += ns,
            None => out.push(Segment {
                hop: hop.clone(),
                ns,
            }),
        }
    }
    (out, cursor)
}

/// Request-side and response-side times of a request at the client: when its first byte left
/// (at the latest), when the response's first byte arrived.
fn client_times(r: &Request) -> Option<(u64, u64)> {
    Some((r.written_ns.unwrap_or(r.start_ns), r.first_byte_ns?))
}

/// The offset between the load generator's clock and the node's, and what it rests on.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClockOffset {
    /// node clock + offset = load generator's clock. `None`: it could not be estimated (`note`
    /// says why), and no request was placed by time.
    pub ns: Option<i64>,
    /// The hard bounds all the agreeing requests set: each started before its request reached
    /// the node (offset ≥ `lo_ns`) and read the response's first byte after it left the node
    /// (offset ≤ `hi_ns`).
    pub lo_ns: Option<i64>,
    pub hi_ns: Option<i64>,
    /// Requests (warm-up included) joined by exchange number that bound it from both sides.
    pub requests: usize,
    /// How many of them admit one common offset (the others' connections are not trusted).
    pub agreeing: usize,
    pub note: Option<String>,
}

/// One request's bounds on the offset: `[start − node in, first byte − node out]`.
fn bounds(r: &Request, u: &DatapathRecord) -> Option<(i128, i128)> {
    let lo = i128::from(r.start_ns) - i128::from(u.req_first_ns);
    let hi = i128::from(r.first_byte_ns?) - i128::from(u.resp_first_ns?);
    Some((lo, hi))
}

/// The offset from joined pairs, as described above: the largest set of pairs whose bounds
/// admit one common offset, if it holds more than half of them; within their common bounds,
/// the median of the NTP estimates (equal one-way delays) of the 10 % with the smallest round
/// trip outside the node. Also returns which pairs agree.
pub fn estimate_offset(pairs: &[(&Request, &DatapathRecord)]) -> (ClockOffset, Vec<bool>) {
    let b: Vec<Option<(i128, i128)>> = pairs.iter().map(|(r, u)| bounds(r, u)).collect();
    let total = b.iter().flatten().count();
    let mut out = ClockOffset {
        requests: total,
        ..ClockOffset::default()
    };
    if total == 0 {
        out.note = Some(
            "no request was joined by its connection's exchange number with both a response \
             at the node and a first byte at the client: the clock offset cannot be estimated"
                .into(),
        );
        return (out, vec![false; pairs.len()]);
    }
    // Sweep: the point covered by the most intervals (closed: starts before ends).
    let mut events: Vec<(i128, u8)> = Vec::with_capacity(2 * total);
    for &(lo, hi) in b.iter().flatten().filter(|(lo, hi)| lo <= hi) {
        events.push((lo, 0));
        events.push((hi, 1));
    }
    events.sort_unstable();
    let (mut n, mut best, mut at) = (0usize, 0usize, 0i128);
    for (x, kind) in events {
        if kind == 0 {
            n += 1;
            if n > best {
                (best, at) = (n, x);
            }
        } else {
            n -= 1;
        }
    }
    let agree: Vec<bool> = b
        .iter()
        .map(|b| b.is_some_and(|(lo, hi)| lo <= at && at <= hi))
        .collect();
    out.agreeing = best;
    if best * 2 <= total {
        out.note = Some(format!(
            "the requests joined by exchange number disagree on the clock offset (at most {best} \
             of {total} admit a common one): the clocks are not comparable or the exchange \
             numbers do not line up, so no request is joined"
        ));
        return (out, agree);
    }
    let lo = b
        .iter()
        .zip(&agree)
        .filter(|(_, a)| **a)
        .filter_map(|(b, _)| Some(b.as_ref()?.0))
        .max()
        .unwrap_or(at);
    let hi = b
        .iter()
        .zip(&agree)
        .filter(|(_, a)| **a)
        .filter_map(|(b, _)| Some(b.as_ref()?.1))
        .min()
        .unwrap_or(at);
    let mut samples: Vec<(i128, i128)> = pairs
        .iter()
        .zip(&agree)
        .filter(|(_, a)| **a)
        .filter_map(|((r, u), _)| {
            let (sent, got) = client_times(r)?;
            let (u_in, u_out) = (i128::from(u.req_first_ns), i128::from(u.resp_first_ns?));
            let (sent, got) = (i128::from(sent), i128::from(got));
            let outside = (got - sent) - (u_out - u_in);
            Some((outside, ((sent - u_in) + (got - u_out)) / 2))
        })
        .collect();
    samples.sort_by_key(|s| s.0);
    let keep = (samples.len() / 10).max(1);
    let mut thetas: Vec<i128> = samples[..keep.min(samples.len())]
        .iter()
        .map(|s| s.1)
        .collect();
    thetas.sort_unstable();
    // One-way delays are rarely equal (the client's wake-up is on the way back only): the
    // estimate stays within the hard bounds.
    let theta = thetas
        .get(thetas.len() / 2)
        .copied()
        .unwrap_or(at)
        .clamp(lo, hi);
    out.ns = Some(theta as i64);
    out.lo_ns = Some(lo as i64);
    out.hi_ns = Some(hi as i64);
    (out, agree)
}

fn shift(t: u64, offset: i64) -> u64 {
    (i128::from(t) + i128::from(offset)).max(0) as u64
}

type Tuple = (SocketAddr, SocketAddr);

/// One connection as the node's uplink saw it: its exchanges by number.
struct NodeConn<'a> {
    syn_ns: u64,
    exchanges: BTreeMap<u32, &'a DatapathRecord>,
}

/// One connection as the load generator used it: its requests in the order they were sent,
/// so the k-th is exchange k on the connection (warm-up and failed requests included).
struct ClientConn<'a> {
    requests: Vec<&'a Request>,
    /// A request started before the one before it ended (HTTP/2 streams): exchange numbers
    /// do not name requests.
    multiplexed: bool,
}

/// The load generator's connections by 4-tuple, each tuple's in the order they were opened:
/// requests grouped by tuple and connection number, split where a request opened a new
/// connection (records without connection numbers; a port used again).
fn client_connections<'a>(
    requests: impl Iterator<Item = &'a Request>,
) -> HashMap<Tuple, Vec<ClientConn<'a>>> {
    let mut groups: HashMap<(Tuple, &str, u64), Vec<&Request>> = HashMap::new();
    for r in requests {
        if let (Some(l), Some(rm)) = (r.local, r.remote) {
            groups
                .entry(((l, rm), r.target.as_str(), r.conn))
                .or_default()
                .push(r);
        }
    }
    let mut out: HashMap<Tuple, Vec<ClientConn>> = HashMap::new();
    for ((tuple, _, _), mut rs) in groups {
        rs.sort_by_key(|r| (r.start_ns, r.seq));
        let mut cur: Vec<&Request> = Vec::new();
        let conns = out.entry(tuple).or_default();
        for r in rs {
            if !r.reused && !cur.is_empty() {
                conns.push(ClientConn::new(std::mem::take(&mut cur)));
            }
            cur.push(r);
        }
        conns.push(ClientConn::new(cur));
    }
    for conns in out.values_mut() {
        conns.sort_by_key(|c| c.requests[0].start_ns);
    }
    out
}

impl<'a> ClientConn<'a> {
    fn new(requests: Vec<&'a Request>) -> Self {
        let multiplexed = requests.windows(2).any(|w| w[1].start_ns < w[0].end_ns);
        Self {
            requests,
            multiplexed,
        }
    }
}

/// The uplink's connections (`node_in` records) by 4-tuple, in the order of their SYNs.
fn node_connections(probe: &ProbeRecords) -> HashMap<Tuple, Vec<NodeConn<'_>>> {
    let mut conns: HashMap<(Tuple, u32), NodeConn> = HashMap::new();
    for d in probe.datapath.iter().filter(|d| d.point == "node_in") {
        let c = conns
            .entry(((d.client, d.server), d.isn))
            .or_insert_with(|| NodeConn {
                syn_ns: d.syn_ns,
                exchanges: BTreeMap::new(),
            });
        c.syn_ns = c.syn_ns.min(d.syn_ns);
        c.exchanges.entry(d.index).or_insert(d);
    }
    let mut out: HashMap<Tuple, Vec<NodeConn>> = HashMap::new();
    for ((tuple, _), c) in conns {
        out.entry(tuple).or_default().push(c);
    }
    for v in out.values_mut() {
        v.sort_by_key(|c| c.syn_ns);
    }
    out
}

/// How the requests were joined with the uplink's exchanges.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct JoinCounts {
    /// Joined by their exchange number on their connection.
    pub by_exchange: usize,
    /// Joined by time (the one uplink exchange of their 4-tuple inside the request on the
    /// estimated common clock): connections whose exchange numbers could not be used.
    pub by_time: usize,
    /// Connections whose exchange numbers did not line up with the load generator's requests
    /// (more exchanges at the node than requests, a request answered where the node saw no
    /// response, bounds that contradict the other requests'), or that carried requests at
    /// once (HTTP/2).
    pub mismatched_connections: usize,
    /// Requests that more than one uplink exchange could be (left unjoined).
    pub ambiguous: usize,
}

/// Joins and decomposes the successful requests of one environment. `warmups` are the
/// warm-up requests: not reported, but they took exchange numbers on their connections.
///
/// Each connection of the load generator is paired with the uplink's connection of the same
/// 4-tuple (the n-th opened with the n-th seen, when a port served several), and its k-th
/// request with the uplink's exchange k: no clock is needed. The clock offset is then
/// estimated from every request so joined; requests of connections whose numbers did not line
/// up are placed by time on that clock, or left unjoined when it could not be estimated.
pub fn join(
    requests: &[Request],
    warmups: &[Request],
    probe: &ProbeRecords,
    names: &Names,
) -> Joined {
    let ok: Vec<&Request> = requests.iter().filter(|r| r.ok()).collect();
    let clients = client_connections(requests.iter().chain(warmups));
    let nodes = node_connections(probe);
    let mut counts = JoinCounts::default();
    // Pairs by exchange number, with the connection each belongs to.
    let mut numbered: Vec<(&Request, &DatapathRecord, usize)> = Vec::new();
    // Measured requests to place by time.
    let mut deferred: Vec<&Request> = Vec::new();
    // Connections of one request and one exchange: their numbers cannot be off.
    let mut single: HashSet<usize> = HashSet::new();
    // Each numbered connection's requests.
    let mut members: HashMap<usize, &Vec<&Request>> = HashMap::new();
    let mut conn_no = 0usize;
    for (tuple, ccs) in &clients {
        let ncs = nodes.get(tuple).map(Vec::as_slice).unwrap_or(&[]);
        if ccs.len() != ncs.len() {
            // Connections the uplink did not see open (before hopprobe attached), or a
            // port used again: only time can tell which is which.
            deferred.extend(ccs.iter().flat_map(|c| c.requests.iter().copied()));
            continue;
        }
        for (cc, nc) in ccs.iter().zip(ncs) {
            conn_no += 1;
            let lines_up = !cc.multiplexed
                && nc
                    .exchanges
                    .keys()
                    .next_back()
                    .is_none_or(|&last| (last as usize) < cc.requests.len())
                && cc.requests.iter().enumerate().all(|(k, r)| {
                    !r.ok()
                        || nc
                            .exchanges
                            .get(&(k as u32))
                            .is_none_or(|u| u.resp_first_ns.is_some())
                });
            if !lines_up {
                counts.mismatched_connections += 1;
                deferred.extend(cc.requests.iter().copied());
                continue;
            }
            if cc.requests.len() == 1 && nc.exchanges.len() <= 1 {
                single.insert(conn_no);
            }
            members.insert(conn_no, &cc.requests);
            for (k, r) in cc.requests.iter().enumerate() {
                if let Some(u) = nc.exchanges.get(&(k as u32)) {
                    numbered.push((r, u, conn_no));
                }
            }
        }
    }
    // The offset from every request joined by number. A connection of several exchanges with
    // a request that contradicts the others' bounds is not trusted: its numbers are off (a
    // lone exchange's cannot be: the contradiction is in its times, and it is clamped below).
    let ok_pairs: Vec<(&Request, &DatapathRecord, usize)> = numbered
        .iter()
        .copied()
        .filter(|(r, _, _)| r.ok())
        .collect();
    let for_offset: Vec<(&Request, &DatapathRecord)> =
        ok_pairs.iter().map(|&(r, u, _)| (r, u)).collect();
    let (offset, agree) = estimate_offset(&for_offset);
    if offset.ns.is_none() && offset.requests > 0 {
        // The numbers do not line up with the clocks: a join would be wrong.
        return Joined {
            offset,
            requests: ok.len(),
            breakdowns: Vec::new(),
            unjoined: ok.len(),
            clamped: 0,
            counts,
            fallback: true,
        };
    }
    let untrusted: HashSet<usize> = ok_pairs
        .iter()
        .zip(&agree)
        .filter(|((r, u, c), a)| !**a && bounds(r, u).is_some() && !single.contains(c))
        .map(|((_, _, c), _)| *c)
        .collect();
    counts.mismatched_connections += untrusted.len();
    let mut assigned: HashMap<*const Request, &DatapathRecord> = HashMap::new();
    let mut used: HashSet<*const DatapathRecord> = HashSet::new();
    for &(r, u, c) in &numbered {
        if !untrusted.contains(&c) {
            assigned.insert(r, u);
            used.insert(u);
        }
    }
    for c in &untrusted {
        deferred.extend(members[c].iter().copied());
    }
    counts.by_exchange = ok
        .iter()
        .filter(|r| assigned.contains_key(&(**r as *const _)))
        .count();
    // The rest by time: the one uplink exchange of the tuple that lies inside the request.
    if let Some(theta) = offset.ns {
        for r in deferred.into_iter().filter(|r| !r.warmup && r.ok()) {
            let Some(us) = r.local.zip(r.remote).and_then(|t| nodes.get(&t)) else {
                continue;
            };
            let Some(first_byte) = r.first_byte_ns else {
                continue;
            };
            let inside: Vec<&DatapathRecord> = us
                .iter()
                .flat_map(|c| c.exchanges.values().copied())
                .filter(|u| !used.contains(&(*u as *const _)) && u.resp_last_ns.is_some())
                .filter(|u| {
                    u.resp_first_ns.is_some_and(|out| {
                        shift(u.req_first_ns, theta) >= r.start_ns
                            && shift(out, theta) <= first_byte
                    })
                })
                .collect();
            match inside.as_slice() {
                [u] => {
                    assigned.insert(r, u);
                    used.insert(*u);
                    counts.by_time += 1;
                }
                [] => {}
                _ => counts.ambiguous += 1,
            }
        }
    }
    let index = Index::new(names, probe);
    let mut breakdowns = Vec::new();
    let mut unjoined = 0;
    let mut clamped_count = 0;
    for r in ok.iter().copied() {
        match assigned.get(&(r as *const _)) {
            Some(u) if u.resp_last_ns.is_some() => {
                let b = breakdown(r, u, &offset, &index, probe);
                clamped_count += usize::from(b.clamped);
                breakdowns.push(b);
            }
            _ => unjoined += 1,
        }
    }
    Joined {
        offset,
        requests: ok.len(),
        breakdowns,
        unjoined,
        clamped: clamped_count,
        counts,
        fallback: false,
    }
}

/// One joined request's decomposition: its path through the node from the uplink exchange
/// `u`, the hops between, and what is left outside.
fn breakdown(
    r: &Request,
    u: &DatapathRecord,
    offset: &ClockOffset,
    index: &Index,
    probe: &ProbeRecords,
) -> Breakdown {
    let mut points = Vec::new();
    let mut reached = false;
    let u_end = u.resp_last_ns.unwrap_or(u.req_last_ns);
    let entered = index.pod_entered(u);
    if let Some((vin, s, pod)) = &entered {
        let (vin, s) = (*vin, *s);
        points.push((format!("{pod} datapath_in"), vin.req_first_ns));
        points.push((
            format!("{pod} pod_delivery"),
            probe.exchanges[s].req_first_ns,
        ));
        index.serve(s, 0, &mut points, &mut reached);
        points.push((format!("{pod} pod_send"), vin.resp_last_ns.unwrap_or(0)));
        points.push((format!("{pod} datapath_out"), u_end));
    } else {
        points.push(("node (not followed)".into(), u_end));
    }
    let mut clamped = false;
    let (mut segs, node_end) = segments(u.req_first_ns, &points, &mut clamped);
    let mut inside = node_end - u.req_first_ns;
    // A connection opened for this request: its handshake's time on the node's side (SYN in
    // → SYN-ACK out, including SYNs the pod dropped and the client resent) is a hop; the
    // SYN-ACK's trip to the client and back is outside.
    if u.index == 0
        && let Some(synack) = u.synack_ns
    {
        let handshake = match synack.checked_sub(u.syn_ns) {
            Some(d) if synack <= u.req_first_ns => d,
            _ => {
                clamped = true;
                0
            }
        };
        segs.insert(
            0,
            Segment {
                hop: "node handshake".into(),
                ns: handshake,
            },
        );
        inside += handshake;
    }
    // A TLS connection's handshake: the server's side of it at the uplink (ClientHello in →
    // the server's last handshake record out) happened inside the node, in the pod that
    // terminates TLS; the client's side of it is outside.
    if let Some(h) = u.tls_handshake.filter(|_| u.index == 0) {
        let at = entered
            .as_ref()
            .map_or_else(|| "node".to_owned(), |(_, _, pod)| pod.clone());
        let ns = h.server_side_ns();
        segs.insert(
            usize::from(segs.first().is_some_and(|s| s.hop == "node handshake")),
            Segment {
                hop: format!("{at} tls_handshake"),
                ns,
            },
        );
        inside += ns;
    }
    let e2e = r.end_ns.saturating_sub(r.start_ns);
    let unaccounted = match e2e.checked_sub(inside) {
        Some(rest) => rest,
        None => {
            clamped = true;
            0
        }
    };
    // The node's span must lie within the request's for some offset the clocks admit: the
    // estimate is only known within its bounds, and on an HTTPS connection the client's first
    // byte waits for a whole record to arrive and be decrypted, which pulls the estimate (equal
    // one-way delays) towards its upper bound by some microseconds.
    if let Some(theta) = offset.ns {
        let (lo, hi) = (
            i128::from(offset.lo_ns.unwrap_or(theta)),
            i128::from(offset.hi_ns.unwrap_or(theta)),
        );
        let fits_from = lo.max(i128::from(r.start_ns) - i128::from(u.req_first_ns));
        let fits_to = hi.min(i128::from(r.end_ns) - i128::from(node_end));
        if fits_from > fits_to {
            clamped = true;
        }
    }
    Breakdown {
        seq: r.seq,
        start_ns: r.start_ns,
        e2e_ns: e2e,
        unaccounted_ns: unaccounted,
        segments: segs,
        reached_pod: reached,
        clamped,
    }
}

/// The order hops appear in along the requests' paths: the longest path's order, then hops
/// only other paths have, in the order first seen.
pub fn hop_order(bs: &[Breakdown]) -> Vec<String> {
    let mut order: Vec<String> = bs
        .iter()
        .max_by_key(|b| b.segments.len())
        .map(|b| b.segments.iter().map(|s| s.hop.clone()).collect())
        .unwrap_or_default();
    for b in bs {
        for s in &b.segments {
            if !order.contains(&s.hop) {
                order.push(s.hop.clone());
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFSET: i64 = 3_700_000_000;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn dp(
        point: &str,
        ifindex: u32,
        client: &str,
        server: &str,
        isn: u32,
        t: [u64; 3],
    ) -> DatapathRecord {
        DatapathRecord {
            record: "datapath".into(),
            point: point.into(),
            ifindex,
            interface: None,
            pod: Some(if ifindex == 2 { "front" } else { "back" }.into()),
            client: sa(client),
            server: sa(server),
            isn,
            index: 0,
            syn_ns: t[0],
            synack_ns: None,
            req_first_ns: t[1],
            req_last_ns: t[1],
            resp_first_ns: Some(t[2]),
            resp_last_ns: Some(t[2]),
            req_bytes: 100,
            resp_bytes: 100,
            tls: false,
            tls_handshake: None,
        }
    }

    fn sock(
        cg: u64,
        role: &str,
        local: &str,
        remote: &str,
        t: [u64; 3],
        read: Option<u64>,
    ) -> SockExchange {
        SockExchange {
            cookie: 0,
            cgroup_id: cg,
            role: role.into(),
            local: sa(local),
            remote: sa(remote),
            req_first_ns: t[0],
            req_last_ns: t[0],
            resp_first_ns: Some(t[1]),
            resp_last_ns: Some(t[2]),
            first_read_ns: read,
            req_bytes: 0,
            resp_bytes: 0,
            tls: false,
        }
    }

    /// `n` requests, one after the other, each: client → uplink → front pod (masqueraded),
    /// front calls back (ClusterIP DNAT) once. Node clock = client clock − OFFSET. Times in µs
    /// from each request's start, on the node's clock: see the comments.
    fn scenario(n: u64) -> (Vec<Request>, ProbeRecords) {
        let us = 1_000u64;
        let mut reqs = Vec::new();
        let mut probe = ProbeRecords::default();
        for i in 0..n {
            let t0 = 10_000_000_000 + i * 100_000 * us; // node clock
            let cport = 40_000 + i as u16;
            let mport = 50_000 + i as u16;
            let kport = 60_000 + i as u16;
            let isn = 1000 + i as u32;
            // Client: starts 500 µs before the request reaches the node, ends 500 µs after the
            // response left it (symmetric network outside the node).
            let node_in = t0 + 1_000 * us;
            let node_out = t0 + 21_000 * us;
            reqs.push(Request {
                seq: i,
                warmup: false,
                local: Some(sa(&format!("10.77.0.2:{cport}"))),
                remote: Some(sa("10.77.0.1:30080")),
                start_ns: (node_in - 500 * us).wrapping_add_signed(OFFSET),
                written_ns: Some((node_in - 100 * us).wrapping_add_signed(OFFSET)),
                first_byte_ns: Some((node_out + 100 * us).wrapping_add_signed(OFFSET)),
                end_ns: (node_out + 500 * us).wrapping_add_signed(OFFSET),
                status: Some(200),
                error: None,
                ..Request::default()
            });
            let client = format!("10.77.0.2:{cport}");
            let masq = format!("10.78.0.1:{mport}");
            probe.datapath.push(dp(
                "node_in",
                1,
                &client,
                "10.77.0.1:30080",
                isn,
                [t0, node_in, node_out],
            ));
            // Front pod's veth: +10 µs in, −10 µs out.
            probe.datapath.push(dp(
                "pod_in",
                2,
                &masq,
                "10.78.0.10:9080",
                isn,
                [t0 + 5 * us, node_in + 10 * us, node_out - 10 * us],
            ));
            // Front socket: delivered +20 µs, read after a 2 ms queue, responds at 19 ms.
            probe.exchanges.push(sock(
                1,
                "server",
                "10.78.0.10:9080",
                &masq,
                [node_in + 30 * us, node_out - 50 * us, node_out - 30 * us],
                Some(node_in + 2_030 * us),
            ));
            // Its call to back: 5 ms after reading, back answers in 8 ms.
            let call = node_in + 7_030 * us;
            let kaddr = format!("10.78.0.10:{kport}");
            probe.exchanges.push(sock(
                1,
                "client",
                &kaddr,
                "10.96.0.11:9080",
                [call, call + 8_000 * us, call + 8_000 * us],
                None,
            ));
            probe.datapath.push(dp(
                "pod_out",
                2,
                &kaddr,
                "10.96.0.11:9080",
                isn + 7,
                [call - 100 * us, call + 10 * us, call + 7_990 * us],
            ));
            probe.datapath.push(dp(
                "pod_in",
                3,
                &kaddr,
                "10.78.0.11:9080",
                isn + 7,
                [call - 90 * us, call + 20 * us, call + 7_980 * us],
            ));
            probe.exchanges.push(sock(
                2,
                "server",
                "10.78.0.11:9080",
                &kaddr,
                [call + 30 * us, call + 7_970 * us, call + 7_970 * us],
                Some(call + 40 * us),
            ));
        }
        (reqs, probe)
    }

    fn names() -> Names {
        Names {
            containers: HashMap::from([
                (1, ("front".into(), "app".into())),
                (2, ("back".into(), "app".into())),
            ]),
            proxies: vec!["istio-proxy".into()],
        }
    }

    fn seg(b: &Breakdown, hop: &str) -> u64 {
        b.segments.iter().find(|s| s.hop == hop).map_or(0, |s| s.ns)
    }

    #[test]
    fn offset_clocks_are_estimated_and_every_request_adds_up() {
        let (reqs, probe) = scenario(50);
        let j = join(&reqs, &[], &probe, &names());
        assert_eq!(j.breakdowns.len(), 50);
        assert_eq!(j.join_rate(), 1.0);
        assert_eq!(j.clamped, 0);
        // The symmetric outside delays (400 µs each way to the written/first-byte times)
        // give the true offset.
        let offset = j.offset.ns.expect("estimated");
        assert!((offset - OFFSET).abs() < 1_000, "offset {offset}");
        for b in &j.breakdowns {
            assert!(b.reached_pod);
            assert_eq!(b.unaccounted_ns + b.hops_ns(), b.e2e_ns, "adds up exactly");
            assert_eq!(b.unaccounted_ns, 1_000_000, "500 µs each way outside");
            assert_eq!(seg(b, "front datapath_in"), 10_000);
            // In (20 µs) and the call's response back into the pod (10 µs): one name, summed.
            assert_eq!(seg(b, "front pod_delivery"), 30_000);
            assert_eq!(seg(b, "front app_queue"), 2_000_000);
            // 5 ms before the call, 4.92 ms after it returned until the first response byte.
            assert_eq!(seg(b, "front app_processing"), 9_920_000);
            assert_eq!(seg(b, "back app_queue"), 10_000);
            assert_eq!(seg(b, "back datapath_in"), 10_000);
            assert_eq!(seg(b, "front datapath_out"), 10_000);
        }
    }

    #[test]
    fn the_handshake_on_the_node_side_is_a_hop_and_the_rest_stays_outside() {
        let (reqs, mut probe) = scenario(10);
        for d in probe.datapath.iter_mut().filter(|d| d.point == "node_in") {
            d.syn_ns = d.req_first_ns - 300_000;
            d.synack_ns = Some(d.syn_ns + 50_000);
        }
        let j = join(&reqs, &[], &probe, &names());
        assert_eq!(j.clamped, 0);
        for b in &j.breakdowns {
            assert_eq!(b.segments[0].hop, "node handshake");
            assert_eq!(b.segments[0].ns, 50_000);
            assert_eq!(b.unaccounted_ns, 950_000);
            assert_eq!(b.unaccounted_ns + b.hops_ns(), b.e2e_ns);
        }
    }

    #[test]
    fn a_tls_handshake_on_the_server_side_is_the_terminating_pods_time() {
        let (reqs, mut probe) = scenario(10);
        for d in probe.datapath.iter_mut().filter(|d| d.point == "node_in") {
            d.syn_ns = d.req_first_ns - 500_000;
            d.synack_ns = Some(d.syn_ns + 20_000);
            // ClientHello in, the server's flight out 80 µs later; the client's Finished
            // comes back after a 300 µs round trip outside.
            let ch = d.syn_ns + 100_000;
            d.tls = true;
            d.tls_handshake = Some(hopprobe_formats::records::HandshakeTimes {
                client_first_ns: ch,
                server_first_ns: ch + 70_000,
                server_last_ns: ch + 80_000,
                client_last_ns: ch + 380_000,
            });
        }
        let j = join(&reqs, &[], &probe, &names());
        assert_eq!(j.clamped, 0);
        for b in &j.breakdowns {
            assert_eq!(b.segments[0].hop, "node handshake");
            assert_eq!(b.segments[1].hop, "front tls_handshake");
            assert_eq!(b.segments[1].ns, 80_000);
            assert_eq!(b.unaccounted_ns, 1_000_000 - 20_000 - 80_000);
            assert_eq!(b.unaccounted_ns + b.hops_ns(), b.e2e_ns);
        }
    }

    #[test]
    fn missing_uplink_records_lower_the_join_rate() {
        let (reqs, mut probe) = scenario(20);
        let first = reqs[0].local.expect("local");
        probe
            .datapath
            .retain(|d| !(d.point == "node_in" && d.client == first));
        let j = join(&reqs, &[], &probe, &names());
        assert_eq!(j.unjoined, 1);
        assert_eq!(j.breakdowns.len(), 19);
        assert!((j.join_rate() - 0.95).abs() < 1e-9);
    }

    #[test]
    fn a_request_not_followed_into_a_pod_is_still_split_at_the_uplink() {
        let (reqs, mut probe) = scenario(5);
        probe.datapath.retain(|d| d.point == "node_in");
        let j = join(&reqs, &[], &probe, &names());
        assert_eq!(j.breakdowns.len(), 5);
        for b in &j.breakdowns {
            assert!(!b.reached_pod);
            assert_eq!(b.unaccounted_ns + b.hops_ns(), b.e2e_ns);
            assert_eq!(seg(b, "node (not followed)"), 20_000_000);
        }
    }

    #[test]
    fn negative_remainders_and_out_of_order_times_are_clamped_and_counted() {
        let (mut reqs, mut probe) = scenario(20);
        // A client that claims a shorter time than the node's span.
        reqs[3].end_ns = reqs[3].start_ns + 5_000_000;
        reqs[3].first_byte_ns = Some(reqs[3].end_ns);
        // A socket that says it read the request before it arrived.
        let front = probe
            .exchanges
            .iter_mut()
            .filter(|x| x.cgroup_id == 1 && x.role == "server")
            .nth(7)
            .expect("front exchange");
        front.first_read_ns = Some(front.req_first_ns - 1_000_000);
        let j = join(&reqs, &[], &probe, &names());
        assert_eq!(
            j.clamped,
            2,
            "{:?}",
            j.breakdowns
                .iter()
                .filter(|b| b.clamped)
                .map(|b| b.seq)
                .collect::<Vec<_>>()
        );
        let short = j.breakdowns.iter().find(|b| b.seq == 3).expect("joined");
        assert_eq!(short.unaccounted_ns, 0);
        assert!(short.clamped);
        let odd = j.breakdowns.iter().find(|b| b.seq == 7).expect("joined");
        assert_eq!(seg(odd, "front app_queue"), 0);
        assert!(odd.clamped);
        for b in &j.breakdowns {
            assert!(b.hops_ns() + b.unaccounted_ns >= b.e2e_ns);
            if !b.clamped {
                assert_eq!(b.unaccounted_ns + b.hops_ns(), b.e2e_ns);
            }
        }
    }

    /// Kept-alive connections: `conns` connections of `per_conn` requests each, the first
    /// `warm` of every connection warm-up, the connections' requests interleaved in time (as
    /// concurrent connections are). Node clock = client clock − OFFSET. Request `i` of a
    /// connection is exchange `i` everywhere, and the front app takes 970 µs + i × 10 µs to
    /// answer it, so a request joined with another exchange shows it.
    struct KeepAlive {
        requests: Vec<Request>,
        warmups: Vec<Request>,
        probe: ProbeRecords,
    }

    const SLOT_NS: u64 = 2_000_000;

    fn app_ns(exchange: u64) -> u64 {
        970_000 + exchange * 10_000
    }

    fn keepalive(conns: u64, per_conn: u64, warm: u64) -> KeepAlive {
        let us = 1_000u64;
        let mut out = KeepAlive {
            requests: Vec::new(),
            warmups: Vec::new(),
            probe: ProbeRecords::default(),
        };
        for c in 0..conns {
            let client = format!("10.77.0.2:{}", 40_000 + c);
            let masq = format!("10.78.0.1:{}", 50_000 + c);
            let isn = 7_000 + c as u32;
            let syn = 10_000_000_000 + c * 10 * us;
            for i in 0..per_conn {
                let slot = i * conns + c;
                let t_in = syn + 100 * us + slot * SLOT_NS;
                let t_out = t_in + 30 * us + app_ns(i);
                let at = |t: u64| t.wrapping_add_signed(OFFSET);
                let r = Request {
                    seq: slot,
                    warmup: i < warm,
                    conn: c,
                    reused: i > 0,
                    local: Some(sa(&client)),
                    remote: Some(sa("10.77.0.1:30080")),
                    start_ns: at(t_in - 50 * us),
                    written_ns: Some(at(t_in - 20 * us)),
                    first_byte_ns: Some(at(t_out + 20 * us)),
                    end_ns: at(t_out + 50 * us),
                    status: Some(200),
                    ..Request::default()
                };
                if r.warmup {
                    out.warmups.push(r);
                } else {
                    out.requests.push(r);
                }
                let mut up = dp(
                    "node_in",
                    1,
                    &client,
                    "10.77.0.1:30080",
                    isn,
                    [syn, t_in, t_out],
                );
                up.index = i as u32;
                let mut vin = dp(
                    "pod_in",
                    2,
                    &masq,
                    "10.78.0.10:9080",
                    isn,
                    [syn + 5 * us, t_in + 5 * us, t_out - 5 * us],
                );
                vin.index = i as u32;
                out.probe.datapath.extend([up, vin]);
                out.probe.exchanges.push(sock(
                    1,
                    "server",
                    "10.78.0.10:9080",
                    &masq,
                    [t_in + 10 * us, t_out - 10 * us, t_out - 10 * us],
                    Some(t_in + 20 * us),
                ));
            }
        }
        out
    }

    /// The exchange number the scenario gave request `seq`.
    fn exchange_of(seq: u64, conns: u64) -> u64 {
        seq / conns
    }

    fn assert_joined_with_its_own_exchange(j: &Joined, conns: u64) {
        for b in &j.breakdowns {
            assert!(b.reached_pod, "request {}", b.seq);
            assert!(!b.clamped, "request {}", b.seq);
            assert_eq!(
                seg(b, "front app_processing"),
                app_ns(exchange_of(b.seq, conns)),
                "request {} joined with another exchange",
                b.seq
            );
            assert_eq!(b.unaccounted_ns, 100_000, "request {}", b.seq);
            assert_eq!(b.unaccounted_ns + b.hops_ns(), b.e2e_ns);
        }
    }

    #[test]
    fn kept_alive_requests_are_joined_by_their_exchange_number() {
        // 8 connections of 25 requests: none carried exactly one, so no request can be told
        // apart by its 4-tuple alone, and the clocks are 3.7 s apart.
        let k = keepalive(8, 25, 0);
        let j = join(&k.requests, &k.warmups, &k.probe, &names());
        assert_eq!(j.breakdowns.len(), 200);
        assert_eq!(j.clamped, 0);
        assert_eq!(j.counts.by_exchange, 200);
        assert_eq!(j.counts.mismatched_connections, 0);
        assert_joined_with_its_own_exchange(&j, 8);
        // Every request bounds the offset: 50 µs before, 20 µs after the node's times.
        let o = &j.offset;
        assert_eq!((o.requests, o.agreeing), (200, 200), "{o:?}");
        assert_eq!(o.lo_ns, Some(OFFSET - 50_000), "{o:?}");
        assert_eq!(o.hi_ns, Some(OFFSET + 20_000), "{o:?}");
        let offset = o.ns.expect("estimated");
        // Equal one-way delays (written 20 µs before, first byte 20 µs after): exact.
        assert_eq!(offset, OFFSET, "{o:?}");
        assert!(o.note.is_none());
    }

    #[test]
    fn warm_up_requests_still_take_their_exchange_numbers() {
        // The first two exchanges of every connection were warm-up requests: measured request
        // k of a connection is its exchange k + 2, not k.
        let k = keepalive(4, 10, 2);
        assert_eq!(k.requests.len(), 32);
        let j = join(&k.requests, &k.warmups, &k.probe, &names());
        assert_eq!(j.requests, 32);
        assert_eq!(j.breakdowns.len(), 32);
        assert_joined_with_its_own_exchange(&j, 4);
        // Warm-up requests bound the offset too.
        assert_eq!(j.offset.requests, 40);
        // Without them the numbers do not line up (more exchanges than requests): the
        // requests are placed by time, or not at all, and never on another exchange.
        let j = join(&k.requests, &[], &k.probe, &names());
        assert_eq!(j.counts.mismatched_connections, 4);
        // And with no request joined by number, there is no offset to place them by.
        assert_eq!(j.breakdowns.len(), 0);
        assert!(j.offset.ns.is_none());
        assert!(j.offset.note.is_some());
    }

    #[test]
    fn failed_requests_keep_their_place_on_the_connection() {
        let mut k = keepalive(4, 10, 0);
        // Request 3 of connection 1 failed after it was sent (the node saw its exchange).
        let failed = k
            .requests
            .iter_mut()
            .find(|r| r.conn == 1 && exchange_of(r.seq, 4) == 3)
            .expect("request");
        failed.status = None;
        failed.error = Some("connection reset".into());
        let j = join(&k.requests, &k.warmups, &k.probe, &names());
        assert_eq!(j.requests, 39);
        assert_eq!(j.breakdowns.len(), 39);
        assert_joined_with_its_own_exchange(&j, 4);
    }

    #[test]
    fn a_connection_whose_exchange_numbers_do_not_line_up_is_placed_by_time() {
        let mut k = keepalive(4, 10, 0);
        // Connection 2: the node saw an exchange before the first request that the load
        // generator does not know of (a handshake of some protocol, say), so every exchange
        // number is one more than the request's. The extra one lies within the first
        // request's time, as a connection's set-up does.
        let isn = 7_002;
        let first = k
            .requests
            .iter()
            .find(|r| r.conn == 2 && exchange_of(r.seq, 4) == 0)
            .expect("request")
            .clone();
        for d in k.probe.datapath.iter_mut().filter(|d| d.isn == isn) {
            d.index += 1;
        }
        let start_node = first.start_ns.wrapping_add_signed(-OFFSET);
        let mut extra = dp(
            "node_in",
            1,
            "10.77.0.2:40002",
            "10.77.0.1:30080",
            isn,
            [
                start_node - 500_000,
                start_node + 10_000,
                start_node + 20_000,
            ],
        );
        extra.index = 0;
        k.probe.datapath.push(extra);
        let j = join(&k.requests, &k.warmups, &k.probe, &names());
        assert_eq!(j.counts.mismatched_connections, 1, "{:?}", j.counts);
        // The first request could be the extra exchange or its own: left unjoined. The
        // others are the one exchange of the tuple inside them on the estimated clock.
        assert_eq!(j.counts.ambiguous, 1, "{:?}", j.counts);
        assert_eq!(j.counts.by_time, 9, "{:?}", j.counts);
        assert_eq!(j.counts.by_exchange, 30, "{:?}", j.counts);
        assert_eq!(j.breakdowns.len(), 39);
        assert_eq!(j.unjoined, 1);
        assert!(!j.breakdowns.iter().any(|b| b.seq == first.seq));
        assert_joined_with_its_own_exchange(&j, 4);
        assert_eq!(j.offset.ns, Some(OFFSET));
    }

    #[test]
    fn a_connection_that_lost_an_exchange_contradicts_the_clock_and_is_placed_by_time() {
        let mut k = keepalive(4, 10, 0);
        // Connection 3: the node saw requests 4 and 5 as one exchange (the second sent before
        // the first's response passed), so from request 5 on every number is one short.
        let isn = 7_003;
        let five = k
            .probe
            .datapath
            .iter()
            .find(|d| d.isn == isn && d.index == 5)
            .expect("exchange 5")
            .clone();
        // The pod's veth saw the same stream, so numbers it the same way.
        k.probe.datapath.retain(|d| !(d.isn == isn && d.index == 5));
        for d in k.probe.datapath.iter_mut().filter(|d| d.isn == isn) {
            if d.index == 4 {
                d.resp_first_ns = five.resp_first_ns;
                d.resp_last_ns = five.resp_last_ns;
            } else if d.index > 5 {
                d.index -= 1;
            }
        }
        let j = join(&k.requests, &k.warmups, &k.probe, &names());
        // By number, request 5 would be exchange 6 and so on: their bounds contradict every
        // other request's, so the connection is placed by time.
        assert_eq!(j.counts.mismatched_connections, 1, "{:?}", j.counts);
        assert_eq!(j.offset.ns, Some(OFFSET));
        for b in j.breakdowns.iter().filter(|b| b.seq % 4 != 3) {
            assert_eq!(
                seg(b, "front app_processing"),
                app_ns(exchange_of(b.seq, 4))
            );
            assert!(!b.clamped);
        }
        // Requests 6–9 of connection 3 find their own exchanges by time; 4 and 5 none (the
        // merged exchange lies inside neither).
        let conn3: Vec<u64> = j
            .breakdowns
            .iter()
            .filter(|b| b.seq % 4 == 3)
            .map(|b| exchange_of(b.seq, 4))
            .collect();
        assert_eq!(conn3, vec![0, 1, 2, 3, 6, 7, 8, 9], "{:?}", j.counts);
        assert_eq!(j.unjoined, 2);
    }

    #[test]
    fn without_first_bytes_the_offset_is_not_estimated_and_says_so() {
        let mut k = keepalive(4, 5, 0);
        for r in &mut k.requests {
            r.first_byte_ns = None;
        }
        let j = join(&k.requests, &k.warmups, &k.probe, &names());
        // Exchange numbers need no clock: every request is joined all the same.
        assert_eq!(j.breakdowns.len(), 20);
        assert_eq!(j.counts.by_exchange, 20);
        assert!(!j.fallback);
        assert_eq!(j.offset.ns, None);
        let note = j.offset.note.as_deref().expect("why");
        assert!(note.contains("cannot be estimated"), "{note}");
        let reqs = super::super::input::Requests {
            requests: k.requests.clone(),
            warmups: Vec::new(),
            concurrency: None,
        };
        let e =
            super::super::aggregate::env_report("env", None, Some(&reqs), &k.probe, Some(&j), &[]);
        assert_eq!(e.mode, "per-request");
        let text = super::super::text::terminal(&[e]);
        assert!(
            text.contains("clamped 0  clock offset not estimated\n"),
            "{text}"
        );
        assert!(
            text.contains("note: clock offset not estimated: no request"),
            "{text}"
        );
    }

    #[test]
    fn clocks_that_contradict_every_join_fall_back_to_distributions() {
        let mut k = keepalive(4, 5, 0);
        // Each request claims to have ended before the node answered it, each by another
        // amount: no offset satisfies more than one of them.
        for (n, r) in k.requests.iter_mut().enumerate() {
            let shift = (n as u64 + 1) * 3 * SLOT_NS;
            r.first_byte_ns = r.first_byte_ns.map(|t| t - shift);
            r.start_ns += (n as u64 % 2) * 2 * SLOT_NS;
        }
        let j = join(&k.requests, &k.warmups, &k.probe, &names());
        assert!(j.fallback);
        assert!(j.breakdowns.is_empty());
        assert_eq!(j.offset.ns, None);
        assert!(
            j.offset.note.as_deref().expect("why").contains("disagree"),
            "{:?}",
            j.offset
        );
        // The report compares distributions instead, and says why.
        let reqs = super::super::input::Requests {
            requests: k.requests.clone(),
            warmups: Vec::new(),
            concurrency: None,
        };
        let e =
            super::super::aggregate::env_report("env", None, Some(&reqs), &k.probe, Some(&j), &[]);
        assert_eq!(e.mode, "distributions");
        assert_eq!(e.clock_offset_ms, None);
        assert!(
            e.distributions
                .iter()
                .all(|d| d.e2e_ms.is_some() && d.node_ms.is_some())
        );
        let text = super::super::text::terminal(&[e]);
        assert!(
            text.contains("mode: distributions (no per-request join)  clock offset not estimated"),
            "{text}"
        );
        assert!(
            text.contains(
                "note: clock offset not estimated: the requests joined by exchange number disagree"
            ),
            "{text}"
        );
    }
}
