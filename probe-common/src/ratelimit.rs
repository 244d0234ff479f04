//! The kernel's rate limit on per-exchange records (`--records-rate`, `--records-burst`).
//!
//! A token bucket per CPU, kept as GCRA's "theoretical arrival time" (one u64 per CPU): a
//! record is admitted when, after adding its `interval_ns`, the time is no more than `burst_ns`
//! ahead of now. Userspace gives each online CPU an equal share of the rate and of the burst.
//! Per CPU rather than global: the legacy (BTF-less) maps aya 0.14 builds cannot hold a
//! `bpf_spin_lock`, and a global bucket updated with atomics would put one contended cache
//! line on every CPU's packet path; per-CPU state needs neither, and the accounting stays
//! exact because each record is counted on the CPU that produced it. The cost: a CPU that is
//! alone busy gets only its share.

use core::mem::size_of;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Nanoseconds per record on one CPU; 0 = no limit.
    pub interval_ns: u64,
    /// How far ahead of now a CPU may run: its share of the burst × `interval_ns`.
    pub burst_ns: u64,
}
const _: () = assert!(size_of::<RateLimit>() == 16);

impl RateLimit {
    pub const UNLIMITED: Self = Self {
        interval_ns: 0,
        burst_ns: 0,
    };

    /// `rate` records per second and `burst` at once over `cpus` CPUs; rate 0 = no limit.
    pub fn new(rate: u64, burst: u64, cpus: u64) -> Self {
        if rate == 0 {
            return Self::UNLIMITED;
        }
        let cpus = cpus.max(1);
        let interval_ns = (1_000_000_000u64.saturating_mul(cpus) / rate).max(1);
        // Each CPU may take at least one record at once, else nothing would ever pass.
        let per_cpu_burst = burst.div_ceil(cpus).max(1);
        Self {
            interval_ns,
            burst_ns: per_cpu_burst.saturating_mul(interval_ns),
        }
    }

    /// The bucket's new state if a record produced at `now` is admitted, `None` if not.
    #[inline(always)]
    pub fn admit(&self, tat: u64, now: u64) -> Option<u64> {
        let next = if tat > now { tat } else { now } + self.interval_ns;
        if next - now > self.burst_ns {
            None
        } else {
            Some(next)
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C) plain data without padding (asserted above).
unsafe impl aya::Pod for RateLimit {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate() {
        // 10 per second, burst 3, one CPU.
        let l = RateLimit::new(10, 3, 1);
        assert_eq!(l.interval_ns, 100_000_000);
        let mut tat = 0;
        let mut passed = 0;
        let t0 = 5_000_000_000;
        for _ in 0..10 {
            if let Some(t) = l.admit(tat, t0) {
                tat = t;
                passed += 1;
            }
        }
        assert_eq!(passed, 3);
        // One interval later, one more.
        assert!(l.admit(tat, t0 + 99_999_999).is_none());
        assert!(l.admit(tat, t0 + 100_000_000).is_some());
        // After a long pause the bucket is full again, not more than full.
        let mut tat2 = tat;
        let mut later = 0;
        for _ in 0..10 {
            if let Some(t) = l.admit(tat2, t0 + 60_000_000_000) {
                tat2 = t;
                later += 1;
            }
        }
        assert_eq!(later, 3);
    }

    #[test]
    fn rate_and_burst_are_shared_between_cpus() {
        let l = RateLimit::new(1000, 10, 4);
        // Each CPU: 250 per second, burst 3 (10 / 4 rounded up).
        assert_eq!(l.interval_ns, 4_000_000);
        assert_eq!(l.burst_ns, 12_000_000);
        assert_eq!(RateLimit::new(0, 10, 4), RateLimit::UNLIMITED);
        assert_eq!(RateLimit::new(1, 0, 1).burst_ns, 1_000_000_000);
    }
}
