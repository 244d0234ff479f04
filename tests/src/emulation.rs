//! Tests that run on a CPU qemu emulates in software (the VM matrix's TCG guests, where every
//! instruction costs many host instructions) are told so by `HOPPROBE_EMULATED_CPU`, which
//! only the guest's `/init` sets. Under it, and only under it, the upper bounds a test puts on
//! elapsed time — the part of a bound that is the machine's own overhead, never an injected
//! delay — are widened by [`FACTOR`]. Counts, match rates, lower bounds (an injected sleep
//! never ends early) and cleanup checks stay as they are.

use std::time::Duration;

/// The environment variable the VM's `/init` sets (to `qemu-tcg`).
pub const ENV: &str = "HOPPROBE_EMULATED_CPU";

/// How much wider an overhead bound is under TCG. Measured in the VM matrix (2 vCPUs on a
/// 2-core host that was also running other builds and another VM): the lab's end-to-end p50
/// overhead was 157–169 ms against the host's 8 ms allowance (×21), a leaf's `app` hop
/// overhead up to 15.6 ms against 1 ms, the sidecar hop's growth beyond 2 ms up to 3.7 ms
/// against 0.5 ms (×7); see the README's "Tests".
pub const FACTOR: u32 = 24;

/// True inside the VM matrix.
pub fn emulated() -> bool {
    std::env::var_os(ENV).is_some_and(|v| !v.is_empty())
}

/// `FACTOR` under emulation, else 1.
pub fn factor() -> u32 {
    if emulated() { FACTOR } else { 1 }
}

/// An allowance for the machine's own overhead, widened under emulation.
pub fn slack(d: Duration) -> Duration {
    d * factor()
}

/// [`slack`] for bounds kept in milliseconds.
pub fn slack_ms(ms: f64) -> f64 {
    ms * f64::from(factor())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_overhead_allowances_widen_and_only_under_emulation() {
        let d = Duration::from_millis(8);
        if emulated() {
            assert_eq!(slack(d), d * FACTOR);
            assert_eq!(slack_ms(0.5), 0.5 * f64::from(FACTOR));
        } else {
            assert_eq!(slack(d), d);
            assert_eq!(slack_ms(0.5), 0.5);
        }
    }
}
