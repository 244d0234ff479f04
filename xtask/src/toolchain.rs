//! Finding (and, as root, installing) a toolchain that builds Rust for `bpfel-unknown-none`.
//!
//! Two routes are known to work on Debian 12 (docs/requirements.md): rustup's nightly with
//! `rust-src`, or Debian's `rustc-web` with its library sources and `RUSTC_BOOTSTRAP`. Either
//! needs `bpf-linker` built against the same LLVM major version as that rustc.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, system};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `rustup run <toolchain> cargo ...`
    Rustup { toolchain: String },
    /// `/usr/bin/cargo` with `RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1`.
    Debian,
}

#[derive(Debug, Clone)]
pub struct Toolchain {
    pub route: Route,
    pub llvm_major: u32,
    pub bpf_linker: PathBuf,
}

impl Toolchain {
    /// A `cargo` command for this route, with the outer cargo's settings removed so they do not
    /// leak into the BPF build.
    pub fn cargo(&self) -> Command {
        let mut c = match &self.route {
            Route::Rustup { toolchain } => {
                let mut c = Command::new("rustup");
                c.args(["run", toolchain, "cargo"]);
                c
            }
            Route::Debian => {
                let mut c = Command::new(DEBIAN_CARGO);
                c.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
                c
            }
        };
        for var in [
            "RUSTC_WRAPPER",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTUP_TOOLCHAIN",
            "CARGO_BUILD_RUSTC",
        ] {
            c.env_remove(var);
        }
        if matches!(self.route, Route::Rustup { .. }) {
            c.env_remove("RUSTC");
        }
        // rustc finds the linker by name on PATH.
        let linker_dir = self.bpf_linker.parent().unwrap_or(Path::new("/"));
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![linker_dir.to_path_buf()];
        dirs.extend(env::split_paths(&path));
        c.env("PATH", env::join_paths(dirs).unwrap_or(path));
        c
    }
}

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_PACKAGES: [&str; 3] = ["rustc-web", "cargo-web", "rust-web-src"];
const NIGHTLY: &str = "nightly";

/// `LLVM version: 22.1.4` in `rustc -vV` output → 22.
pub fn llvm_major(verbose_version: &str) -> Option<u32> {
    verbose_version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
}

/// The LLVM a dynamically linked bpf-linker loads, from its `ldd` output.
pub fn linked_llvm_major(ldd: &str) -> Option<u32> {
    ldd.lines().find_map(|l| {
        let name = l.split_whitespace().next()?;
        let rest = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        rest.split(['.', '-']).next()?.parse().ok()
    })
}

fn has_library_source(rustc_sysroot: &str) -> bool {
    Path::new(rustc_sysroot.trim())
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

fn rustup_nightly_ready() -> bool {
    cmd::stdout("rustup", &["run", NIGHTLY, "rustc", "--print", "sysroot"])
        .is_some_and(|s| has_library_source(&s))
}

fn try_rustup(install: bool) -> Option<Route> {
    let toolchains = cmd::stdout("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        // Only a nightly that is already installed is used: the Debian route needs no download
        // of a toolchain.
        return None;
    }
    if !rustup_nightly_ready() && install {
        eprintln!("xtask: nightly lacks rust-src; adding it");
        // Bounded: on a machine that cannot reach rustup's server this must fail, not hang.
        let _ = cmd::run(Command::new("timeout").args([
            "120",
            "rustup",
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]));
    }
    rustup_nightly_ready().then(|| Route::Rustup {
        toolchain: NIGHTLY.to_owned(),
    })
}

fn debian_ready() -> bool {
    Path::new(DEBIAN_CARGO).exists()
        && cmd::stdout(DEBIAN_RUSTC, &["--print", "sysroot"])
            .is_some_and(|s| has_library_source(&s))
}

fn route(install: bool) -> Result<Route> {
    match env::var("HOPPROBE_EBPF_ROUTE").as_deref() {
        Ok("debian") => return ensure_debian(install),
        Ok("rustup") => {
            return try_rustup(install).context(
                "HOPPROBE_EBPF_ROUTE=rustup but rustup's nightly with rust-src is not usable",
            );
        }
        Ok(other) if !other.is_empty() => {
            bail!("HOPPROBE_EBPF_ROUTE must be `rustup` or `debian`, not `{other}`")
        }
        _ => {}
    }
    if let Some(r) = try_rustup(install) {
        return Ok(r);
    }
    ensure_debian(install)
}

fn ensure_debian(install: bool) -> Result<Route> {
    if !debian_ready() {
        if !install {
            bail!(
                "no toolchain can build eBPF here. Either\n  \
                 rustup component add rust-src --toolchain nightly\nor (Debian's route)\n  \
                 apt-get update && apt-get install -y {}",
                DEBIAN_PACKAGES.join(" ")
            );
        }
        eprintln!("xtask: installing Debian's rustc-web route for the eBPF build");
        system::apt_install(&DEBIAN_PACKAGES)?;
        if !debian_ready() {
            bail!(
                "installed {} but {DEBIAN_RUSTC} still has no library sources",
                DEBIAN_PACKAGES.join(" ")
            );
        }
    }
    Ok(Route::Debian)
}

fn rustc_llvm(route: &Route) -> Result<u32> {
    let out = match route {
        Route::Rustup { toolchain } => cmd::stdout("rustup", &["run", toolchain, "rustc", "-vV"]),
        Route::Debian => cmd::stdout(DEBIAN_RUSTC, &["-vV"]),
    }
    .context("running rustc -vV")?;
    llvm_major(&out).context("rustc -vV printed no LLVM version")
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn find_bpf_linker() -> Option<PathBuf> {
    let home_bin = cargo_home().join("bin/bpf-linker");
    if home_bin.exists() {
        return Some(home_bin);
    }
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.exists())
}

fn linker_llvm(linker: &Path) -> Option<u32> {
    cmd::stdout("ldd", &[&linker.to_string_lossy()]).and_then(|s| linked_llvm_major(&s))
}

fn install_commands(llvm: u32) -> String {
    format!(
        "apt-get update && apt-get install -y llvm-{llvm}-dev libpolly-{llvm}-dev libzstd-dev\n    \
         PATH=/usr/lib/llvm-{llvm}/bin:$PATH cargo install bpf-linker --version ^0.13 --force \
         --no-default-features --features llvm-{llvm}"
    )
}

fn ensure_bpf_linker(llvm: u32, install: bool) -> Result<PathBuf> {
    let found = find_bpf_linker();
    let problem = match &found {
        None => "bpf-linker is not installed".to_owned(),
        Some(p) => match linker_llvm(p) {
            Some(v) if v == llvm => return Ok(p.clone()),
            Some(v) => format!(
                "{} is built for LLVM {v} but rustc uses LLVM {llvm}",
                p.display()
            ),
            // Statically linked: its LLVM cannot be read off; trust it, the build will tell.
            None => return Ok(p.clone()),
        },
    };
    if !install {
        bail!(
            "{problem}; install it with:\n    {}",
            install_commands(llvm)
        );
    }
    eprintln!("xtask: {problem}; building bpf-linker for LLVM {llvm} (about a minute)");
    system::apt_install(&[
        &format!("llvm-{llvm}-dev"),
        &format!("libpolly-{llvm}-dev"),
        "libzstd-dev",
    ])?;
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![PathBuf::from(format!("/usr/lib/llvm-{llvm}/bin"))];
    dirs.extend(env::split_paths(&path));
    let feature = format!("llvm-{llvm}");
    let mut c = crate::cmd::cargo_command(&[
        "install",
        "bpf-linker",
        "--version",
        "^0.13",
        "--force",
        "--no-default-features",
        "--features",
        &feature,
    ]);
    c.env("PATH", env::join_paths(dirs)?);
    cmd::run(&mut c)?;
    let linker = find_bpf_linker().context("cargo install bpf-linker left no binary")?;
    match linker_llvm(&linker) {
        Some(v) if v != llvm => bail!("the new bpf-linker still links LLVM {v}, not {llvm}"),
        _ => Ok(linker),
    }
}

/// The toolchain to build eBPF with; installs missing pieces when `install` (root).
pub fn ensure(install: bool) -> Result<Toolchain> {
    let route = route(install)?;
    let llvm_major = rustc_llvm(&route)?;
    let bpf_linker = ensure_bpf_linker(llvm_major, install)?;
    Ok(Toolchain {
        route,
        llvm_major,
        bpf_linker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rustc_llvm_major() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn reads_linked_llvm_major() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f52)\n";
        assert_eq!(linked_llvm_major(ldd), Some(22));
        assert_eq!(
            linked_llvm_major("\tlibLLVM-19.so => /usr/lib/x (0x1)\n"),
            Some(19)
        );
        assert_eq!(linked_llvm_major("\tlibc.so.6 => /lib/libc.so.6\n"), None);
    }

    #[test]
    fn install_hint_names_the_llvm_feature() {
        let hint = install_commands(22);
        assert!(hint.contains("llvm-22-dev"));
        assert!(hint.contains("--features llvm-22"));
    }
}
