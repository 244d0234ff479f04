//! Debian packages the tasks need, installed when missing and running as root.

use std::{path::Path, process::Command, sync::Once};

use anyhow::{Result, bail};

use crate::cmd;

/// (a file that proves the package is installed, the package).
pub type Package = (&'static str, &'static str);

/// What the integration tests run besides hopprobe: `ip`, and Chromium to render the HTML
/// report headless.
pub const TEST_PACKAGES: [Package; 2] = [
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/bin/chromium", "chromium"),
];

/// What the lab runs: kube-proxy's and Istio's rules, sysctl, and haproxy for the
/// bring-your-own-proxy example.
pub const LAB_PACKAGES: [Package; 4] = [
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/sbin/iptables-restore", "iptables"),
    ("/usr/sbin/sysctl", "procps"),
    ("/usr/sbin/haproxy", "haproxy"),
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

static APT_UPDATE: Once = Once::new();

/// Installs the packages whose marker file is missing; without root, names the command.
pub fn ensure_packages(packages: &[Package]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(marker, _)| !Path::new(marker).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

pub fn apt_install(packages: &[&str]) -> Result<()> {
    let command = format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    );
    if !is_root() {
        bail!("missing Debian packages {packages:?}; install them as root with:\n    {command}");
    }
    // A fresh machine's package lists may be stale or absent.
    let mut update_result = Ok(());
    APT_UPDATE.call_once(|| {
        update_result = cmd::run(Command::new("apt-get").args(["update", "-q"]));
    });
    update_result?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
