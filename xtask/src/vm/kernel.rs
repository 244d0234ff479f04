//! Debian's cloud kernels: which package is newest, downloading it (cached under `target/vm/`),
//! and taking out the kernel image, its config and the modules the tests need.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, system};

/// A kernel series the matrix boots: `linux-image-<prefix><number><...>-cloud-amd64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub name: &'static str,
    /// What precedes the number that grows with each Debian update (ABI or patch level).
    prefix: &'static str,
}

/// Amazon Linux 2023 and Bottlerocket ship these two lines on EKS.
pub const SERIES: [Series; 2] = [
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
    },
];

const FLAVOUR: &str = "-cloud-amd64";

/// Modules the integration tests need that the cloud kernels build as modules, loaded in this
/// order after their dependencies (`depends=`). The guest has no modprobe, so the kernel cannot
/// load one on demand: whatever a rule needs must be here.
pub const MODULES: [&str; 14] = [
    // veth pairs; the clsact qdisc (in `sch_ingress`) and `cls_bpf`, through which aya attaches
    // TC programs on kernels before 6.6.
    "veth",
    "sch_ingress",
    "cls_bpf",
    // The lab's iptables-nft: tables and `nat` chains (nf_tables, nft_chain_nat pulling in
    // nf_nat and nf_conntrack), and through nft_compat the xtables matches and targets its rules
    // use: kube-proxy's DNAT (xt_nat), MARK and `-m mark` (xt_mark), MASQUERADE; Istio's REDIRECT
    // and `-m owner`; `-p tcp --dport` (xt_tcpudp).
    "nf_tables",
    "nft_chain_nat",
    "nft_compat",
    "xt_nat",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_REDIRECT",
    "xt_owner",
    "xt_tcpudp",
    // Delays packets for the RTT test.
    "sch_netem",
    // TAP devices: the lab's delayed client link (`--link-delay`).
    "tun",
];

impl Series {
    /// The update number of a package of this series, `None` for other packages (debug
    /// symbols, unsigned builds, other flavours).
    fn update(&self, package: &str) -> Option<u64> {
        let rest = package.strip_prefix(self.prefix)?;
        if !rest.ends_with(FLAVOUR) {
            return None;
        }
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let after = &rest[digits.len()..];
        // 6.1: `56-cloud-amd64`; 6.12: `117+deb12-cloud-amd64`.
        if !(after == FLAVOUR || after.starts_with('+')) {
            return None;
        }
        digits.parse().ok()
    }

    /// The newest package of this series in an `apt-cache search` listing.
    pub fn newest(&self, listing: &str) -> Option<String> {
        listing
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|p| self.update(p).map(|n| (n, p.to_owned())))
            .max()
            .map(|(_, p)| p)
    }
}

/// What a VM needs from one kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub package: String,
    pub release: String,
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
    /// Uncompressed modules in load order (dependencies first): (name, file).
    pub modules: Vec<(String, PathBuf)>,
}

impl Kernel {
    /// `CONFIG_<name>=y` in the package's config.
    pub fn config_enabled(&self, name: &str) -> Result<bool> {
        let text = fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        let want = format!("CONFIG_{name}=y");
        Ok(text.lines().any(|l| l == want))
    }
}

pub fn vm_dir() -> PathBuf {
    cmd::target_dir().join("vm")
}

fn apt_search(series: &Series) -> String {
    let pattern = format!("^{}", series.prefix.replace('.', "\\."));
    cmd::stdout("apt-cache", &["search", "--names-only", &pattern]).unwrap_or_default()
}

/// Picks the newest package; refreshes stale package lists once (as root) when none is found,
/// and falls back to a package downloaded earlier when apt knows none.
fn choose_package(series: &Series, debs: &Path) -> Result<String> {
    if let Some(p) = series.newest(&apt_search(series)) {
        return Ok(p);
    }
    if system::is_root() {
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        if let Some(p) = series.newest(&apt_search(series)) {
            return Ok(p);
        }
    }
    let cached: String = fs::read_dir(debs)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.split('_').next().map(|p| format!("{p}\n"))
                })
                .collect()
        })
        .unwrap_or_default();
    series.newest(&cached).with_context(|| {
        format!(
            "no {}*{FLAVOUR} package known to apt and none cached in {}; run as root: \
             apt-get update",
            series.prefix,
            debs.display()
        )
    })
}

fn cached_deb(debs: &Path, package: &str) -> Option<PathBuf> {
    fs::read_dir(debs)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
}

/// Downloads (unless cached) and unpacks the newest kernel of `series`.
pub fn prepare(series: Series) -> Result<Kernel> {
    let debs = vm_dir().join("debs");
    fs::create_dir_all(&debs)?;
    let package = choose_package(&series, &debs)?;
    let deb = match cached_deb(&debs, &package) {
        Some(d) => d,
        None => {
            // apt-get download needs no root; it writes into the current directory.
            cmd::run(
                Command::new("apt-get")
                    .args(["download", "-q", &package])
                    .current_dir(&debs),
            )?;
            cached_deb(&debs, &package).context("apt-get download left no .deb")?
        }
    };
    let root = vm_dir().join("kernels").join(&package);
    let done = root.join(".unpacked");
    if !done.exists() {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        fs::write(&done, "")?;
    }
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    let config = root.join(format!("boot/config-{release}"));
    for f in [&vmlinuz, &config] {
        if !f.exists() {
            bail!("{} has no {}", deb.display(), f.display());
        }
    }
    let modules = modules(&root.join("lib/modules").join(&release), &MODULES)?;
    Ok(Kernel {
        package,
        release,
        vmlinuz,
        config,
        modules,
    })
}

/// Module name as the kernel spells it (`-` and `_` are the same).
fn module_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let base = name.split(".ko").next()?;
    name.contains(".ko").then(|| base.replace('-', "_"))
}

fn index(dir: &Path, into: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index(&path, into)?;
        } else if let Some(name) = module_name(&path) {
            into.insert(name, path);
        }
    }
    Ok(())
}

/// The module's bytes, decompressed; Debian 12's 6.12 packages ship `.ko.xz`.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {name}")),
        Some(tool) => {
            let out = Command::new(tool)
                .args(["-dc", "--"])
                .arg(path)
                .output()
                .with_context(|| format!("running {tool} -dc {name}"))?;
            if !out.status.success() {
                bail!(
                    "{tool} -dc {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(out.stdout)
        }
    }
}

/// The `depends=` entry of a module's `.modinfo` section (NUL-separated `key=value` strings).
pub fn depends(module: &[u8]) -> Vec<String> {
    module
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Decompresses `wanted` and their dependencies into `<dir>/../vm-modules`, dependencies first
/// (the packages carry no modules.dep: depmod runs at install time).
fn modules(dir: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut all = BTreeMap::new();
    index(dir, &mut all)?;
    let out_dir = dir.join("../vm-modules");
    fs::create_dir_all(&out_dir)?;
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    fn visit(
        name: &str,
        all: &BTreeMap<String, PathBuf>,
        out_dir: &Path,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<()> {
        if order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        if depth > 32 {
            bail!("module dependencies of {name} loop");
        }
        let src = all
            .get(name)
            .with_context(|| format!("module {name} is not in the kernel package"))?;
        let bytes = read_module(src)?;
        for dep in depends(&bytes) {
            visit(&dep, all, out_dir, order, depth + 1)?;
        }
        let dst = out_dir.join(format!("{name}.ko"));
        fs::write(&dst, &bytes)?;
        order.push((name.to_owned(), dst));
        Ok(())
    }
    for name in wanted {
        visit(name, &all, &out_dir, &mut order, 0)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_package_of_a_series() {
        let listing = "linux-image-6.1.0-9-cloud-amd64 - Linux 6.1\n\
                       linux-image-6.1.0-56-cloud-amd64 - Linux 6.1\n\
                       linux-image-6.1.0-60-cloud-amd64-dbg - debug\n\
                       linux-image-6.1.0-57-cloud-amd64-unsigned - unsigned\n\
                       linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12\n\
                       linux-image-6.12.99+deb12-cloud-amd64 - Linux 6.12\n\
                       linux-image-6.12.120+deb12-amd64 - other flavour\n";
        assert_eq!(
            SERIES[0].newest(listing).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            SERIES[1].newest(listing).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(SERIES[0].newest("nothing here\n"), None);
    }

    #[test]
    fn reads_module_dependencies() {
        let modinfo = b"\0license=GPL\0depends=nf_conntrack,nf-defrag-ipv4\0name=x\0";
        assert_eq!(depends(modinfo), vec!["nf_conntrack", "nf_defrag_ipv4"]);
        assert!(depends(b"\0depends=\0name=veth\0").is_empty());
    }
}
