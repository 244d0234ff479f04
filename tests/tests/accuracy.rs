//! The per-hop ground-truth matrix (issue 5): sidecar delay D ∈ {0, 1, 5 ms} × app service
//! time A ∈ {0, 2, 10 ms} at concurrency 1, a one-worker app at concurrency 32, and a lab
//! without a mesh; every row of `cargo xtask accuracy` must be inside its tolerance.

use std::path::Path;

use testkit::accuracy::{self, Options, Programs};

#[test]
fn every_hop_matches_what_the_lab_injected() {
    if !testkit::lab::available("every_hop_matches_what_the_lab_injected") {
        return;
    }
    if testkit::emulation::emulated() {
        // Tolerances of 150 µs mean nothing on a CPU that qemu emulates in software.
        eprintln!("HOST-ONLY every_hop_matches_what_the_lab_injected: a timing matrix");
        return;
    }
    let programs = Programs::beside(
        Path::new(env!("CARGO_BIN_EXE_hoplab")),
        Path::new(env!("CARGO_BIN_EXE_hopprobe-test")),
    )
    .expect("loadgen is built with the workspace's tests");
    let opts = Options::full(&format!("hpt{}a", std::process::id() % 100_000));
    // A timing matrix on a shared 2-core VM: a core row can land outside once in a while when
    // something else runs; it is asserted on the second run if the first has any out.
    let mut failed = Vec::new();
    for attempt in 1..=2 {
        let report = accuracy::run(&programs, &opts, |rows| {
            for r in rows {
                eprintln!("{r}");
            }
        })
        .expect("the matrix runs");
        eprintln!("attempt {attempt}: {report}");
        let tails = report.failures().filter(|r| r.tail).count();
        eprintln!("{tails} tail rows out of tolerance (reported, not asserted)");
        failed = report
            .failures()
            .filter(|r| !r.tail)
            .map(ToString::to_string)
            .collect();
        if failed.is_empty() {
            break;
        }
    }
    assert!(
        failed.is_empty(),
        "out of tolerance:\n{}",
        failed.join("\n")
    );
    assert_eq!(testkit::leftovers::all(), Vec::<String>::new());
}
