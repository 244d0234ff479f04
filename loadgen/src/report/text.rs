//! oha's text report (the layout of oha 1.4, which the published runs used: seconds
//! throughout), one per target, and a side-by-side table when there are several.

use std::io::{self, Write};

use super::{PERCENTILES, TargetReport};
use crate::stats::Series;

pub fn write_all<W: Write>(w: &mut W, reports: &[TargetReport<'_>]) -> io::Result<()> {
    if let [single] = reports {
        return write_one(w, single);
    }
    for r in reports {
        writeln!(w, "Target {} ({}):", r.name, r.url)?;
        write_one(w, r)?;
        writeln!(w)?;
    }
    write_side_by_side(w, reports)
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024.0 {
        return format!("{n:.2} B");
    }
    let mut v = n;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.2} {unit}")
}

pub fn write_one<W: Write>(w: &mut W, r: &TargetReport<'_>) -> io::Result<()> {
    let s = r.stats;
    let lat = &s.latency;
    writeln!(w, "Summary:")?;
    writeln!(w, "  Success rate:\t{:.2}%", 100.0 * s.success_rate())?;
    writeln!(w, "  Total:\t{:.4} secs", r.total_secs)?;
    writeln!(w, "  Slowest:\t{:.4} secs", lat.max())?;
    writeln!(w, "  Fastest:\t{:.4} secs", lat.min())?;
    writeln!(w, "  Average:\t{:.4} secs", lat.mean())?;
    writeln!(w, "  Requests/sec:\t{:.4}", r.requests_per_sec())?;
    writeln!(w)?;
    writeln!(w, "  Total data:\t{}", bytes(s.body_bytes as f64))?;
    match s.size_per_request() {
        Some(n) => writeln!(w, "  Size/request:\t{}", bytes(n as f64))?,
        None => writeln!(w, "  Size/request:\tNaN")?,
    }
    writeln!(w, "  Size/sec:\t{}", bytes(r.size_per_sec()))?;
    writeln!(w)?;
    writeln!(w, "Response time histogram:")?;
    histogram(w, lat)?;
    writeln!(w)?;
    writeln!(w, "Response time distribution:")?;
    for p in PERCENTILES {
        writeln!(w, "  {p:.2}% in {:.4} secs", lat.percentile(p))?;
    }
    writeln!(w)?;
    writeln!(w)?;
    writeln!(w, "Details (average, fastest, slowest):")?;
    let triple = |x: &Series| {
        format!(
            "{:.4} secs, {:.4} secs, {:.4} secs",
            x.mean(),
            x.min(),
            x.max()
        )
    };
    writeln!(w, "  DNS+dialup:\t{}", triple(&s.dns_dialup))?;
    writeln!(w, "  DNS-lookup:\t{}", triple(&s.dns_lookup))?;
    writeln!(w)?;
    writeln!(w, "Status code distribution:")?;
    let mut statuses = s.statuses.clone();
    statuses.sort_by_key(|&(c, n)| (std::cmp::Reverse(n), c));
    for (code, n) in statuses {
        writeln!(w, "  [{code}] {n} responses")?;
    }
    let errors = s.error_list();
    if !errors.is_empty() {
        writeln!(w)?;
        writeln!(w, "Error distribution:")?;
        for (name, n) in errors {
            writeln!(w, "  [{n}] {name}")?;
        }
    }
    Ok(())
}

fn histogram<W: Write>(w: &mut W, lat: &Series) -> io::Result<()> {
    let data = lat.buckets(11);
    let Some(max_bar) = data.iter().map(|t| t.1).max() else {
        return Ok(());
    };
    let count_width = max_bar.to_string().len();
    let width = data
        .iter()
        .map(|t| (t.0 as u64).to_string().len())
        .max()
        .unwrap_or(1)
        + 4;
    for (label, n) in &data {
        let pad = count_width - n.to_string().len();
        write!(w, "  {label:>width$.3} [{n}]{} |", " ".repeat(pad))?;
        let bars = if max_bar == 0 {
            0
        } else {
            (32.0 * *n as f64 / max_bar as f64) as usize
        };
        writeln!(w, "{}", "■".repeat(bars))?;
    }
    Ok(())
}

fn write_side_by_side<W: Write>(w: &mut W, reports: &[TargetReport<'_>]) -> io::Result<()> {
    writeln!(w, "Side by side:")?;
    write!(w, "  {:<14}", "")?;
    for r in reports {
        write!(w, " {:>14}", r.name)?;
    }
    writeln!(w)?;
    let mut row = |label: &str, f: &dyn Fn(&TargetReport<'_>) -> String| -> io::Result<()> {
        write!(w, "  {label:<14}")?;
        for r in reports {
            write!(w, " {:>14}", f(r))?;
        }
        writeln!(w)
    };
    row("requests", &|r| r.stats.requests.to_string())?;
    row("success rate", &|r| {
        format!("{:.2}%", 100.0 * r.stats.success_rate())
    })?;
    row("requests/sec", &|r| format!("{:.1}", r.requests_per_sec()))?;
    row("average", &|r| format!("{:.4} s", r.stats.latency.mean()))?;
    for p in [50.0, 90.0, 99.0, 99.9] {
        row(&format!("p{p}"), &|r| {
            format!("{:.4} s", r.stats.latency.percentile(p))
        })?;
    }
    row("slowest", &|r| format!("{:.4} s", r.stats.latency.max()))?;
    row("errors", &|r| {
        (r.stats.requests - r.stats.successes).to_string()
    })?;
    Ok(())
}
