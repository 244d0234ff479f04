//! The eBPF programs' own diagnostics (aya-log records, see `probe-ebpf/src/log.rs`), turned on
//! by `hopprobe run --ebpf-log warn|debug` or by a `RUST_LOG` directive for the target
//! `hopprobe::ebpf`, and written to stderr through `tracing` as `<program>: <message>`.
//!
//! Off by default: the level is a read-only global of the eBPF object, set at load, and at 0
//! the verifier removes every logging branch, so a probe that was not asked costs the traced
//! requests nothing and starts no reader.

use std::{
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing_subscriber::{EnvFilter, filter::Directive};

/// The `tracing` target of the kernel's records; a `RUST_LOG` directive naming it turns them on.
pub const TARGET: &str = "hopprobe::ebpf";

/// The globals of the eBPF object that gate its records: hopprobe's own (checked first, off in
/// the object) and aya-log's (on in the object), both set to the same level.
const LEVEL_GLOBALS: [&str; 2] = ["LOG_LEVEL", aya_log::LEVEL];

/// How much the eBPF programs report about conditions they did not expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, clap::ValueEnum)]
pub enum EbpfLog {
    /// Nothing: the logging code is never run (the default).
    #[default]
    Off,
    /// Data lost for a reason other than load: a failed map insert, a tracepoint whose fields
    /// did not parse.
    Warn,
    /// Also what is expected now and then but names a socket: a full ring buffer, a socket
    /// that closed without hopprobe having seen it open.
    Debug,
}

#[derive(Debug, thiserror::Error)]
pub enum EbpfLogError {
    #[error(
        "--ebpf-log: this hopprobe's eBPF object was built without its diagnostics \
         (probe-ebpf's `log` feature); rebuild with `cargo xtask build-ebpf`"
    )]
    NotBuilt,
    #[error("--ebpf-log: reading the eBPF programs' log ring: {0}")]
    Logger(aya_log::Error),
    #[error("--ebpf-log: starting the log reader: {0}")]
    Thread(std::io::Error),
}

impl EbpfLog {
    /// The most verbose level the kernel logs, numbered as aya-log's `Level` (0: off).
    pub fn kernel_level(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Warn => aya_log::Level::Warn as u8,
            Self::Debug => aya_log::Level::Debug as u8,
        }
    }

    /// The level to run at: the flag when given, else what `rust_log` asks of [`TARGET`] by
    /// name. A bare level (`RUST_LOG=debug`) does not count: records cost the traced requests
    /// a ring write each, so only an explicit ask turns them on.
    pub fn resolve(flag: Option<Self>, rust_log: Option<&str>) -> Self {
        flag.or_else(|| rust_log.and_then(Self::named_in))
            .unwrap_or_default()
    }

    /// [`Self::resolve`] with this process's `RUST_LOG`.
    pub fn from_env(flag: Option<Self>) -> Self {
        Self::resolve(flag, std::env::var("RUST_LOG").ok().as_deref())
    }

    /// The level the last directive for [`TARGET`] in an `EnvFilter` spec gives it, as
    /// `EnvFilter` reads one: `target[span{fields}]=level`, a target alone enabling all levels.
    fn named_in(spec: &str) -> Option<Self> {
        spec.split(',').rev().find_map(Self::from_directive)
    }

    fn from_directive(directive: &str) -> Option<Self> {
        let directive = directive.trim();
        let (target, level) = match directive.find('[') {
            Some(at) => (
                &directive[..at],
                directive
                    .rsplit_once(']')
                    .map(|(_, l)| l.trim_start_matches('=')),
            ),
            None => match directive.split_once('=') {
                Some((t, l)) => (t, Some(l)),
                None => (directive, None),
            },
        };
        if target != TARGET {
            return None;
        }
        Some(match level.map(str::to_ascii_lowercase).as_deref() {
            None | Some("" | "trace" | "debug" | "5" | "4") => Self::Debug,
            Some("info" | "warn" | "3" | "2") => Self::Warn,
            _ => Self::Off,
        })
    }

    /// The `tracing` directive that lets this level's records through whatever `RUST_LOG` says.
    fn directive(self) -> Option<Directive> {
        let level = match self {
            Self::Off => return None,
            Self::Warn => "warn",
            Self::Debug => "debug",
        };
        Some(
            format!("{TARGET}={level}")
                .parse()
                .expect("a valid directive"),
        )
    }
}

/// hopprobe's log filter: `RUST_LOG` (else `info`), and with `--ebpf-log` the kernel's records
/// at the level asked, even where `RUST_LOG` would filter them out.
pub fn env_filter(flag: Option<EbpfLog>) -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match flag.and_then(EbpfLog::directive) {
        Some(d) => filter.add_directive(d),
        None => filter,
    }
}

/// The global overrides that set the object's log level: `(name, value)`.
pub fn level_globals(level: EbpfLog) -> impl Iterator<Item = (&'static str, u8)> {
    LEVEL_GLOBALS
        .into_iter()
        .map(move |g| (g, level.kernel_level()))
}

/// Reads the programs' records while it lives; dropping it reads the last ones and stops.
pub struct EbpfLogReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long a stop waits at most for the reader; records wake it at once.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// Starts reading the records of `ebpf` (loaded with [`level_globals`] of `level`), or nothing
/// when `level` is off.
pub fn start(ebpf: &mut Ebpf, level: EbpfLog) -> Result<Option<EbpfLogReader>, EbpfLogError> {
    if level == EbpfLog::Off {
        return Ok(None);
    }
    let mut logger = EbpfLogger::init_with_logger(ebpf, ToTracing).map_err(|e| match e {
        aya_log::Error::MapNotFound => EbpfLogError::NotBuilt,
        e => EbpfLogError::Logger(e),
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("hopprobe-ebpf-log".into())
        .spawn(move || {
            let timeout = PollTimeout::try_from(POLL_TIMEOUT).expect("fits");
            loop {
                // Read before waiting, so that the records written until the stop are read.
                let last = stopping.load(Ordering::Acquire);
                let mut fds = [PollFd::new(logger.as_fd(), PollFlags::POLLIN)];
                // An error (EINTR) only means reading earlier.
                let _ = poll(&mut fds, timeout);
                logger.flush();
                if last {
                    break;
                }
            }
        })
        .map_err(EbpfLogError::Thread)?;
    tracing::info!(
        ?level,
        "the eBPF programs' diagnostics are on; each record costs the traced packet a ring write"
    );
    Ok(Some(EbpfLogReader {
        stop,
        thread: Some(thread),
    }))
}

impl Drop for EbpfLogReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            // A panic in the reader (a record aya-log could not decode) is already printed.
            let _ = t.join();
        }
    }
}

/// Passes aya-log's records on to `tracing`, named by the program that wrote them (the record's
/// target, see `probe-ebpf/src/log.rs`).
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let (program, message) = (record.target(), record.args());
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{program}: {message}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{program}: {message}"),
            log::Level::Info => tracing::info!(target: TARGET, "{program}: {message}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{program}: {message}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{program}: {message}"),
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_rust_log() {
        let debug = Some("hopprobe::ebpf=debug");
        assert_eq!(EbpfLog::resolve(Some(EbpfLog::Off), debug), EbpfLog::Off);
        assert_eq!(EbpfLog::resolve(Some(EbpfLog::Warn), debug), EbpfLog::Warn);
        assert_eq!(EbpfLog::resolve(None, debug), EbpfLog::Debug);
        assert_eq!(EbpfLog::resolve(None, None), EbpfLog::Off);
    }

    #[test]
    fn only_a_directive_naming_the_target_turns_it_on() {
        let at = |spec| EbpfLog::resolve(None, Some(spec));
        for off in [
            "info",
            "debug",
            "trace",
            "hopprobe=debug",
            "hopprobe::ebpf_other=debug",
            "hopprobe::ebpf=error",
            "hopprobe::ebpf=off",
            "",
        ] {
            assert_eq!(at(off), EbpfLog::Off, "{off}");
        }
        assert_eq!(at("info,hopprobe::ebpf=warn"), EbpfLog::Warn);
        assert_eq!(at("hopprobe::ebpf=INFO"), EbpfLog::Warn);
        assert_eq!(at("hopprobe::ebpf"), EbpfLog::Debug);
        assert_eq!(at("warn, hopprobe::ebpf=trace"), EbpfLog::Debug);
        assert_eq!(at("hopprobe::ebpf[run{x=1}]=warn"), EbpfLog::Warn);
        // As in `EnvFilter`, the last directive for a target replaces the earlier ones.
        assert_eq!(at("hopprobe::ebpf=debug,hopprobe::ebpf=off"), EbpfLog::Off);
    }

    #[test]
    fn kernel_levels_are_aya_logs() {
        assert_eq!(EbpfLog::Off.kernel_level(), 0);
        assert_eq!(EbpfLog::Warn.kernel_level(), 2);
        assert_eq!(EbpfLog::Debug.kernel_level(), 4);
        let globals: Vec<_> = level_globals(EbpfLog::Warn).collect();
        assert_eq!(globals, [("LOG_LEVEL", 2), ("AYA_LOG_LEVEL", 2)]);
    }

    #[test]
    fn the_flag_opens_the_filter_for_its_records() {
        let filter = EnvFilter::new("info,hopprobe::ebpf=warn");
        let filter = match EbpfLog::Debug.directive() {
            Some(d) => filter.add_directive(d),
            None => filter,
        };
        // The flag's directive replaced RUST_LOG's for the same target.
        let text = filter.to_string();
        assert!(text.contains("hopprobe::ebpf=debug"), "{text}");
        assert!(!text.contains("hopprobe::ebpf=warn"), "{text}");
        assert!(EbpfLog::Off.directive().is_none());
    }
}
