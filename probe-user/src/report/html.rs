//! The report as one self-contained HTML file: inline CSS and SVG, no script, no font or
//! anything else fetched from the network.

use std::fmt::Write;

use super::aggregate::EnvReport;

const PALETTE: [&str; 12] = [
    "#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#bcbd22", "#393b79", "#637939",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Distinct colours for any number of groups: grey for the first (unaccounted), then hues a
/// golden angle apart, alternating lightness.
fn group_color(i: usize) -> String {
    if i == 0 {
        return "#9e9e9e".into();
    }
    let hue = (i as f64 * 137.508) % 360.0;
    let light = if i.is_multiple_of(2) { 38 } else { 55 };
    format!("hsl({hue:.0},65%,{light}%)")
}

/// The group a hop is drawn in: queue, processing and sidecar per pod; the node's plumbing
/// (datapath, pod delivery and send, loopback) together.
pub fn group(hop: &str) -> String {
    let (pod, what) = hop.rsplit_once(' ').unwrap_or(("", hop));
    match what {
        "datapath_in" | "datapath_out" | "pod_delivery" | "pod_send" | "app_send" => {
            "node datapath and pod plumbing".into()
        }
        "loopback" => "node datapath and pod plumbing".into(),
        "app_queue" | "sidecar_queue" => format!("{pod} queue"),
        "sidecar_in" | "sidecar_out" => format!("{pod} sidecar"),
        "app_processing" => format!("{pod} processing"),
        _ => hop.into(),
    }
}

/// (group, ms) for one percentile row, groups in first-seen order, unaccounted first.
fn grouped(e: &EnvReport, row: usize) -> Vec<(String, f64)> {
    let p = &e.percentiles[row];
    let mut out: Vec<(String, f64)> =
        vec![("unaccounted (outside the node)".into(), p.unaccounted_ms)];
    for (h, v) in e.hops.iter().zip(&p.hops_ms) {
        let g = group(h);
        match out.iter_mut().find(|(n, _)| *n == g) {
            Some((_, x)) => *x += v,
            None => out.push((g, *v)),
        }
    }
    out
}

fn bars(envs: &[EnvReport]) -> String {
    let mut groups: Vec<String> = Vec::new();
    let mut rows: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for e in envs {
        for (i, p) in e.percentiles.iter().enumerate() {
            let g = grouped(e, i);
            for (n, _) in &g {
                if !groups.contains(n) {
                    groups.push(n.clone());
                }
            }
            rows.push((format!("{} {}", e.label, p.percentile), g));
        }
    }
    if rows.is_empty() {
        return "<p>No per-request decomposition (see the distributions table).</p>".into();
    }
    let max = rows
        .iter()
        .map(|(_, g)| g.iter().map(|x| x.1).sum::<f64>())
        .fold(0.0, f64::max)
        .max(1e-9);
    let (label_w, bar_w, row_h) = (190.0, 720.0, 24.0);
    let legend_rows = groups.len().div_ceil(3);
    let height = rows.len() as f64 * row_h + 40.0 + legend_rows as f64 * 18.0;
    let mut s = format!(
        r#"<svg class="bars" width="{}" height="{height}" role="img" aria-label="per-hop decomposition per percentile">"#,
        label_w + bar_w + 80.0
    );
    let color = |g: &str| group_color(groups.iter().position(|x| x == g).unwrap_or(0));
    for (r, (label, g)) in rows.iter().enumerate() {
        let y = r as f64 * row_h + 4.0;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end" class="lbl">{}</text>"#,
            label_w - 6.0,
            y + 14.0,
            esc(label)
        );
        let mut x = label_w;
        for (name, v) in g {
            let w = v / max * bar_w;
            if w > 0.0 {
                let _ = write!(
                    s,
                    r#"<rect class="seg" x="{x:.2}" y="{y}" width="{w:.2}" height="{}" fill="{}"><title>{}: {v:.3} ms</title></rect>"#,
                    row_h - 6.0,
                    color(name),
                    esc(name)
                );
            }
            x += w;
        }
        let total: f64 = g.iter().map(|x| x.1).sum();
        let _ = write!(
            s,
            r#"<text x="{:.2}" y="{}" class="val">{total:.2} ms</text>"#,
            x + 4.0,
            y + 14.0
        );
    }
    let ly = rows.len() as f64 * row_h + 16.0;
    for (i, g) in groups.iter().enumerate() {
        let (col, line) = (i % 3, i / 3);
        let (x, y) = (10.0 + col as f64 * 320.0, ly + line as f64 * 18.0);
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{}"/><text x="{}" y="{}" class="lbl">{}</text>"#,
            color(g),
            x + 16.0,
            y + 11.0,
            esc(g)
        );
    }
    s.push_str("</svg>");
    s
}

/// A line chart: one polyline per series of (x, y) points.
fn lines(
    class: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 300.0, 60.0, 40.0, 10.0, 180.0);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let xmax = pts.clone().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let ymax = pts.map(|p| p.1).fold(0.0, f64::max).max(1e-9);
    let sx = |x: f64| left + x / xmax * (w - left - right);
    let sy = |y: f64| top + (1.0 - y / ymax) * (h - top - bottom);
    let mut s = format!(
        r#"<svg class="{class}" width="{w}" height="{h}" role="img" aria-label="{}">"#,
        esc(title)
    );
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="#333"/>"##,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for i in 0..=4 {
        let (xv, yv) = (xmax * i as f64 / 4.0, ymax * i as f64 / 4.0);
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" class="tick">{xv:.3}</text><text x="{}" y="{:.1}" text-anchor="end" class="tick">{yv:.2}</text>"#,
            sx(xv),
            h - bottom + 14.0,
            left - 4.0,
            sy(yv) + 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" class="lbl">{}</text><text x="12" y="{}" class="lbl" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>"#,
        left + (w - left - right) / 2.0,
        h - 6.0,
        esc(x_label),
        top + (h - top - bottom) / 2.0,
        top + (h - top - bottom) / 2.0,
        esc(y_label)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let color = PALETTE[(i + 1) % PALETTE.len()];
        let path: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.2},{:.2}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline class="series" fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            path.join(" "),
            esc(name)
        );
        let ly = top + 14.0 * i as f64 + 8.0;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="4" fill="{color}"/><text x="{}" y="{}" class="lbl">{}</text>"#,
            w - right + 10.0,
            ly,
            w - right + 26.0,
            ly + 5.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            if i == 0 {
                let _ = write!(s, "<th>{}</th>", esc(c));
            } else {
                let _ = write!(s, "<td>{}</td>", esc(c));
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

fn f(v: f64) -> String {
    format!("{v:.3}")
}

fn env_section(e: &EnvReport) -> String {
    let mut s = format!(r#"<section class="env"><h2>{}</h2><ul>"#, esc(&e.label));
    if e.mode == "per-request" {
        let _ = write!(
            s,
            "<li>requests {}, joined {} (<b>{:.2} %</b>), followed into a pod {}, clamped {}, estimated clock offset {}</li>",
            e.requests,
            e.joined,
            e.join_rate * 100.0,
            e.reached_pod,
            e.clamped,
            esc(&super::text::clock_offset(e))
        );
    } else {
        s.push_str("<li><b>distributions only</b>: no per-request join");
        if e.clock_offset_requests > 0 {
            let _ = write!(s, "; clock offset {}", esc(&super::text::clock_offset(e)));
        }
        s.push_str("</li>");
    }
    if let Some(l) = &e.littles_law {
        let _ = write!(
            s,
            "<li>Little's law: {:.1} req/s × {:.3} ms mean = {:.2} in flight; load generator concurrency {}</li>",
            l.throughput_rps,
            l.mean_latency_ms,
            l.in_flight,
            l.concurrency.map_or("unknown".into(), |c| c.to_string())
        );
    }
    for n in &e.notes {
        let _ = write!(s, "<li>note: {}</li>", esc(n));
    }
    s.push_str("</ul>");
    if e.mode == "per-request" {
        let mut header = vec!["hop (ms)".to_string()];
        header.extend(e.percentiles.iter().map(|p| p.percentile.clone()));
        let mut rows = vec![];
        let col = |g: &dyn Fn(&super::aggregate::PercentileRow) -> String| -> Vec<String> {
            e.percentiles.iter().map(g).collect()
        };
        let mut push = |n: &str, v: Vec<String>| {
            let mut r = vec![n.to_string()];
            r.extend(v);
            rows.push(r);
        };
        push("end-to-end", col(&|p| f(p.e2e_ms)));
        push(
            "unaccounted (outside the node)",
            col(&|p| f(p.unaccounted_ms)),
        );
        for (i, h) in e.hops.iter().enumerate() {
            push(h, col(&|p| f(p.hops_ms[i])));
        }
        push("Σ queue wait", col(&|p| f(p.queue_ms)));
        push("Σ service in node", col(&|p| f(p.service_ms)));
        s.push_str(&table(&header, &rows));
    } else {
        let o = |v: Option<f64>| v.map_or("-".into(), f);
        let header =
            ["percentile", "end-to-end ms", "node span ms", "outside ms"].map(String::from);
        let rows: Vec<Vec<String>> = e
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
        s.push_str(&table(&header, &rows));
    }
    if !e.cpu.is_empty() {
        let series: Vec<(String, Vec<(f64, f64)>)> = e
            .cpu
            .iter()
            .map(|c| {
                (
                    format!("{}/{} ({:.2})", c.pod, c.container, c.mean_cores),
                    c.series.clone(),
                )
            })
            .collect();
        let _ = write!(
            s,
            "<h3>CPU per container during the run</h3>{}",
            lines("cpu", "CPU per container", "seconds", "cores", &series)
        );
    }
    s.push_str("</section>");
    s
}

pub fn render(envs: &[EnvReport]) -> String {
    let mut s = String::from(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hopprobe report</title>
<style>
body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}
td{text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#f0f0f0}
tbody th{text-align:left;font-weight:normal}
.lbl{font-size:12px}.val{font-size:11px;fill:#444}.tick{font-size:10px;fill:#555}
section.env{border-top:2px solid #ddd;margin-top:24px}
</style></head><body>
<h1>hopprobe report</h1>
<p>Where each request's end-to-end time went: the load generator's requests joined with
hopprobe's records at the node. Bars: the mean of the requests ranked around each percentile,
split into the time outside the node (unaccounted) and the hops inside it.</p>
<h2>Per-hop decomposition per percentile</h2>
"#,
    );
    s.push_str(&bars(envs));
    let cdfs: Vec<(String, Vec<(f64, f64)>)> = envs
        .iter()
        .filter(|e| !e.cdf.is_empty())
        .map(|e| (e.label.clone(), e.cdf.clone()))
        .collect();
    if !cdfs.is_empty() {
        let _ = write!(
            s,
            "<h2>End-to-end latency CDF</h2>{}",
            lines(
                "cdf",
                "latency CDF",
                "latency (ms)",
                "fraction of requests",
                &cdfs
            )
        );
    }
    for e in envs {
        s.push_str(&env_section(e));
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_are_grouped_for_the_bars() {
        assert_eq!(group("productpage-v1 app_queue"), "productpage-v1 queue");
        assert_eq!(group("details-v1 sidecar_out"), "details-v1 sidecar");
        assert_eq!(
            group("details-v1 datapath_in"),
            "node datapath and pod plumbing"
        );
        assert_eq!(esc("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
