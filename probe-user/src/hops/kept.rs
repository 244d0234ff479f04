//! Exchanges kept until the end of a run for the hops that take two of them: `sidecar`
//! (a proxy's downstream exchange less its upstream one, `sidecar::pair`) and `app_self` (an
//! app's request less the calls it made for it, `calls::app_self`).

use std::collections::HashMap;

use probe_common::exchange::{Exchange, ROLE_SERVER};

use crate::hops::{
    calls::{self, AppSelf},
    sidecar::{self, SidecarHop},
};

/// Bounds memory on long runs: about 120 MB at the limit.
const MAX_KEPT: usize = 1_000_000;

#[derive(Default)]
pub struct Kept {
    /// Proxy containers' exchanges: (downstream, upstream) per cgroup.
    proxies: HashMap<u64, (Vec<Exchange>, Vec<Exchange>)>,
    /// Every other cgroup's.
    others: Vec<Exchange>,
    kept: usize,
    /// Answered exchanges not kept because the buffer was full: their requests have no
    /// `sidecar` or `app_self` hop.
    pub overflow: u64,
}

/// What pairing found at the end of a run.
#[derive(Debug, Default)]
pub struct Paired {
    /// (proxy cgroup, hop).
    pub sidecar: Vec<(u64, SidecarHop)>,
    /// Proxies' downstream exchanges with no upstream one.
    pub sidecar_unpaired: u64,
    pub app_self: Vec<AppSelf>,
}

impl Kept {
    pub fn add(&mut self, x: &Exchange, proxy: bool) {
        if x.resp_first_ns == 0 {
            return;
        }
        if self.kept >= MAX_KEPT {
            self.overflow += 1;
            return;
        }
        self.kept += 1;
        if !proxy {
            self.others.push(*x);
            return;
        }
        let (down, up) = self.proxies.entry(x.cgroup_id).or_default();
        if x.role == ROLE_SERVER {
            down.push(*x);
        } else {
            up.push(*x);
        }
    }

    pub fn finish(self) -> Paired {
        let mut paired = Paired {
            app_self: calls::app_self(&self.others),
            ..Paired::default()
        };
        for (cgroup, (down, up)) in self.proxies {
            let (pairs, left) = sidecar::pair(&down, &up);
            paired.sidecar_unpaired += left;
            paired
                .sidecar
                .extend(pairs.into_iter().map(|h| (cgroup, h)));
        }
        paired
    }
}
