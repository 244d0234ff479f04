//! Test fixtures shared by hopprobe's integration tests: root gating, network namespaces with
//! guards that remove them on drop (also when a test panics), and leftover checks.

pub mod accuracy;
pub mod browser;
pub mod emulation;
pub mod lab;
pub mod leftovers;
pub mod loopback;
pub mod netns;
pub mod probe;
pub mod prometheus;
pub mod root;

/// A finished command's status, stdout and stderr, for assertion messages.
pub fn describe(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
