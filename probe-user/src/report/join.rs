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

use std::{collections::HashMap, net::SocketAddr};

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
    /// node clock + offset = load generator's clock.
    pub offset_ns: i64,
    /// Requests that completed without error (the ones joined).
    pub requests: usize,
    pub breakdowns: Vec<Breakdown>,
    /// Requests with no uplink record.
    pub unjoined: usize,
    pub clamped: usize,
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
    /// request arrived at or after `after` (nearest first).
    fn server_from(
        &self,
        peer: SocketAddr,
        ip: Option<std::net::IpAddr>,
        after: u64,
    ) -> Option<usize> {
        let list = self.servers_by_remote.get(&peer)?;
        // A little slack: the socket's first byte cannot precede the veth's, but clocks of
        // different hooks are read at slightly different moments.
        let from = after.saturating_sub(1_000);
        list.iter()
            .copied()
            .filter(|&i| ip.is_none_or(|ip| self.ex[i].local.ip() == ip))
            .find(|&i| self.ex[i].req_first_ns >= from)
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
                && let Some(vin) = self.pod_in(vout.isn, vout.index, vout.syn_ns, vout.ifindex)
                && let Some(s) =
                    self.server_from(vin.client, Some(vin.server.ip()), vin.req_first_ns)
            {
                let callee = vin
                    .pod
                    .clone()
                    .unwrap_or_else(|| self.names.of(self.ex[s].cgroup_id).0);
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
            // Inside the pod (sidecar ↔ app): the callee's socket sees this socket's address.
            if let Some(s) = self.server_from(kx.local, None, kx.req_first_ns)
                && self.ex[s].req_first_ns <= end
            {
                out.push(("loopback".into(), self.ex[s].req_first_ns));
                self.serve(s, depth, out, reached);
                out.push(("loopback".into(), end));
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

/// The offset (node clock + offset = client clock) from matched pairs, as described above.
pub fn estimate_offset(pairs: &[(&Request, &DatapathRecord)]) -> Option<i64> {
    let mut samples: Vec<(i128, i128)> = pairs
        .iter()
        .filter_map(|(r, u)| {
            let (sent, got) = client_times(r)?;
            let (u_in, u_out) = (i128::from(u.req_first_ns), i128::from(u.resp_first_ns?));
            let (sent, got) = (i128::from(sent), i128::from(got));
            let outside = (got - sent) - (u_out - u_in);
            Some((outside, ((sent - u_in) + (got - u_out)) / 2))
        })
        .collect();
    if samples.is_empty() {
        return None;
    }
    samples.sort_by_key(|s| s.0);
    let best = (samples.len() / 10).max(1);
    let mut thetas: Vec<i128> = samples[..best].iter().map(|s| s.1).collect();
    thetas.sort();
    let theta = thetas[thetas.len() / 2];
    // Hard bounds: every request started before its first byte reached the node, and got the
    // response's first byte after it left the node. One-way delays are rarely equal (the
    // client's wake-up is on the way back only), so keep the estimate inside the bounds.
    let lo = pairs
        .iter()
        .map(|(r, u)| i128::from(r.start_ns) - i128::from(u.req_first_ns))
        .max()?;
    let hi = pairs
        .iter()
        .filter_map(|(r, u)| Some(i128::from(r.first_byte_ns?) - i128::from(u.resp_first_ns?)))
        .min()?;
    let theta = if lo <= hi { theta.clamp(lo, hi) } else { theta };
    Some(theta as i64)
}

fn shift(t: u64, offset: i64) -> u64 {
    (i128::from(t) + i128::from(offset)).max(0) as u64
}

/// Joins and decomposes the successful requests of one environment.
pub fn join(requests: &[Request], probe: &ProbeRecords, names: &Names) -> Joined {
    let ok: Vec<&Request> = requests.iter().filter(|r| r.ok()).collect();
    let mut uplink: HashMap<(SocketAddr, SocketAddr), Vec<&DatapathRecord>> = HashMap::new();
    for d in probe.datapath.iter().filter(|d| d.point == "node_in") {
        uplink.entry((d.client, d.server)).or_default().push(d);
    }
    let mut by_tuple: HashMap<(SocketAddr, SocketAddr), Vec<&Request>> = HashMap::new();
    for r in &ok {
        if let (Some(l), Some(rm)) = (r.local, r.remote) {
            by_tuple.entry((l, rm)).or_default().push(r);
        }
    }
    // Offset from connections that carried exactly one request and were seen once.
    let unique: Vec<(&Request, &DatapathRecord)> = by_tuple
        .iter()
        .filter_map(
            |(t, rs)| match (rs.as_slice(), uplink.get(t).map(Vec::as_slice)) {
                ([r], Some([u])) => Some((*r, *u)),
                _ => None,
            },
        )
        .collect();
    let offset = estimate_offset(&unique).unwrap_or(0);
    let index = Index::new(names, probe);
    let mut breakdowns = Vec::new();
    let mut unjoined = 0;
    let mut clamped_count = 0;
    for r in ok.iter().copied() {
        let u = r
            .local
            .zip(r.remote)
            .and_then(|t| uplink.get(&t))
            .and_then(|us| {
                // The uplink exchange nearest to the request's own time on the node's clock.
                let (sent, _) = client_times(r)?;
                us.iter()
                    .filter(|u| u.resp_last_ns.is_some())
                    .min_by_key(|u| shift(u.req_first_ns, offset).abs_diff(sent))
                    .copied()
            });
        let Some(u) = u else {
            unjoined += 1;
            continue;
        };
        let mut points = Vec::new();
        let mut reached = false;
        let u_end = u.resp_last_ns.unwrap_or(u.req_last_ns);
        if let Some(vin) = index.pod_in(u.isn, u.index, u.syn_ns, u.ifindex)
            && let Some(s) = index.server_from(vin.client, Some(vin.server.ip()), vin.req_first_ns)
        {
            let pod = vin
                .pod
                .clone()
                .unwrap_or_else(|| names.of(probe.exchanges[s].cgroup_id).0);
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
        // A connection opened for this request: its handshake's time on the node's side
        // (SYN in → SYN-ACK out, including SYNs the pod dropped and the client resent) is a
        // hop; the SYN-ACK's trip to the client and back is outside.
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
        let e2e = r.end_ns.saturating_sub(r.start_ns);
        let unaccounted = match e2e.checked_sub(inside) {
            Some(rest) => rest,
            None => {
                clamped = true;
                0
            }
        };
        // The node's span must lie within the request's on the estimated common clock.
        if shift(u.req_first_ns, offset) < r.start_ns || shift(node_end, offset) > r.end_ns {
            clamped = true;
        }
        if clamped {
            clamped_count += 1;
        }
        breakdowns.push(Breakdown {
            seq: r.seq,
            start_ns: r.start_ns,
            e2e_ns: e2e,
            unaccounted_ns: unaccounted,
            segments: segs,
            reached_pod: reached,
            clamped,
        });
    }
    Joined {
        offset_ns: offset,
        requests: ok.len(),
        breakdowns,
        unjoined,
        clamped: clamped_count,
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
        let j = join(&reqs, &probe, &names());
        assert_eq!(j.breakdowns.len(), 50);
        assert_eq!(j.join_rate(), 1.0);
        assert_eq!(j.clamped, 0);
        // The symmetric outside delays (400 µs each way to the written/first-byte times)
        // give the true offset.
        assert!(
            (j.offset_ns - OFFSET).abs() < 1_000,
            "offset {}",
            j.offset_ns
        );
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
        let j = join(&reqs, &probe, &names());
        assert_eq!(j.clamped, 0);
        for b in &j.breakdowns {
            assert_eq!(b.segments[0].hop, "node handshake");
            assert_eq!(b.segments[0].ns, 50_000);
            assert_eq!(b.unaccounted_ns, 950_000);
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
        let j = join(&reqs, &probe, &names());
        assert_eq!(j.unjoined, 1);
        assert_eq!(j.breakdowns.len(), 19);
        assert!((j.join_rate() - 0.95).abs() < 1e-9);
    }

    #[test]
    fn a_request_not_followed_into_a_pod_is_still_split_at_the_uplink() {
        let (reqs, mut probe) = scenario(5);
        probe.datapath.retain(|d| d.point == "node_in");
        let j = join(&reqs, &probe, &names());
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
        let j = join(&reqs, &probe, &names());
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
}
