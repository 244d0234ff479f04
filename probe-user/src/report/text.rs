//! The report as a terminal table and as Markdown.

use std::fmt::Write;

use super::aggregate::EnvReport;

fn f(v: f64) -> String {
    format!("{v:.3}")
}

/// Rows of the decomposition table: hop, then one column per percentile.
fn rows(e: &EnvReport) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec!["hop (ms)".to_string()];
    header.extend(e.percentiles.iter().map(|p| p.percentile.clone()));
    let mut rows = Vec::new();
    let col = |g: &dyn Fn(&super::aggregate::PercentileRow) -> String| -> Vec<String> {
        e.percentiles.iter().map(g).collect()
    };
    let mut push = |name: &str, vals: Vec<String>| {
        let mut r = vec![name.to_string()];
        r.extend(vals);
        rows.push(r);
    };
    push("end-to-end", col(&|p| f(p.e2e_ms)));
    push("  requests averaged", col(&|p| p.window.to_string()));
    push("  their mean", col(&|p| f(p.window_e2e_ms)));
    push("unaccounted (outside node)", col(&|p| f(p.unaccounted_ms)));
    for (i, h) in e.hops.iter().enumerate() {
        push(h, col(&|p| f(p.hops_ms[i])));
    }
    push("Σ queue wait", col(&|p| f(p.queue_ms)));
    push("Σ service in node", col(&|p| f(p.service_ms)));
    (header, rows)
}

/// The clock offset as the summary line gives it: the estimate and what it rests on, or that
/// there is none (a note says why).
pub fn clock_offset(e: &EnvReport) -> String {
    match (e.clock_offset_ms, e.clock_offset_bounds_ms) {
        (Some(o), Some((lo, hi))) => format!(
            "{o:.3} ms (within [{lo:.3}, {hi:.3}] from {} requests)",
            e.clock_offset_requests
        ),
        (Some(o), None) => format!("{o:.3} ms"),
        (None, _) => "not estimated".into(),
    }
}

fn summary_lines(e: &EnvReport) -> Vec<String> {
    let mut out = Vec::new();
    if e.mode == "per-request" {
        out.push(format!(
            "requests {}  joined {} ({:.2} %)  followed into a pod {}  clamped {}  clock offset {}",
            e.requests,
            e.joined,
            e.join_rate * 100.0,
            e.reached_pod,
            e.clamped,
            clock_offset(e)
        ));
    } else {
        // A join was tried and fell back (its note says why): the offset it could not
        // estimate.
        out.push(if e.clock_offset_requests > 0 {
            format!(
                "mode: distributions (no per-request join)  clock offset {}",
                clock_offset(e)
            )
        } else {
            "mode: distributions (no per-request join)".into()
        });
    }
    if let Some(l) = &e.littles_law {
        out.push(format!(
            "throughput {:.1} req/s × mean latency {:.3} ms = {:.2} in flight (Little's law); load generator concurrency {}",
            l.throughput_rps,
            l.mean_latency_ms,
            l.in_flight,
            l.concurrency.map_or("unknown".into(), |c| c.to_string())
        ));
    }
    for c in &e.cpu {
        out.push(format!(
            "cpu {}/{}: {:.2} cores mean",
            c.pod, c.container, c.mean_cores
        ));
    }
    out.extend(e.notes.iter().map(|n| format!("note: {n}")));
    out
}

fn dist_rows(e: &EnvReport) -> (Vec<String>, Vec<Vec<String>>) {
    let o = |v: Option<f64>| v.map_or("-".into(), f);
    let header = [
        "percentile",
        "end-to-end ms",
        "node span ms",
        "outside (e2e − node) ms",
    ]
    .map(String::from)
    .to_vec();
    let rows = e
        .distributions
        .iter()
        .map(|d| {
            vec![
                d.percentile.clone(),
                o(d.e2e_ms),
                o(d.node_ms),
                o(d.outside_ms),
            ]
        })
        .collect();
    (header, rows)
}

fn aligned(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 {
                let _ = write!(out, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{c}", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(header, &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

/// One line per environment: the join, p50 and p99 split into outside / queue / service,
/// throughput and Little's law.
pub fn overview(envs: &[EnvReport]) -> String {
    let header: Vec<String> = [
        "environment",
        "joined",
        "p50 ms",
        "outside",
        "queue",
        "service",
        "p99 ms",
        "outside",
        "queue",
        "service",
        "req/s",
        "in flight (λ·W)",
        "c",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = envs
        .iter()
        .map(|e| {
            let mut r = vec![e.label.clone()];
            r.push(if e.mode == "per-request" {
                format!("{:.1} %", e.join_rate * 100.0)
            } else {
                "distributions".into()
            });
            for p in ["p50", "p99"] {
                match e.percentiles.iter().find(|x| x.percentile == p) {
                    Some(x) => r.extend([
                        f(x.e2e_ms),
                        f(x.unaccounted_ms),
                        f(x.queue_ms),
                        f(x.service_ms),
                    ]),
                    None => {
                        let d = e.distributions.iter().find(|x| x.percentile == p);
                        let o = |v: Option<f64>| v.map_or("-".into(), f);
                        r.extend([
                            o(d.and_then(|d| d.e2e_ms)),
                            o(d.and_then(|d| d.outside_ms)),
                            "-".into(),
                            "-".into(),
                        ]);
                    }
                }
            }
            match &e.littles_law {
                Some(l) => r.extend([
                    format!("{:.1}", l.throughput_rps),
                    format!("{:.2}", l.in_flight),
                    l.concurrency.map_or("-".into(), |c| c.to_string()),
                ]),
                None => r.extend(["-".into(), "-".into(), "-".into()]),
            }
            r
        })
        .collect();
    aligned(&header, &rows)
}

pub fn terminal(envs: &[EnvReport]) -> String {
    let mut out = String::from(
        "=== hopprobe report: overview (outside = unaccounted, outside the node) ===\n",
    );
    out.push_str(&overview(envs));
    out.push('\n');
    if let Some((h, r)) = against_baseline(envs) {
        out.push_str(
            "=== hopprobe report: against the baseline (the first environment at the same \
             concurrency; × = environment / baseline) ===\n",
        );
        out.push_str(&aligned(&h, &r));
        out.push('\n');
    }
    for e in envs {
        let _ = writeln!(out, "=== hopprobe report: {} ===", e.label);
        for l in summary_lines(e) {
            let _ = writeln!(out, "{l}");
        }
        let (h, r) = if e.mode == "per-request" {
            rows(e)
        } else {
            dist_rows(e)
        };
        out.push_str(&aligned(&h, &r));
        out.push('\n');
    }
    out
}

fn md_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    out.push_str(&format!(
        "|{}\n",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    ));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

pub fn markdown(envs: &[EnvReport]) -> String {
    let mut out = String::from("# hopprobe report\n\n");
    {
        let text = overview(envs);
        let mut lines = text.lines().map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        });
        if let Some(h) = lines.next() {
            let rows: Vec<Vec<String>> = lines.collect();
            out.push_str(&md_table(&h, &rows));
            out.push('\n');
        }
    }
    if let Some((h, r)) = against_baseline(envs) {
        out.push_str(
            "Against the baseline (the first environment at the same concurrency; \
             × = environment / baseline):\n\n",
        );
        out.push_str(&md_table(&h, &r));
        out.push('\n');
    }
    for e in envs {
        let _ = writeln!(out, "## {}\n", e.label);
        for l in summary_lines(e) {
            let _ = writeln!(out, "- {l}");
        }
        out.push('\n');
        let (h, r) = if e.mode == "per-request" {
            rows(e)
        } else {
            dist_rows(e)
        };
        out.push_str(&md_table(&h, &r));
        out.push('\n');
    }
    out
}

/// Each environment's end-to-end percentiles, mean latency and throughput against its
/// baseline ([`super::compare`]), as ratios; `None` when no environment has one.
fn against_baseline(envs: &[EnvReport]) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let versus = super::compare::against_baselines(envs);
    if versus.is_empty() {
        return None;
    }
    let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    let mut header: Vec<String> = ["environment", "baseline", "c"].map(String::from).to_vec();
    header.extend(
        super::aggregate::PERCENTILES
            .iter()
            .map(|(p, _)| format!("{p} ×")),
    );
    header.extend(["mean ×", "req/s ×"].map(String::from));
    let rows = versus
        .iter()
        .map(|v| {
            let mut r = vec![
                v.label.clone(),
                v.baseline.clone(),
                v.concurrency.map_or("-".into(), |c| c.to_string()),
            ];
            r.extend(v.percentiles.iter().map(|p| x(p.ratio)));
            r.extend([x(v.mean_latency_ratio), x(v.throughput_ratio)]);
            r
        })
        .collect();
    Some((header, rows))
}
