//! The VM matrix catches a program that Linux 6.1's verifier rejects: `vm-test` fails, and its
//! output carries the verifier's own message. 6.12 is the control: it knows the helper, so its
//! verifier gets past the call's helper number and checks the arguments instead.

use std::{path::Path, process::Command};

#[test]
fn vm_test_fails_with_the_6_1_verifiers_message() {
    // Booting a VM needs no privilege, but fetching the kernel may need `apt-get update` and
    // CI runs this as root; without root the test is skipped like the other root tests.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert_ne!(
            std::env::var("HOPPROBE_ROOT_TESTS").as_deref(),
            Ok("require"),
            "HOPPROBE_ROOT_TESTS=require but not running as root"
        );
        eprintln!("SKIPPED vm_test_fails_with_the_6_1_verifiers_message: needs root");
        return;
    }
    // `<target>/debug/xtask`: the target directory cargo chose (CARGO_TARGET_DIR or not),
    // where `cargo xtask build-ebpf` wrote the object too.
    let target = Path::new(env!("CARGO_BIN_EXE_xtask"))
        .ancestors()
        .nth(2)
        .expect("<target>/<profile>/xtask");
    let object = target.join("bpfel-unknown-none/release/verifier-reject");
    assert!(
        object.exists(),
        "{} missing: run `cargo xtask build-ebpf`",
        object.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "vm-test",
            "--kernel",
            "all",
            "--load-only",
            "--timeout-secs",
            "300",
        ])
        .arg("--extra-object")
        .arg(&object)
        .output()
        .expect("run xtask vm-test");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "vm-test passed:\n{text}");
    // The guest really ran: positive control for the markers the host reads.
    assert!(text.contains("@@hopprobe-vm done"), "{text}");
    // 6.1 knows helpers up to 209; bpf_cgrp_storage_get is 210.
    assert!(
        text.contains("[6.1] vm-load: hp_vm_reject: REJECTED")
            && text.contains("[6.1] invalid func unknown#210"),
        "no 6.1 verifier message in:\n{text}"
    );
    // The table names the verifier's reason.
    assert!(
        text.contains(
            "did not load (vm-load exit Some(1)): hp_vm_reject: invalid func unknown#210 |"
        ),
        "{text}"
    );
    assert!(!text.contains("[6.12] invalid func unknown#210"), "{text}");
    assert!(
        text.contains("[6.12] R1 type=scalar expected=map_ptr"),
        "6.12 should check the helper's arguments:\n{text}"
    );
    assert!(
        text.contains("vm-test failed on kernel 6.1, 6.12"),
        "{text}"
    );
}
