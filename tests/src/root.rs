//! Gate for tests that need root (eBPF, network namespaces).

/// True when root tests can run. Without root they are skipped with a message, unless
/// `HOPPROBE_ROOT_TESTS=require` (set by `cargo xtask test` as root, hence in CI), where a
/// missing privilege is a failure rather than a silent skip.
pub fn available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("HOPPROBE_ROOT_TESTS").as_deref() == Ok("require") {
        panic!("{test}: HOPPROBE_ROOT_TESTS=require but not running as root");
    }
    eprintln!("SKIPPED {test}: needs root (run `cargo xtask test` as root)");
    false
}
