//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! When the object does not exist yet an empty placeholder is embedded instead, so that `cargo
//! check` and clippy work on a fresh clone; `hopprobe` then refuses to load and says how to
//! build the object.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=HOPPROBE_EBPF_OBJECT");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("HOPPROBE_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // Cargo takes a relative CARGO_TARGET_DIR from the directory it was started in,
            // the workspace root for `cargo xtask` and CI; a build script runs in its
            // package's directory, so the same relative path is resolved against the root here (as xtask's `cmd::target_dir`).
            let workspace = manifest.join("..");
            let target = env::var_os("CARGO_TARGET_DIR")
                .filter(|t| !t.is_empty())
                .map(|t| workspace.join(t))
                .unwrap_or_else(|| workspace.join("target"));
            target.join("bpfel-unknown-none/release/probe-ebpf")
        });
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("probe-ebpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write OUT_DIR copy of the eBPF object"),
        Err(_) => {
            println!(
                "cargo::warning=eBPF object {} not found; hopprobe will not load until `cargo xtask build-ebpf` has run",
                object.display()
            );
            fs::write(&out, []).expect("write OUT_DIR placeholder");
        }
    }
}
