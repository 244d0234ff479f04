//! The sidecar hop: what a proxy adds to each request it forwards.
//!
//! A proxy container's server-side exchange (downstream: the request it received and the
//! response it returned) encloses the client-side exchange it made for it (upstream). The hop
//! is the downstream exchange's time minus the upstream one's: the request's way through the
//! proxy plus the response's way back.
//!
//! Pairing: each upstream exchange goes to a not yet paired downstream exchange of the same
//! proxy and the same direction that encloses it (request started before, response returned
//! after): of those, the one whose response began first — the proxy relays an answer as soon
//! as it has it. Upstream exchanges are taken in the order their requests began, so every
//! downstream exchange still open then can enclose any later one's start too, and taking the
//! tightest end leaves the others for later calls: no downstream exchange is left unpaired
//! while a pairing for it exists. (Taking instead the one whose request finished last before
//! the call, as hopprobe first did, left 3 % of the lab's downstream exchanges unpaired at
//! 32 connections: a call could take an exchange that a later, longer call needed.) At
//! concurrency 1 either is exact. Direction keeps the
//! two halves of a sidecar apart: a downstream exchange whose client is in the pod (the app,
//! redirected to the proxy on loopback) is outbound and pairs only with calls leaving the pod;
//! one from outside is inbound and pairs only with calls to the pod's own addresses. Without
//! it, a slow inbound request (queued behind a one-worker app) encloses the outbound calls of
//! other requests and soaks them up. Under concurrency, two requests that overlap
//! inside the proxy within a few microseconds can be swapped; each paired hop then stays within
//! the enclosing exchange and the distribution of hops is what is reported. Downstream exchanges
//! with no enclosed upstream one (the proxy answered itself, or the upstream exchange had not
//! completed) are counted as `unpaired`.
//!
//! Where the read hook saw the proxy read the request (before it forwarded it), the hop also
//! splits in two like the `app` hop: `queue`, the request waiting in the proxy's socket until
//! the proxy ran and read it (its thread's wake-up), and `processing`, the rest. On a machine
//! whose CPUs sleep between requests the queue part grows with every idle gap: in the lab,
//! 1 ms of injected delay raised the proxy's p90 queue wait by 0.11–0.14 ms on a quiet machine
//! and by up to 0.34 ms on a busy one, because its thread then woke on a CPU that had been idle
//! for longer. That is time the request really spent in
//! the sidecar, so it stays in the hop; the split says which part it was.

use std::collections::BTreeSet;

use probe_common::exchange::Exchange;

use crate::hops::addr;

/// Which way the proxy forwarded: into its pod (to the app) or out of it.
pub use hopprobe_formats::summary::HopDirection as Direction;

/// One paired hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarHop {
    pub direction: Direction,
    pub ns: u64,
    /// Request arrived → the proxy first read it, when that read was seen before the forward.
    pub queue_ns: Option<u64>,
}

/// The pod's own addresses as the proxy sees them: loopback, and where its inbound listener
/// was reached.
#[derive(Debug, Default)]
pub(crate) struct Own(Vec<std::net::IpAddr>);

impl Own {
    fn of(down: &[&Exchange]) -> Self {
        let mut own = Self::default();
        for d in down {
            own.learn(d);
        }
        own
    }

    /// Learns the pod's address from a downstream exchange.
    pub(crate) fn learn(&mut self, d: &Exchange) {
        let ip = addr::of_flow(&d.flow, true).ip();
        if !ip.is_loopback()
            && let Err(i) = self.0.binary_search(&ip)
        {
            self.0.insert(i, ip);
        }
    }

    fn contains(&self, ip: std::net::IpAddr) -> bool {
        ip.is_loopback() || self.0.contains(&ip)
    }

    /// A downstream exchange from inside the pod (the app's call, redirected to the proxy on
    /// loopback) is outbound; one from anywhere else is inbound.
    pub(crate) fn down(&self, d: &Exchange) -> Direction {
        let (local, remote) = (
            addr::of_flow(&d.flow, true).ip(),
            addr::of_flow(&d.flow, false).ip(),
        );
        if local.is_loopback() || self.contains(remote) {
            Direction::Outbound
        } else {
            Direction::Inbound
        }
    }

    /// Forwarded to loopback or to the pod's own address: into the pod.
    pub(crate) fn up(&self, u: &Exchange) -> Direction {
        if self.contains(addr::of_flow(&u.flow, false).ip()) {
            Direction::Inbound
        } else {
            Direction::Outbound
        }
    }
}

/// Pairs a proxy's upstream exchanges with its downstream ones (see the module's text) and
/// counts the downstream exchanges left unpaired.
pub fn pair(down: &[Exchange], up: &[Exchange]) -> (Vec<SidecarHop>, u64) {
    let own = Own::of(&down.iter().collect::<Vec<_>>());
    let mut hops = Vec::new();
    let mut unpaired = 0;
    for direction in [Direction::Inbound, Direction::Outbound] {
        let before = hops.len();
        let mut downs: Vec<&Exchange> = down.iter().filter(|d| own.down(d) == direction).collect();
        let mut ups: Vec<&Exchange> = up.iter().filter(|u| own.up(u) == direction).collect();
        downs.sort_by_key(|x| x.req_first_ns);
        ups.sort_by_key(|x| x.req_first_ns);
        // Downstream exchanges whose request began before the upstream request being paired,
        // not taken yet, by when their response began.
        let mut open: BTreeSet<(u64, usize)> = BTreeSet::new();
        let mut next = 0;
        for u in ups {
            while next < downs.len() && downs[next].req_first_ns <= u.req_first_ns {
                open.insert((downs[next].resp_first_ns, next));
                next += 1;
            }
            let Some(&(resp, i)) = open.range((u.resp_first_ns, 0)..).next() else {
                continue;
            };
            open.remove(&(resp, i));
            hops.push(hop_of(downs[i], u, direction));
        }
        unpaired += (downs.len() - (hops.len() - before)) as u64;
    }
    (hops, unpaired)
}

/// The hop of a downstream exchange `d` and the upstream one `u` it encloses.
pub(crate) fn hop_of(d: &Exchange, u: &Exchange, direction: Direction) -> SidecarHop {
    let total = d.resp_first_ns - d.req_first_ns;
    let inner = u.resp_first_ns.saturating_sub(u.req_first_ns);
    let ns = total.saturating_sub(inner);
    // 0: no read seen.
    let queue_ns = (d.first_read_ns != 0
        && (d.req_first_ns..=u.req_first_ns).contains(&d.first_read_ns))
    .then(|| (d.first_read_ns - d.req_first_ns).min(ns));
    SidecarHop {
        direction,
        ns,
        queue_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{
        conn::{AF_INET, FlowKey},
        exchange::{PHASE_RESPONSE, ROLE_CLIENT, ROLE_SERVER},
    };

    fn x(role: u8, remote: [u8; 4], req: u64, resp: u64) -> Exchange {
        at(role, POD, remote, req, resp)
    }

    /// An exchange on a socket bound to `local` (the proxy's end).
    fn at(role: u8, local: [u8; 4], remote: [u8; 4], req: u64, resp: u64) -> Exchange {
        let mut flow = FlowKey {
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 15006,
            remote_port: 9080,
            family: AF_INET,
            _pad: 0,
        };
        flow.local_addr[..4].copy_from_slice(&local);
        flow.remote_addr[..4].copy_from_slice(&remote);
        Exchange {
            req_first_ns: req,
            req_last_ns: req,
            resp_first_ns: resp,
            resp_last_ns: resp,
            req_bytes: 1,
            resp_bytes: 1,
            first_read_ns: 0,
            cgroup_id: 9,
            cookie: 0,
            flow,
            role,
            phase: PHASE_RESPONSE,
            kind: 0,
            tls: 0,
            _pad: [0; 4],
        }
    }

    const POD: [u8; 4] = [10, 78, 0, 11];
    const CLIENT: [u8; 4] = [10, 78, 0, 10];
    const LOOPBACK: [u8; 4] = [127, 0, 0, 1];
    const SERVICE: [u8; 4] = [10, 96, 0, 13];

    #[test]
    fn one_request_at_a_time_pairs_exactly() {
        // Downstream 0..10 ms; the proxy forwarded at 2 ms and got the answer at 7 ms.
        let down = [x(ROLE_SERVER, CLIENT, 0, 10_000_000)];
        let up = [x(ROLE_CLIENT, LOOPBACK, 2_000_000, 7_000_000)];
        let (hops, unpaired) = pair(&down, &up);
        assert_eq!(
            hops,
            vec![SidecarHop {
                direction: Direction::Inbound,
                ns: 5_000_000,
                queue_ns: None
            }]
        );
        assert_eq!(unpaired, 0);
    }

    #[test]
    fn a_read_before_the_forward_splits_the_hop() {
        // Arrived at 0, read at 0.3 ms, forwarded at 2 ms, answered at 7 ms, returned at 10 ms.
        let mut d = x(ROLE_SERVER, CLIENT, 0, 10_000_000);
        d.first_read_ns = 300_000;
        let up = [x(ROLE_CLIENT, LOOPBACK, 2_000_000, 7_000_000)];
        assert_eq!(pair(&[d], &up).0[0].queue_ns, Some(300_000));
        // A read seen only after the forward (a later request's, or a missed one) says
        // nothing about this request's wait.
        d.first_read_ns = 2_500_000;
        assert_eq!(pair(&[d], &up).0[0].queue_ns, None);
    }

    #[test]
    fn outbound_calls_go_to_services() {
        // The app's call, redirected to the proxy's outbound port on loopback.
        let down = [at(ROLE_SERVER, LOOPBACK, POD, 0, 4_000)];
        let up = [x(ROLE_CLIENT, SERVICE, 1_000, 3_000)];
        assert_eq!(pair(&down, &up).0[0].direction, Direction::Outbound);
    }

    #[test]
    fn a_slow_inbound_request_does_not_take_outbound_calls() {
        // The app, busy with an earlier request, calls out: 40..44 ms downstream, forwarded
        // 41..43 ms. Between the two an inbound request arrives (40.5 ms), held by the proxy's
        // delay until 41.6 ms, then queued behind the app until 99.6 ms: it arrived last
        // before the call was forwarded and encloses it, but it is the other half of the proxy.
        let down = [
            x(ROLE_SERVER, CLIENT, 40_500_000, 101_000_000),
            at(ROLE_SERVER, LOOPBACK, POD, 40_000_000, 44_000_000),
        ];
        let up = [
            x(ROLE_CLIENT, SERVICE, 41_000_000, 43_000_000),
            x(ROLE_CLIENT, LOOPBACK, 41_600_000, 99_600_000),
        ];
        let (mut hops, unpaired) = pair(&down, &up);
        hops.sort_by_key(|h| h.direction);
        assert_eq!(
            hops,
            vec![
                SidecarHop {
                    direction: Direction::Inbound,
                    ns: 2_500_000,
                    queue_ns: None
                },
                SidecarHop {
                    direction: Direction::Outbound,
                    ns: 2_000_000,
                    queue_ns: None
                }
            ]
        );
        assert_eq!(unpaired, 0);
    }

    #[test]
    fn overlapping_requests_pair_with_the_enclosing_one_answered_first() {
        // Two downstream requests 1 ms apart, each forwarded 0.5 ms after it arrived.
        let down = [
            x(ROLE_SERVER, CLIENT, 0, 10_000),
            x(ROLE_SERVER, CLIENT, 1_000, 11_000),
        ];
        let up = [
            x(ROLE_CLIENT, LOOPBACK, 500, 9_000),
            x(ROLE_CLIENT, LOOPBACK, 1_500, 10_000),
        ];
        let (hops, unpaired) = pair(&down, &up);
        let ns: Vec<u64> = hops.iter().map(|h| h.ns).collect();
        assert_eq!((ns, unpaired), (vec![1_500, 1_500], 0));
    }

    #[test]
    fn a_short_call_does_not_take_the_exchange_a_longer_one_needs() {
        // Request A answered at 50, B at 100; a call 20..40 fits both, a call 30..90 only B.
        let down = [
            x(ROLE_SERVER, CLIENT, 0, 50),
            x(ROLE_SERVER, CLIENT, 10, 100),
        ];
        let up = [
            x(ROLE_CLIENT, LOOPBACK, 20, 40),
            x(ROLE_CLIENT, LOOPBACK, 30, 90),
        ];
        let (hops, unpaired) = pair(&down, &up);
        let ns: Vec<u64> = hops.iter().map(|h| h.ns).collect();
        assert_eq!((ns, unpaired), (vec![30, 30], 0));
    }

    #[test]
    fn a_downstream_exchange_without_an_upstream_one_is_unpaired() {
        let down = [
            x(ROLE_SERVER, CLIENT, 0, 10),
            x(ROLE_SERVER, CLIENT, 20, 30),
        ];
        let up = [x(ROLE_CLIENT, LOOPBACK, 2, 8)];
        let (hops, unpaired) = pair(&down, &up);
        assert_eq!((hops.len(), unpaired), (1, 1));
    }
}
