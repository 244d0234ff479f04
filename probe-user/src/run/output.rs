//! What `hopprobe run` prints on the terminal and writes with `--json`.

use std::{collections::BTreeMap, io::Write, path::Path, time::Duration};

use aya::maps::{MapData, PerCpuArray};
use probe_common::sockops::SockHistKey;

use super::{RunError, Summary, io, table};
use crate::{
    attach::{evictions, evictions::LruMaps, probe::read_counters, prog_info},
    names::{Metadata, cgroup::Resolver},
    series::conn,
};

pub fn print_live(
    elapsed: Duration,
    hists: impl IntoIterator<Item = (SockHistKey, Vec<u64>)>,
    resolver: &mut Resolver,
    metadata: &Metadata,
    stats: &PerCpuArray<MapData, u64>,
    lru: &LruMaps,
) {
    let mut series = conn::summaries(hists, resolver);
    let mut counters = read_counters(stats);
    let mut out = format!(
        "--- hopprobe: {:.0}s, {} connection measurements ---\n",
        elapsed.as_secs_f64(),
        counters.get("conn_measured").copied().unwrap_or(0)
    );
    if series.is_empty() {
        out.push_str("(no TCP connections measured yet)\n");
    } else {
        conn::name(&mut series, metadata);
        out.push_str(&table::series(&series));
    }
    lru.add_evictions(&mut counters);
    out.push_str(&footer(&counters));
    let _ = std::io::stdout().write_all(out.as_bytes());
}

/// The records' fate and the LRU evictions in one line (evictions while running are estimates:
/// see `evictions`).
pub fn footer(counters: &BTreeMap<&'static str, u64>) -> String {
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    let evicted: Vec<String> = evictions::NAMES
        .iter()
        .map(|n| format!("{}={}", n.trim_start_matches("evicted_"), get(n)))
        .collect();
    format!(
        "records: produced {} sent {} rate-limited {} ring-full {} | evicted: {}\n",
        get("exchanges_produced"),
        get("exchanges_sent"),
        get("exchanges_rate_limited"),
        get("exchange_drops"),
        evicted.join(" ")
    )
}

pub fn print_summary(summary: &Summary) {
    let mut out = format!(
        "=== hopprobe summary: {:.1}s, stopped by {} ===\n",
        summary.duration_s, summary.stopped_by
    );
    if summary.series.is_empty() {
        out.push_str("(no TCP connections measured)\n");
    } else {
        out.push_str(&table::series(&summary.series));
    }
    if !summary.hops.is_empty() {
        out.push_str(&table::hops(&summary.hops));
    }
    let counters: Vec<String> = summary
        .counters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push_str(&format!("counters: {}\n", counters.join(" ")));
    if !summary.programs.is_empty() {
        out.push_str(&prog_info::render(&summary.programs));
    }
    out.push_str(&footer(&summary.counters));
    let _ = std::io::stdout().write_all(out.as_bytes());
}

pub fn write_json(path: &Path, summary: &Summary) -> Result<(), RunError> {
    let context = format!("writing {}", path.display());
    let text = hopprobe_formats::to_pretty(summary).map_err(|e| RunError::Io {
        context: context.clone(),
        source: e.into(),
    })?;
    // Write beside and rename, so a reader never sees half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(io(context.clone()))?;
    std::fs::rename(&tmp, path).map_err(io(context))
}
