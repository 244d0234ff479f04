//! `cargo xtask build-ebpf`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, system, toolchain};

pub const TARGET: &str = "bpfel-unknown-none";

pub fn object_path() -> PathBuf {
    cmd::workspace_root().join(format!("target/{TARGET}/release/probe-ebpf"))
}

/// Builds `probe-ebpf` and checks that the result is a BPF ELF object.
pub fn build() -> Result<PathBuf> {
    build_with(None, &[])
}

/// The object with `cargo_args` added (`--no-default-features`: without the programs'
/// diagnostics), built in `target_dir`, so that the workspace's object, which hopprobe embeds,
/// stays the default one.
pub fn build_variant(target_dir: &Path, cargo_args: &[&str]) -> Result<PathBuf> {
    build_with(Some(target_dir), cargo_args)
}

fn build_with(target_dir: Option<&Path>, cargo_args: &[&str]) -> Result<PathBuf> {
    let tc = toolchain::ensure(system::is_root())?;
    eprintln!(
        "xtask: eBPF toolchain: {:?}, LLVM {}, {}",
        tc.route,
        tc.llvm_major,
        tc.bpf_linker.display()
    );
    let mut c = tc.cargo();
    c.current_dir(cmd::workspace_root()).args([
        "build",
        "-p",
        "probe-ebpf",
        "--release",
        "--target",
        TARGET,
        "-Z",
        "build-std=core",
        "--config",
        // BTF lets the kernel and bpftool name the programs' functions and types; it is also
        // what fentry programs need.
        r#"target.bpfel-unknown-none.rustflags=["-C", "debuginfo=2", "-C", "link-arg=--btf"]"#,
    ]);
    c.args(cargo_args);
    if let Some(dir) = target_dir {
        c.arg("--target-dir").arg(dir);
    }
    cmd::run(&mut c)?;
    let object = match target_dir {
        Some(dir) => dir.join(format!("{TARGET}/release/probe-ebpf")),
        None => object_path(),
    };
    let bytes = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    // ELF e_machine 247 is EM_BPF.
    if bytes.len() < 20
        || &bytes[..4] != b"\x7fELF"
        || u16::from_le_bytes([bytes[18], bytes[19]]) != 247
    {
        bail!("{} is not a BPF ELF object", object.display());
    }
    eprintln!(
        "xtask: eBPF object {} ({} bytes)",
        object.display(),
        bytes.len()
    );
    Ok(object)
}
