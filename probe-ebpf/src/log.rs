//! Diagnostics for whoever debugs a node (`hopprobe run --ebpf-log warn|debug`): aya-log
//! records at the places where the programs count something they did not expect, with the
//! values that name it (socket, cookie, cgroup, state, error code). The counters say how
//! often; a record says which socket and why.
//!
//! Off unless asked. Each call first reads `LOG_LEVEL`, a read-only global that userspace sets
//! before load: when off that is one load and one branch, and since the kernel knows the
//! values of a frozen read-only map, the verifier removes the branch and the logging code
//! behind it before the JIT sees them (`hopprobe check` counts the same instructions with and
//! without them). With the `log` feature off (`--no-default-features`, what `cargo xtask
//! bench-probe` measures against) the calls compile to nothing.
//!
//! The record's target is the program's name, which userspace prints. Where one function runs
//! in two programs (cgroup_skb ingress and egress), the caller says which:
//! `warning!("hp_skb_in" if (inbound) else "hp_skb_out", ...)`; both arms stay literals, which
//! aya-log copies with a length the verifier knows.

/// The most verbose level logged, numbered as `aya_log_common::Level` (0: off, 2: warn,
/// 4: debug). Written by userspace before load; its default keeps any loader that does not
/// know about it quiet.
#[unsafe(no_mangle)]
pub static LOG_LEVEL: u8 = 0;

#[cfg(feature = "log")]
pub const WARN: u8 = 2;
#[cfg(feature = "log")]
pub const DEBUG: u8 = 4;

#[cfg(feature = "log")]
#[inline(always)]
pub fn enabled(level: u8) -> bool {
    // SAFETY: the static is valid for reads; volatile keeps the compiler from using the default.
    unsafe { core::ptr::read_volatile(&LOG_LEVEL) >= level }
}

/// One record at `$level` (`WARN`, `DEBUG`) through aya-log's `$mac`, when `LOG_LEVEL` allows.
macro_rules! emit {
    (
        $mac:ident, $level:ident,
        $program:literal if ($inbound:expr) else $other:literal, $($rest:tt)+
    ) => {
        if $inbound {
            $crate::log::emit!($mac, $level, $program, $($rest)+)
        } else {
            $crate::log::emit!($mac, $level, $other, $($rest)+)
        }
    };
    ($mac:ident, $level:ident, $program:literal, $fmt:literal $(, $arg:expr)* $(,)?) => {{
        #[cfg(feature = "log")]
        {
            if $crate::log::enabled($crate::log::$level) {
                ::aya_log_ebpf::$mac!(&(), target: $program, $fmt $(, $arg)*);
            }
        }
        #[cfg(not(feature = "log"))]
        {
            $(let _ = $arg;)*
        }
    }};
}

/// Something the program did not expect and lost data over (a failed insert, an unreadable
/// tracepoint).
macro_rules! warning {
    ($($args:tt)+) => {
        $crate::log::emit!(warn, WARN, $($args)+)
    };
}

/// Something expected under load or at start-up (a full ring, a socket opened before
/// hopprobe attached), one record per occurrence.
macro_rules! debug {
    ($($args:tt)+) => {
        $crate::log::emit!(debug, DEBUG, $($args)+)
    };
}

// Not `warn`: that name is taken by the built-in lint attribute.
pub(crate) use {debug, emit, warning};
