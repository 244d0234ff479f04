//! The embedded eBPF object and how it is loaded.

use aya::{Ebpf, EbpfLoader};
use probe_common::layout::SetStateLayout;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this hopprobe was built without its eBPF object: run `cargo xtask build-ebpf` and rebuild"
    )]
    NotBuilt,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
}

/// Sizes of the maps that bound the probe's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Bytes of the event ring buffer: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Sockets tracked at once (LRU maps of connections, flows and exchanges in progress).
    pub max_sockets: u32,
    /// Packets remembered between observation points (LRU of last sightings).
    pub max_packets: u32,
}

/// The smallest bound `--max-sockets` and `--max-packets` accept: below it the LRU maps would
/// forget entries within a single burst of a busy node.
pub const MIN_MAP_ENTRIES: u32 = 1024;

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            ring_bytes: 256 * 1024,
            max_sockets: 65536,
            max_packets: 65536,
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
    Ok(EbpfLoader::new()
        .override_global("SET_STATE_LAYOUT", layout, true)
        .map_max_entries("EVENTS", sizes.ring_bytes)
        .map_max_entries("CONNS", sizes.max_sockets)
        .map_max_entries("SK_FLOW", sizes.max_sockets)
        .map_max_entries("EXCHANGES", sizes.max_sockets)
        .map_max_entries("FLOW_COOKIE", sizes.max_sockets)
        .map_max_entries("PKT_SEEN", sizes.max_packets)
        .map_max_entries("TC_FLOWS", sizes.max_sockets)
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
