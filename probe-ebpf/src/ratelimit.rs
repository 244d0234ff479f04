//! The rate limit on exchange records: a token bucket per CPU (see `probe_common::ratelimit`
//! for why per CPU).

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::{RECORDS_TAT, records_limit};

/// Whether a record produced now may go to the ring buffer; takes its token if so.
#[inline(always)]
pub fn admit() -> bool {
    let limit = records_limit();
    if limit.interval_ns == 0 {
        return true;
    }
    let Some(tat) = RECORDS_TAT.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot; a program does not migrate while it runs, and the programs that
    // emit records (cgroup_skb) do not preempt each other on one CPU.
    match limit.admit(unsafe { *tat }, now) {
        Some(next) => {
            unsafe { *tat = next };
            true
        }
        None => false,
    }
}
