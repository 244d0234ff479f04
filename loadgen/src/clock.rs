//! CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads, so that records join
//! with hopprobe's per-hop events without conversion.

use std::time::Duration;

pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The tokio instant for a CLOCK_MONOTONIC timestamp. std's and tokio's `Instant` read
/// CLOCK_MONOTONIC on Linux, so the offset between both views is just "now" taken twice.
pub fn instant_at(ns: u64) -> tokio::time::Instant {
    let now_i = tokio::time::Instant::now();
    let now_ns = mono_ns();
    if ns >= now_ns {
        now_i + Duration::from_nanos(ns - now_ns)
    } else {
        now_i
            .checked_sub(Duration::from_nanos(now_ns - ns))
            .unwrap_or(now_i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_agrees_with_std_instant() {
        let a = mono_ns();
        let t = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        let b = mono_ns();
        let el = t.elapsed().as_nanos() as u64;
        assert!(b - a >= 5_000_000);
        // Both read the same clock: the two intervals differ only by call overhead.
        assert!((b - a).abs_diff(el) < 2_000_000, "{} vs {el}", b - a);
    }
}
