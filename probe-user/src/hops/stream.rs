//! The hops that take two exchanges, paired while the run goes on: `sidecar` (a proxy's
//! downstream exchange less the upstream one it made for it, `sidecar::pair`) and `app_self`
//! (an app's request less the calls it made for it, `calls::pair_children`), in memory
//! proportional to the exchanges in flight rather than to the run's length.
//!
//! Both pairings are sweeps over calls (upstream or client exchanges) in the order their
//! requests began, against the enclosing exchanges that had begun by then. Here the sweep
//! advances in steps: `sweep(cutoff)` takes every call whose request began before `cutoff`.
//! An enclosing exchange whose response began before the sweep's position can take no later
//! call (a call ends after it begins), so it is final then: its hop is recorded and it is
//! forgotten. The run sweeps to `now − horizon` every second: a record that reaches hopprobe
//! within the horizon of its request's start pairs exactly as it would at the end of the run;
//! one that comes later is counted in `pairing_late` (a kept-alive connection reports its
//! last exchange with the next request on it, or its close). A proxy's downstream exchanges
//! are held `LATE_GRACE_NS` longer, so that a late upstream exchange still pairs with the one
//! that encloses it; a late call of an app is not taken out of `app_self`. At the
//! end of the run `finish` sweeps everything. The batch functions stay the reference: the
//! tests feed both the same records and compare the hops.

use std::collections::{BTreeSet, HashMap, VecDeque, btree_map::BTreeMap};

use probe_common::exchange::{Exchange, ROLE_SERVER};

use super::{
    HopAggregator,
    calls::{AppSelf, Timed, call_end},
    sidecar::{Direction, Own, SidecarHop, hop_of},
};
use crate::series::latency::Latency;

/// Exchanges waiting to be paired, at most; beyond it they are counted in `pairing_overflow`
/// (about 100 MB of them).
const MAX_PENDING: usize = 1_000_000;
/// How long a proxy's downstream exchange is held after the sweep passed its answer, for a
/// call that arrives late.
const LATE_GRACE_NS: u64 = 60_000_000_000;
/// How many downstream exchanges a proxy holds per direction for late calls, at most: when
/// records are rate-limited, many a call never comes, and holding each of its downstream
/// exchanges the full `LATE_GRACE_NS` made memory grow with the rate (about 200 000 held at
/// 40 000 exchanges/s in `cargo xtask soak`). The oldest go first, as unpaired.
const MAX_HELD_LATE: usize = 4096;
/// How many of a container's most recently taken requests a call is checked against
/// (`calls::pair_children`'s look-back).
const LOOK_BACK: usize = 1024;

#[derive(Default)]
pub struct Pairing {
    /// By cgroup, looked up for every exchange: foldhash, not the default SipHash.
    proxies: HashMap<u64, Proxy, foldhash::fast::RandomState>,
    apps: HashMap<u64, App, foldhash::fast::RandomState>,
    pending: usize,
    /// The last sweep's cutoff: a container seen anew starts from it (its records before it
    /// are late as anyone's).
    swept_to: u64,
    /// Records that arrived after the sweep had passed their request's start.
    pub late: u64,
    /// Answered exchanges not kept because `MAX_PENDING` were waiting.
    pub overflow: u64,
    /// Proxies' downstream exchanges with no upstream one.
    pub sidecar_unpaired: u64,
}

impl Pairing {
    /// Keeps an answered exchange until the sweep reaches it.
    pub fn add(&mut self, x: &Exchange, proxy: bool) {
        if x.resp_first_ns == 0 {
            return;
        }
        if self.pending >= MAX_PENDING {
            self.overflow += 1;
            return;
        }
        self.pending += 1;
        let swept_to = self.swept_to;
        if proxy {
            self.proxies
                .entry(x.cgroup_id)
                .or_insert_with(|| Proxy {
                    swept_to,
                    ..Proxy::default()
                })
                .add(x);
        } else {
            self.apps
                .entry(x.cgroup_id)
                .or_insert_with(|| App {
                    swept_to,
                    ..App::default()
                })
                .add(x);
        }
    }

    /// Pairs every call whose request began before `cutoff` and records the hops that are
    /// final by then.
    pub fn sweep(&mut self, cutoff: u64, hops: &mut HopAggregator) {
        for (&cgroup, p) in &mut self.proxies {
            let s = p.sweep(cutoff);
            self.pending -= s.consumed;
            self.late += s.late;
            self.sidecar_unpaired += s.unpaired;
            for hop in s.hops {
                hops.record_sidecar(cgroup, hop);
            }
        }
        for (&cgroup, a) in &mut self.apps {
            let s = a.sweep(cutoff);
            self.pending -= s.consumed;
            self.late += s.late;
            for (port, ns) in s.selves {
                if a.caller {
                    hops.record_app_self(AppSelf {
                        cgroup_id: cgroup,
                        local_port: port,
                        ns,
                    });
                } else {
                    // Whether this container makes calls is not known yet: `app_self` of a
                    // container that never does is its `app` and is not reported.
                    a.uncalled.entry(port).or_default().record(ns);
                }
            }
            if a.caller {
                for (port, l) in std::mem::take(&mut a.uncalled) {
                    hops.add_app_self(cgroup, port, &l);
                }
            }
        }
        self.swept_to = self.swept_to.max(cutoff);
        // Containers with nothing left go; their state is a few words.
        self.proxies.retain(|_, p| !p.is_empty());
        // A caller stays one: its later requests go straight to `app_self`.
        self.apps
            .retain(|_, a| !a.is_empty() || a.caller || !a.uncalled.is_empty());
    }

    /// The end of the run: pairs what is left.
    pub fn finish(&mut self, hops: &mut HopAggregator) {
        self.sweep(u64::MAX, hops);
    }

    /// Exchanges waiting.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The containers with state here.
    pub fn cgroups(&self) -> impl Iterator<Item = u64> + '_ {
        self.proxies.keys().chain(self.apps.keys()).copied()
    }

    /// Drops a deleted container's state once nothing of it waits to be paired; whether it
    /// is gone.
    pub fn forget(&mut self, cgroup_id: u64) -> bool {
        if self.proxies.get(&cgroup_id).is_some_and(|p| !p.is_empty())
            || self.apps.get(&cgroup_id).is_some_and(|a| !a.is_empty())
        {
            return false;
        }
        self.proxies.remove(&cgroup_id);
        self.apps.remove(&cgroup_id);
        true
    }
}

/// A proxy container's exchanges, per direction.
#[derive(Default)]
struct Proxy {
    own: Own,
    /// Arrived, not swept yet.
    downs: Vec<Exchange>,
    ups: Vec<Exchange>,
    /// Downstream exchanges the sweep has passed the start of and not paired yet, by when
    /// their response began; per direction.
    open: [Open; 2],
    /// The sweep's position: every call that began before it has been paired or dropped.
    swept_to: u64,
    /// What a sweep takes out, kept with its capacity (see `Scratch`).
    scratch: Scratch,
}

/// Vectors a sweep fills and empties each time, kept between sweeps: a second's exchanges
/// taken out into new vectors were fresh pages to fault in every second (perf at c = 32 in
/// the lab, 2026-12-05: page faults and clearing were 10 % of hopprobe's CPU).
#[derive(Default)]
struct Scratch {
    calls: Vec<Exchange>,
    enclosing: Vec<Exchange>,
}

#[derive(Default)]
struct Open {
    by_resp: BTreeSet<(u64, u64)>,
    exchanges: HashMap<u64, Exchange, foldhash::fast::RandomState>,
    seq: u64,
}

impl Open {
    fn insert(&mut self, d: Exchange) {
        self.by_resp.insert((d.resp_first_ns, self.seq));
        self.exchanges.insert(self.seq, d);
        self.seq += 1;
    }
}

#[derive(Default)]
struct ProxySweep {
    hops: Vec<SidecarHop>,
    unpaired: u64,
    late: u64,
    consumed: usize,
}

fn slot(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

impl Proxy {
    fn add(&mut self, x: &Exchange) {
        if x.role == ROLE_SERVER {
            self.own.learn(x);
            self.downs.push(*x);
        } else {
            self.ups.push(*x);
        }
    }

    fn is_empty(&self) -> bool {
        self.downs.is_empty()
            && self.ups.is_empty()
            && self.open.iter().all(|o| o.by_resp.is_empty())
    }

    fn sweep(&mut self, cutoff: u64) -> ProxySweep {
        let mut s = ProxySweep::default();
        let position = self.swept_to;
        // Taken out in place: the exchanges still waiting keep their allocation, where a
        // partition into new vectors faulted in and copied them all every second (perf, at
        // c = 32 in the lab: 17 % of hopprobe's CPU in page faults and memmove).
        let Scratch {
            calls: mut ups,
            enclosing: mut downs,
        } = std::mem::take(&mut self.scratch);
        ups.extend(self.ups.extract_if(.., |u| u.req_first_ns < cutoff));
        s.consumed += ups.len();
        // In order of their start, the late ones (begun before the last sweep's position)
        // first.
        ups.sort_by_key(|u| u.req_first_ns);
        let (late_ups, in_turn) = ups.split_at(ups.partition_point(|u| u.req_first_ns < position));
        // Downstream exchanges that began before the cutoff join the sweep in order; late
        // ones at once.
        downs.extend(self.downs.extract_if(.., |d| d.req_first_ns < cutoff));
        downs.sort_by_key(|d| d.req_first_ns);
        let mut downs_in = downs.drain(..).peekable();
        while let Some(d) = downs_in.next_if(|d| d.req_first_ns < position) {
            s.late += 1;
            self.open_down(d);
        }
        // A late call pairs with the enclosing exchange answered first among those still
        // held, the sweep's rule applied out of turn.
        for u in late_ups {
            s.late += 1;
            let direction = self.own.up(u);
            let open = &mut self.open[slot(direction)];
            let found = open
                .by_resp
                .range((u.resp_first_ns, 0)..)
                .find(|(_, seq)| {
                    open.exchanges
                        .get(seq)
                        .is_some_and(|d| d.req_first_ns <= u.req_first_ns)
                })
                .copied();
            if let Some((resp, seq)) = found {
                open.by_resp.remove(&(resp, seq));
                if let Some(d) = open.exchanges.remove(&seq) {
                    s.hops.push(hop_of(&d, u, direction));
                    s.consumed += 1;
                }
            }
        }
        for u in in_turn {
            while let Some(d) = downs_in.next_if(|d| d.req_first_ns <= u.req_first_ns) {
                self.open_down(d);
            }
            let direction = self.own.up(u);
            let open = &mut self.open[slot(direction)];
            let Some(&(resp, seq)) = open.by_resp.range((u.resp_first_ns, 0)..).next() else {
                continue;
            };
            open.by_resp.remove(&(resp, seq));
            if let Some(d) = open.exchanges.remove(&seq) {
                s.hops.push(hop_of(&d, u, direction));
                s.consumed += 1;
            }
        }
        for d in downs_in {
            self.open_down(d);
        }
        ups.clear();
        self.scratch = Scratch {
            calls: ups,
            enclosing: downs,
        };
        self.swept_to = self.swept_to.max(cutoff);
        // A downstream exchange answered before the cutoff can take no call that began after
        // it; one of those that began before may still arrive late (the last exchange of a
        // kept-alive connection comes with the next request on it, or its close), so it is
        // held for `LATE_GRACE` more before it counts as unpaired.
        let expired = cutoff.saturating_sub(LATE_GRACE_NS);
        for open in &mut self.open {
            while let Some(&(resp, seq)) = open.by_resp.first() {
                let held_too_many = open.by_resp.len() > MAX_HELD_LATE && resp < cutoff;
                if resp >= expired && cutoff != u64::MAX && !held_too_many {
                    break;
                }
                open.by_resp.remove(&(resp, seq));
                open.exchanges.remove(&seq);
                s.unpaired += 1;
                s.consumed += 1;
            }
        }
        s
    }

    fn open_down(&mut self, d: Exchange) {
        let direction = self.own.down(&d);
        self.open[slot(direction)].insert(d);
    }
}

/// A container's requests and calls, for `app_self`.
#[derive(Default)]
struct App {
    servers: Vec<Exchange>,
    clients: Vec<Exchange>,
    /// The requests the sweep has taken in and not yet finished, in the order their process
    /// took them. Only open ones: each call looks through them, and with the finished ones
    /// kept for the look-back's sake a call read up to `LOOK_BACK` entries, most of them
    /// finished (18 % of hopprobe's CPU at c = 32 in the lab, perf, 2026-12-06).
    recent: VecDeque<Served>,
    /// How many requests the sweep has taken in: with `Served::seq`, which of the open ones
    /// are among the last `LOOK_BACK`.
    taken: u64,
    swept_to: u64,
    /// Whether the container has made an answered call.
    caller: bool,
    /// `app_self` of requests finished while the container had made no call, per port.
    uncalled: BTreeMap<u16, Latency>,
    scratch: Scratch,
}

struct Served {
    x: Exchange,
    /// Its place in the order requests were taken in (`App::taken`).
    seq: u64,
    /// The `upstream` time of the calls attributed to it so far.
    calls_ns: u64,
    /// When its process was last active for it: took it, or a call returned.
    active_ns: u64,
}

#[derive(Default)]
struct AppSweep {
    /// (port, ns) of requests final now.
    selves: Vec<(u16, u64)>,
    late: u64,
    consumed: usize,
}

impl AppSweep {
    /// Takes the requests answered before `t` out of `recent`: they can be given no more
    /// calls, so their `app_self` is final.
    fn finish_answered_before(&mut self, recent: &mut VecDeque<Served>, t: u64) {
        recent.retain(|served| {
            if served.x.resp_first_ns >= t {
                return true;
            }
            self.consumed += 1;
            let app = served.x.resp_first_ns.saturating_sub(served.x.req_first_ns);
            self.selves.push((
                served.x.flow.local_port,
                app.saturating_sub(served.calls_ns),
            ));
            false
        });
    }
}

impl App {
    fn add(&mut self, x: &Exchange) {
        if x.role == ROLE_SERVER {
            self.servers.push(*x);
        } else {
            self.caller = true;
            self.clients.push(*x);
        }
    }

    fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.clients.is_empty() && self.recent.is_empty()
    }

    fn sweep(&mut self, cutoff: u64) -> AppSweep {
        let mut s = AppSweep::default();
        let Scratch {
            calls: mut clients,
            enclosing: mut servers,
        } = std::mem::take(&mut self.scratch);
        clients.extend(self.clients.extract_if(.., |k| k.req_first_ns < cutoff));
        s.consumed += clients.len();
        // Unanswered calls are not attributed (as in the batch); late ones cannot be.
        clients.retain(|k| k.resp_last_ns().is_some());
        let before = clients.len();
        clients.retain(|k| k.req_first_ns >= self.swept_to);
        s.late += (before - clients.len()) as u64;
        clients.sort_by_key(|k| k.req_first_ns);
        servers.extend(self.servers.extract_if(.., |x| x.took_ns() < cutoff));
        servers.sort_by_key(Timed::took_ns);
        let mut servers_in = servers.drain(..).peekable();
        for k in clients.drain(..) {
            while let Some(x) = servers_in.next_if(|x| x.took_ns() <= k.req_first_ns) {
                self.take_in(x, &mut s);
            }
            let k_end = call_end(&k);
            let mut best: Option<(u64, usize)> = None;
            let mut answered = 0;
            for (i, served) in self.recent.iter().enumerate().rev() {
                if served.seq + (LOOK_BACK as u64) < self.taken {
                    break;
                }
                if served.x.resp_first_ns < k.req_first_ns {
                    answered += 1;
                }
                if served.x.resp_first_ns < k_end || served.active_ns > k.req_first_ns {
                    continue;
                }
                if best.is_none_or(|(t, _)| served.active_ns > t) {
                    best = Some((served.active_ns, i));
                }
            }
            if let Some((_, i)) = best {
                let served = &mut self.recent[i];
                served.calls_ns += k.resp_first_ns.saturating_sub(k.req_first_ns);
                served.active_ns = k_end;
            }
            // Requests answered before this call began can enclose neither it nor any later
            // one (calls come in the order they began, and no earlier than `swept_to`): they
            // are final now. Out of the list in batches, for the look-ups' sake: the requests
            // of the sweep's horizon would otherwise be read by every call.
            if answered > 16 && answered * 4 > self.recent.len() {
                s.finish_answered_before(&mut self.recent, k.req_first_ns);
            }
        }
        for x in servers_in {
            self.take_in(x, &mut s);
        }
        self.scratch = Scratch {
            calls: clients,
            enclosing: servers,
        };
        self.swept_to = self.swept_to.max(cutoff);
        // Requests answered before the cutoff can be given no later call.
        s.finish_answered_before(&mut self.recent, cutoff);
        s
    }

    fn take_in(&mut self, x: Exchange, s: &mut AppSweep) {
        if x.took_ns() < self.swept_to {
            // Calls before it were attributed without it: it keeps its whole time, as a
            // request that made no call.
            s.late += 1;
        }
        self.recent.push_back(Served {
            active_ns: x.took_ns(),
            x,
            seq: self.taken,
            calls_ns: 0,
        });
        self.taken += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hops::{calls, sidecar},
        names::cgroup::Resolver,
    };
    use probe_common::{
        conn::{AF_INET, FlowKey},
        exchange::{PHASE_RESPONSE, ROLE_CLIENT},
    };

    const US: u64 = 1_000;
    const PROXY: u64 = 9;
    const APP: u64 = 7;
    const POD: [u8; 4] = [10, 78, 0, 11];
    const CLIENT: [u8; 4] = [10, 78, 0, 10];
    const LOOPBACK: [u8; 4] = [127, 0, 0, 1];
    const SERVICE: [u8; 4] = [10, 96, 0, 13];

    fn x(cg: u64, role: u8, local: [u8; 4], remote: [u8; 4], req: u64, resp: u64) -> Exchange {
        let mut flow = FlowKey {
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: if role == ROLE_SERVER { 9080 } else { 40000 },
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
            cgroup_id: cg,
            cookie: 0,
            flow,
            role,
            phase: PHASE_RESPONSE,
            kind: 0,
            tls: 0,
            _pad: [0; 4],
        }
    }

    /// A small deterministic generator (no dependency for a test's jitter).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// `n` requests through a sidecar (inbound to the app on loopback, and the app's call out
    /// through it), overlapping, each with the time it reaches hopprobe: up to `delay_us`
    /// after its response ended.
    fn traffic(n: u64, delay_us: u64) -> Vec<(u64, Exchange, bool)> {
        let mut rng = Lcg(42);
        let mut out = Vec::new();
        for i in 0..n {
            let t = 1_000_000 * US + i * 300 * US + rng.below(200) * US;
            let work = 800 + rng.below(2_000);
            let (a, b) = (20 + rng.below(60), 20 + rng.below(60));
            let r = t + (a + work + b) * US;
            let app_req = t + a * US;
            let app_resp = r - b * US;
            let call_req = app_req + (50 + rng.below(100)) * US;
            let call_resp = call_req + (100 + rng.below(400)) * US;
            let ex = [
                (x(PROXY, ROLE_SERVER, POD, CLIENT, t, r), true),
                (
                    x(PROXY, ROLE_CLIENT, LOOPBACK, LOOPBACK, app_req, app_resp),
                    true,
                ),
                (
                    x(APP, ROLE_SERVER, POD, LOOPBACK, app_req + US, app_resp - US),
                    false,
                ),
                (
                    x(APP, ROLE_CLIENT, POD, SERVICE, call_req, call_resp),
                    false,
                ),
                (
                    x(
                        PROXY,
                        ROLE_SERVER,
                        LOOPBACK,
                        LOOPBACK,
                        call_req + US,
                        call_resp - US,
                    ),
                    true,
                ),
                (
                    x(
                        PROXY,
                        ROLE_CLIENT,
                        POD,
                        SERVICE,
                        call_req + 2 * US,
                        call_resp - 2 * US,
                    ),
                    true,
                ),
            ];
            for (e, proxy) in ex {
                out.push((e.resp_last_ns + rng.below(delay_us + 1) * US, e, proxy));
            }
        }
        out.sort_by_key(|(at, _, _)| *at);
        out
    }

    /// What the end-of-run pairing gives for the same exchanges.
    fn batch(traffic: &[(u64, Exchange, bool)]) -> (HopAggregator, u64) {
        let (mut down, mut up, mut others) = (Vec::new(), Vec::new(), Vec::new());
        for (_, e, proxy) in traffic {
            match (proxy, e.role == ROLE_SERVER) {
                (true, true) => down.push(*e),
                (true, false) => up.push(*e),
                (false, _) => others.push(*e),
            }
        }
        let mut hops = HopAggregator::default();
        let (pairs, unpaired) = sidecar::pair(&down, &up);
        for h in pairs {
            hops.record_sidecar(PROXY, h);
        }
        for a in calls::app_self(&others) {
            hops.record_app_self(a);
        }
        (hops, unpaired)
    }

    /// Feeds the exchanges as they arrive and sweeps every `step_us` to `horizon_us` before.
    fn streamed(
        traffic: &[(u64, Exchange, bool)],
        step_us: u64,
        horizon_us: u64,
    ) -> (HopAggregator, Pairing, usize) {
        let mut hops = HopAggregator::default();
        let mut p = Pairing::default();
        let mut next_sweep = traffic[0].0 + step_us * US;
        let mut most = 0;
        for (at, e, proxy) in traffic {
            while *at >= next_sweep {
                p.sweep(next_sweep - horizon_us * US, &mut hops);
                next_sweep += step_us * US;
            }
            p.add(e, *proxy);
            most = most.max(p.pending());
        }
        p.finish(&mut hops);
        (hops, p, most)
    }

    fn summaries(h: &mut HopAggregator) -> Vec<crate::hops::HopSummary> {
        h.summaries(&mut Resolver::new("/nonexistent".into()))
    }

    #[test]
    fn streaming_gives_the_hops_the_end_of_run_pairing_gives() {
        let t = traffic(3_000, 2_000);
        let (mut want, want_unpaired) = batch(&t);
        let (mut got, p, _) = streamed(&t, 1_000, 10_000);
        assert_eq!((p.late, p.overflow, p.pending()), (0, 0, 0));
        assert_eq!(p.sidecar_unpaired, want_unpaired);
        let (got, want) = (summaries(&mut got), summaries(&mut want));
        assert!(!want.is_empty());
        for hop in [Hop::Sidecar, Hop::AppSelf] {
            assert!(want.iter().any(|s| s.hop == hop), "{hop:?} in {want:?}");
        }
        assert_eq!(got, want);
    }

    use crate::hops::Hop;

    #[test]
    fn memory_follows_the_exchanges_in_flight_not_the_run() {
        // 10 times the traffic: what waits stays that of the horizon (about 3 requests a ms,
        // 6 exchanges each, over 10 ms of horizon plus a 1 ms step and 2 ms of delay).
        let (_, short, most_short) = streamed(&traffic(3_000, 2_000), 1_000, 10_000);
        let (_, long, most_long) = streamed(&traffic(30_000, 2_000), 1_000, 10_000);
        assert_eq!((short.late, long.late), (0, 0));
        assert!(most_long < 400, "{most_long} waiting at most");
        assert!(
            most_long <= most_short + most_short / 4,
            "{most_short} → {most_long}"
        );
    }

    /// The traffic with the 100th request's upstream exchange arriving `late_us` late.
    fn with_a_late_call(late_us: u64) -> Vec<(u64, Exchange, bool)> {
        let mut t = traffic(200, 0);
        let i = t
            .iter()
            .enumerate()
            .filter(|(_, (_, e, proxy))| *proxy && e.role == ROLE_CLIENT)
            .nth(100)
            .map(|(i, _)| i)
            .expect("an upstream exchange");
        t[i].0 += late_us * US;
        t.sort_by_key(|(at, _, _)| *at);
        t
    }

    #[test]
    fn a_call_later_than_the_horizon_still_pairs_within_the_grace() {
        // A second late: a kept-alive connection's exchange, reported with the next request.
        let t = with_a_late_call(1_000_000);
        let (mut want, want_unpaired) = batch(&t);
        let (mut got, p, _) = streamed(&t, 1_000, 10_000);
        assert_eq!((p.late, p.sidecar_unpaired), (1, want_unpaired));
        assert_eq!(summaries(&mut got), summaries(&mut want));
    }

    #[test]
    fn downstream_exchanges_held_for_late_calls_are_bounded() {
        // Every call's record lost (rate-limited): each downstream exchange waits for one.
        let t: Vec<_> = traffic(30_000, 0)
            .into_iter()
            .filter(|(_, e, proxy)| !(*proxy && e.role == ROLE_CLIENT))
            .collect();
        let downs = t.iter().filter(|(_, _, proxy)| *proxy).count() as u64;
        assert!(downs > 4 * MAX_HELD_LATE as u64, "{downs}");
        let (_, p, most) = streamed(&t, 1_000, 10_000);
        assert!(most <= 2 * MAX_HELD_LATE + 400, "{most} waiting at most");
        assert_eq!((p.sidecar_unpaired, p.pending()), (downs, 0));
    }

    #[test]
    fn a_call_later_than_the_grace_is_counted_and_pairs_with_nothing() {
        let t = with_a_late_call(2 * LATE_GRACE_NS / US);
        let (_, want_unpaired) = batch(&t);
        let (_, p, _) = streamed(&t, 1_000, 10_000);
        assert_eq!((p.late, p.sidecar_unpaired), (1, want_unpaired + 1));
    }
}
