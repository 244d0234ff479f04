//! Network namespaces and veth pairs owned by a test.

use std::{
    fs::File,
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

/// Every name this crate creates starts with this, so leftovers can be found.
pub const PREFIX: &str = "hpt";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("`{command}` could not start: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("entering network namespace {name}: {source}")]
    Enter { name: String, source: nix::Error },
    #[error("opening network namespace {name}: {source}")]
    Open {
        name: String,
        source: std::io::Error,
    },
}

pub fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique name: interface names are limited to 15 bytes.
pub fn unique_name(role: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}{role}{n}", std::process::id() % 100_000)
}

/// A network namespace removed on drop, with every process still inside it killed.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(role: &str) -> Result<Self, NetnsError> {
        let name = unique_name(role);
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn exec(&self, cmd: &[&str]) -> Result<String, NetnsError> {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        ip(&args)
    }

    /// Runs `f` on a thread that has entered this namespace; see [`run_in`].
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        run_in(&self.name, f)
    }
}

/// Runs `f` on a thread that has entered the named namespace. Sockets created there stay in it
/// after the thread ends, which is how a test puts servers and clients in namespaces without
/// extra processes.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).map_err(|source| NetnsError::Open {
        name: name.to_owned(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                name: name.to_owned(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Deleting the namespace deletes the veth ends inside it, and with them their peers.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: removing network namespace {}: {e}", self.name);
        }
    }
}

/// Two namespaces joined by a veth pair, addressed `10.<a>.<b>.1` and `.2` on a /30 that is
/// unique to this process and pair.
pub struct Link {
    pub left: NetNs,
    pub right: NetNs,
    pub left_addr: Ipv4Addr,
    pub right_addr: Ipv4Addr,
}

impl Link {
    pub fn new() -> Result<Self, NetnsError> {
        let left = NetNs::new("l")?;
        let right = NetNs::new("r")?;
        let (l_if, r_if) = (unique_name("a"), unique_name("b"));
        ip(&[
            "link",
            "add",
            &l_if,
            "netns",
            &left.name,
            "type",
            "veth",
            "peer",
            "name",
            &r_if,
            "netns",
            &right.name,
        ])?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (b, c) = (200 + (pid % 50) as u8, ((seq * 4) % 256) as u8);
        let left_addr = Ipv4Addr::new(10, b, c, 1);
        let right_addr = Ipv4Addr::new(10, b, c, 2);
        for (ns, ifname, addr) in [(&left, &l_if, left_addr), (&right, &r_if, right_addr)] {
            ns.exec(&["ip", "addr", "add", &format!("{addr}/30"), "dev", ifname])?;
            ns.exec(&["ip", "link", "set", ifname, "up"])?;
        }
        Ok(Self {
            left,
            right,
            left_addr,
            right_addr,
        })
    }
}
