//! The TC side of the datapath hops: which interfaces to watch (the node's uplink and the
//! host-side veths of pods), attaching to the ones that appear, forgetting the ones that go,
//! and removing exactly what hopprobe added when it stops.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    os::{linux::net::SocketAddrExt, unix::net::UnixListener},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, tc,
        tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};
use tracing::{info, warn};

use crate::attach::{
    ebpf::error_brief,
    programs::{self, Iface},
    tc_netlink,
};

/// Host-side veth names of the common CNIs: AWS VPC CNI, Calico, Cilium, generic, GKE, Azure.
pub const DEFAULT_POD_IFACES: &str = "eni*,cali*,lxc*,veth*,gke*,azv*";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("--netns {}: {source}", path.display())]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--netns {}: not a network namespace hopprobe can enter: {source}", path.display())]
    Enter { path: PathBuf, source: nix::Error },
    #[error("no default route to find the uplink by; pass --uplink")]
    NoUplink,
    #[error("--uplink {name}: no such interface in {netns}")]
    NoSuchUplink { name: String, netns: String },
    #[error("uplink {0} (the default route's interface) does not exist")]
    UplinkMissing(String),
    #[error("listing interfaces: {0}")]
    List(nix::Error),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("bad interface pattern `{0}`: {1}")]
    Pattern(String, glob::PatternError),
    #[error("another hopprobe is attached to the interfaces of {0}; one per node: stop it first")]
    Busy(String),
    #[error("taking the datapath lock in {netns}: {source}")]
    Lock {
        netns: String,
        source: std::io::Error,
    },
}

impl DatapathError {
    /// True when what the user named (`--netns`, `--uplink`) is not there: a mistake on the
    /// command line, not a node without some hook, so it stops the run instead of leaving the
    /// datapath hops out.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Netns { .. } | Self::Enter { .. } | Self::NoSuchUplink { .. } | Self::Busy(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct DatapathOptions {
    /// The node's network namespace (`/run/netns/<name>`); hopprobe's own when `None`.
    pub netns: Option<PathBuf>,
    pub uplink: Option<String>,
    pub pod_ifaces: Vec<glob::Pattern>,
    /// `--bpf-floor`: the do-nothing classifier after ours, both ways, on every interface.
    pub floor: bool,
}

pub fn parse_patterns(s: &str) -> Result<Vec<glob::Pattern>, DatapathError> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| glob::Pattern::new(p.trim()).map_err(|e| DatapathError::Pattern(p.into(), e)))
        .collect()
}

/// The interface of the default route in a `/proc/net/route` text.
pub fn default_route_iface(route: &str) -> Option<String> {
    route.lines().skip(1).find_map(|l| {
        let mut f = l.split_whitespace();
        let (iface, dest) = (f.next()?, f.next()?);
        (dest == "00000000").then(|| iface.to_owned())
    })
}

struct Attached {
    ifindex: u32,
    links: Vec<(&'static str, SchedClassifierLinkId)>,
    /// hopprobe added the clsact qdisc (kernels before 6.6), so it removes it again.
    added_clsact: bool,
}

pub struct Datapath {
    opts: DatapathOptions,
    netns: Option<File>,
    /// Held while attached; see [`NODE_LOCK`].
    _lock: UnixListener,
    pub uplink: String,
    attached: BTreeMap<String, Attached>,
}

/// Runs `f` on a thread inside `netns` (or this one's): interface names and indexes, netlink
/// and TCX attachments all resolve in the caller's network namespace.
fn in_netns<T: Send>(
    netns: Option<&File>,
    path: Option<&Path>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, DatapathError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = netns {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
                    DatapathError::Enter {
                        path: path.map(Path::to_path_buf).unwrap_or_default(),
                        source,
                    }
                })?;
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `--netns` as an error message names it.
fn netns_name(path: Option<&Path>) -> String {
    match path {
        Some(p) => format!("network namespace {}", p.display()),
        None => "hopprobe's network namespace".into(),
    }
}

fn interfaces() -> Result<Vec<(String, u32)>, DatapathError> {
    Ok(nix::net::if_::if_nameindex()
        .map_err(DatapathError::List)?
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect())
}

/// Kernels from 6.6 attach TC programs through TCX links; older ones need a clsact qdisc.
fn needs_clsact() -> bool {
    KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0))
}

/// The abstract socket name a hopprobe binds in the network namespace whose interfaces it
/// attaches to. Abstract names belong to a network namespace and go with their socket however
/// the process ends, SIGKILL included: bound, no other hopprobe lives there, so `hp_` filters
/// found on its interfaces are what a killed one left; in use, another one is attached.
const NODE_LOCK: &[u8] = b"hopprobe.datapath";

fn lock_netns(netns: &str) -> Result<UnixListener, DatapathError> {
    let lock = |source| DatapathError::Lock {
        netns: netns.to_owned(),
        source,
    };
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(NODE_LOCK).map_err(lock)?;
    UnixListener::bind_addr(&addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => DatapathError::Busy(netns.to_owned()),
        _ => lock(e),
    })
}

/// The network namespace and uplink the TC programs go to, found before anything is attached
/// so that a `--netns` or `--uplink` that is not there stops the run with nothing to undo.
pub struct Target {
    netns: Option<File>,
    uplink: String,
    lock: UnixListener,
}

impl Target {
    /// Opens and enters `--netns` and finds the uplink there: `--uplink` must exist, else the
    /// default route's interface is taken ([`DatapathError::NoUplink`] when there is none).
    pub fn resolve(opts: &DatapathOptions) -> Result<Self, DatapathError> {
        let netns = match &opts.netns {
            Some(p) => Some(File::open(p).map_err(|source| DatapathError::Netns {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        let path = opts.netns.as_deref();
        let uplink = match &opts.uplink {
            Some(u) => {
                // Entering the namespace also proves `--netns` is one.
                let present = in_netns(netns.as_ref(), path, interfaces)??;
                if !present.iter().any(|(name, _)| name == u) {
                    return Err(DatapathError::NoSuchUplink {
                        name: u.clone(),
                        netns: netns_name(path),
                    });
                }
                u.clone()
            }
            None => in_netns(netns.as_ref(), path, || {
                std::fs::read_to_string("/proc/thread-self/net/route")
                    .ok()
                    .and_then(|r| default_route_iface(&r))
            })?
            .ok_or(DatapathError::NoUplink)?,
        };
        let name = netns_name(path);
        let lock = in_netns(netns.as_ref(), path, || lock_netns(&name))??;
        Ok(Self {
            netns,
            uplink,
            lock,
        })
    }
}

impl Datapath {
    /// Loads the TC programs, attaches to the uplink and to every pod veth present.
    pub fn attach(
        ebpf: &mut Ebpf,
        opts: DatapathOptions,
        target: Target,
    ) -> Result<Self, DatapathError> {
        let Target {
            netns,
            uplink,
            lock,
        } = target;
        let tc = programs::tc_programs(Iface::Uplink).chain(programs::tc_programs(Iface::PodVeth));
        let floor = opts
            .floor
            .then_some((programs::FLOOR_TC, TcAttachType::Ingress));
        for (program, _) in tc.chain(floor) {
            classifier(ebpf, program)?
                .load()
                .map_err(|source| DatapathError::Program { program, source })?;
        }
        let mut dp = Self {
            opts,
            netns,
            _lock: lock,
            uplink,
            attached: BTreeMap::new(),
        };
        let present = dp.scan(ebpf)?;
        if !present.contains(&dp.uplink) {
            // Gone since `Target::resolve` found it.
            dp.detach_all(ebpf);
            let name = dp.uplink.clone();
            return Err(match &dp.opts.uplink {
                Some(_) => DatapathError::NoSuchUplink {
                    name,
                    netns: netns_name(dp.opts.netns.as_deref()),
                },
                None => DatapathError::UplinkMissing(name),
            });
        }
        Ok(dp)
    }

    /// Attaches to interfaces that appeared and forgets the ones that went; returns the names
    /// present now.
    pub fn scan(&mut self, ebpf: &mut Ebpf) -> Result<BTreeSet<String>, DatapathError> {
        let uplink = self.uplink.clone();
        let patterns = self.opts.pod_ifaces.clone();
        let attached: BTreeMap<String, u32> = self
            .attached
            .iter()
            .map(|(n, a)| (n.clone(), a.ifindex))
            .collect();
        let netns = self.netns.as_ref();
        let path = self.opts.netns.clone();
        let (present, new) = in_netns(netns, path.as_deref(), || -> Result<_, DatapathError> {
            let ifaces = interfaces()?;
            let present: BTreeSet<String> = ifaces.iter().map(|(n, _)| n.clone()).collect();
            let mut new = Vec::new();
            for (name, index) in ifaces {
                // A re-created interface may reuse the name with a new index.
                if attached.get(&name) == Some(&index) {
                    continue;
                }
                let iface = if name == uplink {
                    Iface::Uplink
                } else if patterns.iter().any(|p| p.matches(&name)) {
                    Iface::PodVeth
                } else {
                    continue;
                };
                new.push((name, index, iface));
            }
            Ok((present, new))
        })??;

        let gone: Vec<String> = self
            .attached
            .keys()
            .filter(|n| !present.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(a) = self.attached.remove(&name) {
                // The kernel dropped the attachment with the interface; forget our handle.
                for (program, link) in a.links {
                    if let Ok(p) = classifier(ebpf, program) {
                        let _ = p.detach(link);
                    }
                }
                info!(interface = %name, "interface gone");
            }
        }
        for (name, ifindex, iface) in new {
            // Before hopprobe attaches anything there: afterwards its own filters look the same.
            let adopted = needs_clsact()
                && in_netns(self.netns.as_ref(), path.as_deref(), || {
                    remove_leftovers(&name)
                })
                .unwrap_or(false);
            let tc: Vec<_> = programs::tc_programs(iface).collect();
            match self.attach_iface(ebpf, &name, &tc) {
                Ok((added_clsact, mut links)) => {
                    let added_clsact = added_clsact || adopted;
                    if self.opts.floor {
                        // After ours (with TCX; before 6.6 a new filter goes first, and hands
                        // the packet on all the same); a failure leaves ours in place.
                        let floor = [
                            (programs::FLOOR_TC, TcAttachType::Ingress),
                            (programs::FLOOR_TC, TcAttachType::Egress),
                        ];
                        match self.attach_iface(ebpf, &name, &floor) {
                            Ok((_, floor_links)) => links.extend(floor_links),
                            Err(e) => warn!(interface = %name, error = %e, "floor not attached"),
                        }
                    }
                    info!(interface = %name, ifindex, "watching interface");
                    self.attached.insert(
                        name,
                        Attached {
                            ifindex,
                            links,
                            added_clsact,
                        },
                    );
                }
                Err(e) => warn!(interface = %name, error = %e, "not attached"),
            }
        }
        Ok(present)
    }

    #[expect(clippy::type_complexity, reason = "a private helper's result")]
    fn attach_iface(
        &mut self,
        ebpf: &mut Ebpf,
        name: &str,
        programs: &[(&'static str, TcAttachType)],
    ) -> Result<(bool, Vec<(&'static str, SchedClassifierLinkId)>), String> {
        let netns = self.netns.as_ref();
        let path = self.opts.netns.clone();
        let mut links = Vec::new();
        let mut added = false;
        let mut result = Ok(());
        for &(program, attach_type) in programs {
            let prog = classifier(ebpf, program).map_err(|e| e.to_string())?;
            let r = in_netns(netns, path.as_deref(), || {
                if !needs_clsact() {
                    // TCX: appended, after whatever runs there already.
                    return prog.attach(name, attach_type);
                }
                if tc::qdisc_add_clsact(name).is_ok() {
                    added = true;
                }
                prog.attach_with_options(
                    name,
                    attach_type,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: priority_after_others(name, attach_type),
                        ..NlOptions::default()
                    }),
                )
            })
            .map_err(|e| e.to_string())?;
            match r {
                Ok(link) => links.push((program, link)),
                Err(e) => {
                    result = Err(error_brief(&e));
                    break;
                }
            }
        }
        match result {
            Ok(()) => Ok((added, links)),
            Err(e) => {
                self.detach_links(ebpf, links);
                Err(e)
            }
        }
    }

    /// interface index → name, for naming the hop series.
    pub fn names(&self) -> BTreeMap<u32, String> {
        self.attached
            .iter()
            .map(|(n, a)| (a.ifindex, n.clone()))
            .collect()
    }

    /// Detaches in the interfaces' network namespace: before Linux 6.6 a link is a netlink
    /// filter, found by its interface index there (detached from hopprobe's own namespace,
    /// the call failed and the lab's filters stayed until its namespace went); a TCX link
    /// goes with its fd from anywhere.
    fn detach_links(&self, ebpf: &mut Ebpf, links: Vec<(&'static str, SchedClassifierLinkId)>) {
        let netns = self.netns.as_ref();
        let path = self.opts.netns.clone();
        for (program, link) in links {
            if let Ok(p) = classifier(ebpf, program) {
                match in_netns(netns, path.as_deref(), || p.detach(link)) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(program, error = %e, "detaching"),
                    Err(e) => warn!(program, error = %e, "detaching"),
                }
            }
        }
    }

    /// Detaches everything and removes the qdiscs hopprobe added — only those: another
    /// program (Cilium's) may own a clsact qdisc of its own.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let netns = self.netns.as_ref();
        let path = self.opts.netns.clone();
        for (name, a) in std::mem::take(&mut self.attached) {
            self.detach_links(ebpf, a.links);
            if a.added_clsact {
                match in_netns(netns, path.as_deref(), || {
                    tc_netlink::delete_clsact(a.ifindex)
                }) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(interface = %name, error = %e, "removing the clsact qdisc"),
                    Err(e) => warn!(interface = %name, error = %e, "removing the clsact qdisc"),
                }
            }
        }
    }
}

/// A netlink filter's priority that runs after every filter already on that side of
/// interface `name`, as a TCX link goes after the programs there: another tool's classifier (a
/// CNI's) keeps its place, first. The kernel's own choice for priority 0 is the opposite,
/// before the first. 0 (the kernel's choice) when nothing is there or nothing can follow.
fn priority_after_others(name: &str, attach_type: TcAttachType) -> u16 {
    let direction = match attach_type {
        TcAttachType::Egress => tc_netlink::Direction::Egress,
        _ => tc_netlink::Direction::Ingress,
    };
    nix::net::if_::if_nametoindex(name)
        .ok()
        .and_then(|index| tc_netlink::filters(index).ok())
        .and_then(|filters| {
            filters
                .iter()
                .filter(|f| f.direction == direction)
                .map(tc_netlink::Filter::priority)
                .max()
        })
        .and_then(|last| last.checked_add(1))
        .unwrap_or(0)
}

/// Removes the `hp_` filters a killed hopprobe left on interface `name` (the caller holds
/// [`NODE_LOCK`], so no live hopprobe owns them) and says whether the clsact qdisc is now
/// hopprobe's to remove: it is when hopprobe's filters were all it held. Another tool's
/// filters, and a qdisc with them, stay.
fn remove_leftovers(name: &str) -> bool {
    let Ok(ifindex) = nix::net::if_::if_nametoindex(name) else {
        return false;
    };
    let filters = match tc_netlink::filters(ifindex) {
        Ok(f) => f,
        Err(e) => {
            warn!(interface = name, error = %e, "listing TC filters");
            return false;
        }
    };
    let (ours, theirs): (Vec<_>, Vec<_>) = filters.into_iter().partition(|f| {
        f.kind == "bpf"
            && f.bpf_name
                .as_deref()
                .is_some_and(|n| n.starts_with(programs::NAME_PREFIX))
    });
    if ours.is_empty() {
        return false;
    }
    let mut removed = 0;
    for f in &ours {
        match tc_netlink::delete_filter(ifindex, f) {
            Ok(()) => removed += 1,
            Err(e) => {
                warn!(interface = name, filter = ?f.bpf_name, error = %e, "removing a left filter")
            }
        }
    }
    info!(
        interface = name,
        removed, "removed TC filters an earlier hopprobe left (killed before it could detach)"
    );
    removed == ours.len() && theirs.is_empty()
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(program)
        .ok_or(DatapathError::Program {
            program,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program { program, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_default_route_interface() {
        let route = "Iface\tDestination\tGateway\tFlags\n\
                     eth1\t0000A8C0\t00000000\t0001\n\
                     ens5\t00000000\t0100A8C0\t0003\n";
        assert_eq!(default_route_iface(route).as_deref(), Some("ens5"));
        assert_eq!(default_route_iface("Iface\tDestination\n"), None);
    }

    #[test]
    fn default_patterns_match_cni_veths_only() {
        let p = parse_patterns(DEFAULT_POD_IFACES).expect("valid");
        for name in ["eni9d1d55b9c11", "cali12345", "lxc_health", "veth0a1b"] {
            assert!(p.iter().any(|g| g.matches(name)), "{name}");
        }
        for name in ["eth0", "lo", "docker0", "ens5"] {
            assert!(!p.iter().any(|g| g.matches(name)), "{name}");
        }
        assert!(parse_patterns("eni[").is_err());
    }
}
