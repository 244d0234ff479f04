//! Debian packages the tasks need, installed when missing and running as root.

use std::{path::Path, process::Command, sync::Once};

use anyhow::{Result, bail};

use crate::cmd;

/// (a file that proves the package is installed, the package).
pub type Package = (&'static str, &'static str);

/// What the integration tests run besides hopprobe: `ip`, Chromium to render the HTML report
/// headless, and Prometheus (with promtool) to scrape `/metrics`; the tests start it on
/// loopback themselves (a machine without systemd does not start the package's service).
pub const TEST_PACKAGES: [Package; 4] = [
    ("/usr/sbin/ip", "iproute2"),
    // The kernel's view of what is loaded, for the tests' leftover checks.
    ("/usr/sbin/bpftool", "bpftool"),
    ("/usr/bin/chromium", "chromium"),
    ("/usr/bin/prometheus", "prometheus"),
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

/// Bytes free to an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| anyhow::anyhow!("{} contains a NUL byte", dir.display()))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer for the call.
    if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .map_err(|e| anyhow::anyhow!("statvfs {}: {e}", dir.display()));
    }
    // SAFETY: statvfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Stops before a long job when `dir`'s filesystem has less than `need_gib` GiB free, instead of
/// failing minutes later on a bare ENOSPC halfway through writing an image.
pub fn ensure_free_space(dir: &Path, need_gib: u64, what: &str) -> Result<()> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let free = free_bytes(existing)?;
    let need = need_gib.saturating_mul(1 << 30);
    if free < need {
        bail!(
            "{what} needs about {need_gib} GiB free under {}, but only {:.1} GiB is free; free \
             some space (an old build: cargo clean) and run it again",
            dir.display(),
            free as f64 / f64::from(1u32 << 30),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_check_passes_small_needs_and_names_the_shortfall() {
        let dir = std::env::temp_dir().join("xtask-free-space-does-not-exist/below");
        ensure_free_space(&dir, 0, "nothing").expect("0 GiB is always free");
        let err = ensure_free_space(&dir, 1 << 30, "a huge job")
            .expect_err("nobody has an exbibyte free")
            .to_string();
        assert!(err.contains("a huge job needs about"), "{err}");
        assert!(err.contains("GiB is free"), "{err}");
    }
}
