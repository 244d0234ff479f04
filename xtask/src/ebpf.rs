//! `cargo xtask build-ebpf`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, system, toolchain};

pub const TARGET: &str = "bpfel-unknown-none";

/// Where the build writes the object and probe-user's build.rs reads it from.
pub fn object_path() -> PathBuf {
    object_in(&cmd::target_dir())
}

fn object_in(target_dir: &Path) -> PathBuf {
    target_dir.join(format!("{TARGET}/release/probe-ebpf"))
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
    } else {
        cmd::pin_target_dir(&mut c);
    }
    cmd::run(&mut c)?;
    let object = match target_dir {
        Some(dir) => object_in(dir),
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

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Set for the child run of `report_object_path_in_a_child`.
    const CHILD: &str = "XTASK_TEST_REPORT_OBJECT_PATH";

    /// Prints `object_path()` when the test below runs this binary as its child, with the
    /// environment it chose; a no-op otherwise.
    #[test]
    fn report_object_path_in_a_child() {
        if std::env::var_os(CHILD).is_some() {
            println!("object={}", object_path().display());
        }
    }

    /// What `object_path` says in a process whose `CARGO_TARGET_DIR` is `dir`.
    fn object_path_under(dir: &std::ffi::OsStr) -> String {
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "ebpf::tests::report_object_path_in_a_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("CARGO_TARGET_DIR", dir)
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            // libtest prints the test's name on the same line, before its output.
            .find_map(|l| l.split_once("object=").map(|(_, path)| path))
            .unwrap_or_else(|| panic!("no object= line in:\n{stdout}"))
            .to_owned()
    }

    #[test]
    fn the_object_is_where_probe_users_build_script_looks() {
        // probe-user/build.rs reads `$CARGO_TARGET_DIR/bpfel-unknown-none/release/probe-ebpf`.
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            object_path_under(dir.path().as_os_str()),
            dir.path()
                .join("bpfel-unknown-none/release/probe-ebpf")
                .display()
                .to_string()
        );
    }
}
