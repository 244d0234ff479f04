//! Host programs the guest needs besides busybox: what the tests and the lab run (iproute2,
//! iptables, sysctl, haproxy), copied with their shared libraries from the host's Debian
//! packages (see [`super::PACKAGES`]).

use std::{fs, path::Path};

use anyhow::{Context, Result};

use super::initramfs::Initramfs;

/// Programs copied to the same path in the image: iproute2's `ip` (busybox's lacks `ip netns`)
/// and `tc` (the tests read the node's qdiscs and filters with it; hopprobe itself uses
/// netlink), the lab's `sysctl`, Debian's haproxy for its bring-your-own-proxy tests, and
/// util-linux's `setpriv`, which runs `hopprobe check` with fewer capabilities, and bpftool,
/// with which the tests read the kernel's attachments.
const PROGRAMS: [&str; 6] = [
    "/usr/sbin/ip",
    "/usr/sbin/tc",
    "/usr/sbin/sysctl",
    "/usr/sbin/haproxy",
    "/usr/bin/setpriv",
    "/usr/sbin/bpftool",
];

/// iptables with the nf_tables backend, Debian 12's default, so the guest's rules go through
/// the same kernel path as on the host (and on an EKS node running kube-proxy's iptables-nft).
const XTABLES_NFT: &str = "/usr/sbin/xtables-nft-multi";

/// The names it answers to; the lab calls `iptables-restore`.
const IPTABLES_NAMES: [&str; 6] = [
    "iptables",
    "iptables-restore",
    "iptables-save",
    "iptables-nft",
    "iptables-nft-restore",
    "iptables-nft-save",
];

/// libxtables `dlopen`s one shared object per match and target (`-m owner`, `-j REDIRECT`),
/// so `ldd` does not name them: the whole directory goes in (about 2 MB).
const XTABLES_EXTENSIONS: &str = "/usr/lib/x86_64-linux-gnu/xtables";

pub fn add(image: &mut Initramfs) -> Result<()> {
    for program in PROGRAMS {
        let host =
            fs::canonicalize(program).with_context(|| format!("{program} (see vm::PACKAGES)"))?;
        image.program(&host, program)?;
    }
    image.program(Path::new(XTABLES_NFT), XTABLES_NFT)?;
    for name in IPTABLES_NAMES {
        image.symlink(&format!("/usr/sbin/{name}"), "xtables-nft-multi")?;
    }
    let mut extensions: Vec<_> = fs::read_dir(XTABLES_EXTENSIONS)
        .with_context(|| format!("reading {XTABLES_EXTENSIONS}"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "so"))
        .collect();
    // The archive's order should not depend on the directory's.
    extensions.sort();
    for ext in extensions {
        image.program(&ext, &ext.to_string_lossy())?;
    }
    Ok(())
}
