//! The embedded eBPF object and how it is loaded.

use aya::{Ebpf, EbpfLoader};
use probe_common::{layout::SetStateLayout, ratelimit::RateLimit};

use crate::attach::ebpf_log::{self, EbpfLog, EbpfLogError};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this hopprobe was built without its eBPF object: run `cargo xtask build-ebpf` and rebuild"
    )]
    NotBuilt,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(transparent)]
    Log(#[from] EbpfLogError),
}

/// Sizes of the maps that bound the probe's memory, and the rate that bounds its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Bytes of the exchange records' ring buffer: a power of two, at least one page.
    pub exchange_ring_bytes: u32,
    /// Exchange records per second the kernel lets through (0: no limit); the rest are counted.
    pub records_rate: u64,
    /// Records the kernel lets through at once before the rate applies.
    pub records_burst: u64,
    /// Sockets tracked at once (LRU maps of connections, flows and exchanges in progress).
    pub max_sockets: u32,
    /// Packets remembered between observation points (LRU of last sightings).
    pub max_packets: u32,
    /// Socket histograms (`SOCK_HIST`: per cgroup, side, service port and metric), each
    /// 4 KiB per CPU once used; a measurement past the limit is counted in `sock_hist_failed`.
    pub sock_hist_keys: u32,
    /// When the kernel wakes hopprobe to read its rings.
    pub wakeup: RingWakeup,
    /// What the programs log about conditions they did not expect (`--ebpf-log`).
    pub ebpf_log: EbpfLog,
    /// Follow TLS connections' records (`--tls`).
    pub tls: bool,
    /// TC programs will watch the datapath, so the socket programs record their packets'
    /// sightings for them; false with `--no-datapath`, where no sighting could end a hop.
    pub datapath: bool,
}

/// When the kernel wakes hopprobe to read a ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RingWakeup {
    /// When a ring is an eighth full; hopprobe also reads them every 100 ms.
    #[default]
    Batched,
    /// At every record (the kernel's default), which costs the traced request an interrupt
    /// and a wake-up each; for comparison.
    Each,
}

/// The smallest bound `--max-sockets` and `--max-packets` accept: below it the LRU maps would
/// forget entries within a single burst of a busy node.
pub const MIN_MAP_ENTRIES: u32 = 1024;

/// A node with a mesh makes about a dozen exchanges per request; 20 000 records a second keep
/// the records of 1 500 requests a second, and the burst is about a quarter of what the 4 MiB
/// ring holds.
pub const DEFAULT_RECORDS_RATE: u64 = 20_000;
pub const DEFAULT_RECORDS_BURST: u64 = 8192;

impl MapSizes {
    /// The kernel's view of the rate limit: each online CPU gets an equal share.
    pub fn records_limit(&self) -> RateLimit {
        let cpus = aya::util::online_cpus().map_or(1, |c| c.len() as u64);
        RateLimit::new(self.records_rate, self.records_burst, cpus)
    }
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            // 4 MiB, not 1: the programs wake hopprobe when the ring is an eighth full, and at
            // the default rate an eighth of 1 MiB filled every 50 ms, twice as often as the
            // drain timer; each wake-up costs tens of µs and finds the caches cold
            // (docs/design/ring-wakeups.md).
            exchange_ring_bytes: 4 * 1024 * 1024,
            records_rate: DEFAULT_RECORDS_RATE,
            records_burst: DEFAULT_RECORDS_BURST,
            max_sockets: 65536,
            max_packets: 65536,
            sock_hist_keys: 2048,
            wakeup: RingWakeup::Batched,
            ebpf_log: EbpfLog::Off,
            tls: false,
            datapath: true,
        }
    }
}

/// Why a ring size is unusable, or `None` when the kernel will take it.
pub fn ring_size_problem(bytes: u32) -> Option<String> {
    let page = 4096;
    (!bytes.is_power_of_two() || bytes < page)
        .then(|| format!("{bytes} is not a power of two of at least {page} bytes"))
}

/// Loads the object's maps and BTF; programs are loaded individually by their users.
pub fn load(layout: &SetStateLayout, sizes: MapSizes) -> Result<Ebpf, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NotBuilt);
    }
    let limit = sizes.records_limit();
    let wake_each = u32::from(sizes.wakeup == RingWakeup::Each);
    let tls = u8::from(sizes.tls);
    let datapath = u32::from(sizes.datapath);
    let mut loader = EbpfLoader::new();
    // Not required: an object built without its diagnostics has neither global, and only
    // `ebpf_log::start` minds.
    let log_levels: Vec<_> = ebpf_log::level_globals(sizes.ebpf_log).collect();
    for (name, level) in &log_levels {
        loader.override_global(name, level, false);
    }
    Ok(loader
        .override_global("SET_STATE_LAYOUT", layout, true)
        .override_global("RECORDS_LIMIT", &limit, true)
        .override_global("RING_WAKE_EACH", &wake_each, true)
        .override_global("TLS_FOLLOW", &tls, true)
        .override_global("DATAPATH_POINTS", &datapath, true)
        .map_max_entries("SOCK_HIST", sizes.sock_hist_keys)
        .map_max_entries("EXCHANGE_EVENTS", sizes.exchange_ring_bytes)
        .map_max_entries("FLOW_SOCK", sizes.max_sockets)
        .map_max_entries("PEER_FLOW", sizes.max_sockets)
        .map_max_entries("FD_FLOW", sizes.max_sockets)
        .map_max_entries("CONNS", sizes.max_sockets)
        .map_max_entries("SK_FLOW", sizes.max_sockets)
        .map_max_entries("EXCHANGES", sizes.max_sockets)
        .map_max_entries("FLOW_COOKIE", sizes.max_sockets)
        .map_max_entries("PKT_SEEN", sizes.max_packets)
        .map_max_entries("TC_FLOWS", sizes.max_sockets)
        .map_max_entries("TLS", sizes.max_sockets)
        .map_max_entries("TC_TLS", sizes.max_sockets)
        .load(OBJECT)?)
}

/// Formats an error with its whole chain of sources: aya puts the useful part (the errno, the
/// verifier log) in the innermost one.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let s = inner.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = inner.source();
    }
    text
}

/// Like [`error_chain`], but a verifier log is cut to its last lines, which say why the program
/// was rejected; the whole log can run to thousands of lines.
pub fn error_brief(err: &(dyn std::error::Error + 'static)) -> String {
    shorten_verifier_log(&error_chain(err), 4)
}

fn shorten_verifier_log(text: &str, keep: usize) -> String {
    const MARK: &str = "Verifier output:";
    let Some(at) = text.find(MARK) else {
        return text.to_owned();
    };
    let (head, log) = text.split_at(at + MARK.len());
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() <= keep {
        return text.to_owned();
    }
    format!(
        "{head} [... {} lines ...] {}",
        lines.len() - keep,
        lines[lines.len() - keep..].join(" | ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_log_keeps_its_tail() {
        let text = "load failed. Verifier output: 0: a\n1: b\n2: c\nR4 invalid zero-sized read\nprocessed 3 insns\n";
        let short = shorten_verifier_log(text, 2);
        assert_eq!(
            short,
            "load failed. Verifier output: [... 3 lines ...] R4 invalid zero-sized read | processed 3 insns"
        );
        assert_eq!(shorten_verifier_log("no log here", 2), "no log here");
    }
}
