//! Embeds the coexistence test's stand-in eBPF object (`probe-ebpf`'s `standin` binary, built by
//! `cargo xtask build-ebpf`), so the test carries it into the VMs; an empty placeholder when it
//! has not been built, and the test says so.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    let workspace =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("..");
    // A relative CARGO_TARGET_DIR is the workspace root's, where cargo was started.
    let target = env::var_os("CARGO_TARGET_DIR")
        .filter(|t| !t.is_empty())
        .map(|t| workspace.join(t))
        .unwrap_or_else(|| workspace.join("target"));
    let object = target.join("bpfel-unknown-none/release/standin");
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("standin.o");
    let bytes = fs::read(&object).unwrap_or_default();
    fs::write(&out, bytes).expect("write OUT_DIR copy of the stand-in object");
}
