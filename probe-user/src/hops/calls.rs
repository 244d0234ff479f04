//! Which outbound calls a process made for which of the requests it served, and what is left
//! of each request once its calls are taken out: the `app_self` hop.
//!
//! A caller's `app` hop includes the calls it waits for, so the app's own time cannot be read
//! off the `app` and `upstream` series: percentiles do not subtract (p90 of `app` less the
//! p90s of its calls is not the p90 of anything, and in the lab it came out up to 1.3 ms off
//! for 2 ms of service time). `app_self` is taken per request instead, and its percentiles
//! are those of real requests.

use std::collections::HashMap;

use probe_common::exchange::{Exchange, ROLE_SERVER};

/// The times of an exchange that attribution needs, from the kernel's `Exchange` (live) or
/// from a records file (the report).
pub trait Timed {
    fn cgroup_id(&self) -> u64;
    fn is_server(&self) -> bool;
    fn req_first_ns(&self) -> u64;
    /// When the process took the request: its first read when seen, else the request's last
    /// byte (it cannot have started on it before).
    fn took_ns(&self) -> u64;
    fn resp_first_ns(&self) -> Option<u64>;
    fn resp_last_ns(&self) -> Option<u64>;
}

impl Timed for Exchange {
    fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }

    fn is_server(&self) -> bool {
        self.role == ROLE_SERVER
    }

    fn req_first_ns(&self) -> u64 {
        self.req_first_ns
    }

    fn took_ns(&self) -> u64 {
        if self.first_read_ns != 0 {
            self.first_read_ns
        } else {
            self.req_last_ns
        }
    }

    fn resp_first_ns(&self) -> Option<u64> {
        (self.resp_first_ns != 0).then_some(self.resp_first_ns)
    }

    fn resp_last_ns(&self) -> Option<u64> {
        (self.resp_last_ns != 0).then_some(self.resp_last_ns)
    }
}

/// When a call ended: its last response byte, and never before it began (which lets the
/// streaming pairing set aside requests answered before a call began as final).
pub fn call_end<T: Timed>(k: &T) -> u64 {
    k.resp_last_ns()
        .unwrap_or(k.req_first_ns())
        .max(k.req_first_ns())
}

/// Attributes each outbound call (client exchange) to the request its process was serving:
/// among the same cgroup's server exchanges that enclose the call (taken before it began,
/// answered after it ended) and have no call in flight then, the one whose process was last
/// active before the call (took its request, or got its previous call's answer). Exact when
/// the container serves one request at a time; under concurrency two requests that are
/// inside the same container at the same moment can be swapped (each call still lands inside
/// an enclosing request, so a decomposition stays consistent).
pub fn pair_children<T: Timed>(ex: &[T]) -> HashMap<usize, Vec<usize>> {
    let mut by_cgroup: HashMap<u64, (Vec<usize>, Vec<usize>)> = HashMap::new();
    for (i, x) in ex.iter().enumerate() {
        let e = by_cgroup.entry(x.cgroup_id()).or_default();
        if x.is_server() {
            e.0.push(i);
        } else if x.resp_last_ns().is_some() {
            e.1.push(i);
        }
    }
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    for (_, (mut servers, mut clients)) in by_cgroup {
        servers.sort_by_key(|&i| ex[i].took_ns());
        clients.sort_by_key(|&i| ex[i].req_first_ns());
        // Per server: when its process was last active (took it, or a call returned).
        let mut active: HashMap<usize, u64> = HashMap::new();
        for k in clients {
            let kx = &ex[k];
            let k_end = call_end(kx);
            let upto = servers.partition_point(|&s| ex[s].took_ns() <= kx.req_first_ns());
            let mut best: Option<(u64, usize)> = None;
            // Requests taken long before are either enclosing (then still found) or done:
            // look back a bounded number of them.
            for &s in servers[..upto].iter().rev().take(1024) {
                let sx = &ex[s];
                let Some(resp) = sx.resp_first_ns() else {
                    continue;
                };
                if resp < k_end {
                    continue;
                }
                let last = *active.get(&s).unwrap_or(&sx.took_ns());
                if last > kx.req_first_ns() {
                    continue;
                }
                if best.is_none_or(|(t, _)| last > t) {
                    best = Some((last, s));
                }
            }
            if let Some((_, s)) = best {
                children.entry(s).or_default().push(k);
                active.insert(s, k_end);
            }
        }
    }
    children
}

/// One request's own time at an app that made calls for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppSelf {
    pub cgroup_id: u64,
    pub local_port: u16,
    /// The `app` hop (first request byte in → first response byte out) less the `upstream`
    /// hops of the calls attributed to it (first request byte out → first response byte in).
    pub ns: u64,
}

/// `app_self` of every answered request served by a cgroup that made calls during the run.
/// A request for which that cgroup made no call has `app_self` = `app`; a container that never
/// calls out gets no `app_self` series, since its `app` is its own time already.
pub fn app_self(ex: &[Exchange]) -> Vec<AppSelf> {
    let children = pair_children(ex);
    let callers: std::collections::HashSet<u64> = ex
        .iter()
        .filter(|x| !x.is_server() && x.resp_first_ns != 0)
        .map(|x| x.cgroup_id)
        .collect();
    ex.iter()
        .enumerate()
        .filter(|(_, x)| x.is_server() && x.resp_first_ns != 0 && callers.contains(&x.cgroup_id))
        .map(|(i, x)| {
            let calls: u64 = children
                .get(&i)
                .into_iter()
                .flatten()
                .map(|&k| ex[k].resp_first_ns.saturating_sub(ex[k].req_first_ns))
                .sum();
            AppSelf {
                cgroup_id: x.cgroup_id,
                local_port: x.flow.local_port,
                ns: x
                    .resp_first_ns
                    .saturating_sub(x.req_first_ns)
                    .saturating_sub(calls),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{
        conn::{AF_INET, FlowKey},
        exchange::{PHASE_RESPONSE, ROLE_CLIENT},
    };

    const US: u64 = 1_000;

    /// An exchange of cgroup `cg`; times in µs: request in (and read), response out.
    fn x(cg: u64, role: u8, req: u64, resp: u64) -> Exchange {
        Exchange {
            req_first_ns: req * US,
            req_last_ns: req * US,
            resp_first_ns: resp * US,
            resp_last_ns: resp * US,
            req_bytes: 1,
            resp_bytes: 1,
            first_read_ns: 0,
            cgroup_id: cg,
            cookie: 0,
            flow: FlowKey {
                local_addr: [0; 16],
                remote_addr: [0; 16],
                local_port: if role == ROLE_SERVER { 9080 } else { 40000 },
                remote_port: 0,
                family: AF_INET,
                _pad: 0,
            },
            role,
            phase: PHASE_RESPONSE,
            kind: 0,
            tls: 0,
            _pad: [0; 4],
        }
    }

    fn server(cg: u64, req: u64, resp: u64) -> Exchange {
        x(cg, ROLE_SERVER, req, resp)
    }

    fn client(cg: u64, req: u64, resp: u64) -> Exchange {
        x(cg, ROLE_CLIENT, req, resp)
    }

    fn selves(ex: &[Exchange]) -> Vec<u64> {
        let mut v: Vec<u64> = app_self(ex).iter().map(|a| a.ns / US).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_request_loses_every_call_made_for_it() {
        // 0..100 µs, calls 10..30 and 40..90: 30 µs of its own.
        let ex = [server(1, 0, 100), client(1, 10, 30), client(1, 40, 90)];
        assert_eq!(selves(&ex), vec![30]);
        assert_eq!(app_self(&ex)[0].local_port, 9080);
    }

    #[test]
    fn the_tail_is_that_of_whole_requests_not_of_each_part() {
        // Two kinds of request: slow call and fast work, or fast call and slow work. Per
        // request the app's own time is 10 or 40 µs; p90 of app (100) less p90 of calls
        // (90) would say 10 for the slow one.
        let ex = [
            server(1, 0, 100),
            client(1, 5, 95),
            server(1, 200, 300),
            client(1, 205, 265),
        ];
        assert_eq!(selves(&ex), vec![10, 40]);
    }

    #[test]
    fn requests_served_side_by_side_keep_their_own_calls() {
        // Request A taken at 0 calls at 10..50; request B, taken at 20, calls at 30..40.
        // Each call goes to the request that was last active before it began.
        let mut b = server(1, 20, 70);
        b.first_read_ns = 20 * US;
        let ex = [server(1, 0, 60), b, client(1, 10, 50), client(1, 30, 40)];
        let children = pair_children(&ex);
        assert_eq!(children[&0], vec![2]);
        assert_eq!(children[&1], vec![3]);
        assert_eq!(selves(&ex), vec![20, 40]);
    }

    #[test]
    fn leaves_and_other_containers_get_none() {
        // cgroup 2 serves without calling out; cgroup 1's call is not cgroup 2's.
        let ex = [server(2, 0, 100), client(1, 10, 30), server(1, 200, 210)];
        let got = app_self(&ex);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].cgroup_id, got[0].ns), (1, 10 * US));
    }

    #[test]
    fn unanswered_requests_and_calls_are_left_out() {
        let mut open = server(1, 0, 0);
        open.resp_last_ns = 0;
        let ex = [open, server(1, 100, 200), client(1, 120, 150)];
        assert_eq!(selves(&ex), vec![70]);
    }
}
