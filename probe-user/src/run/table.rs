//! Plain-text tables for the terminal.

use crate::{
    hops::HopSummary,
    series::conn::{Direction, Metric, SeriesSummary},
};

/// Renders rows under a header with each column as wide as its widest cell; a column whose
/// cells are all numbers is right-aligned, header included.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    let mut numeric = vec![!rows.is_empty(); header.len()];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(header.len()) {
            widths[i] = widths[i].max(cell.chars().count());
            numeric[i] &= cell.parse::<f64>().is_ok();
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(widths.iter().zip(&numeric))
            .map(|(cell, (&w, &num))| {
                if num {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        parts.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Who a row is about: `pod/container` where names are known, else the cgroup's last path
/// component (a systemd unit, a container id); the whole path stays in the JSON.
fn who(
    pod: &Option<String>,
    container: &Option<String>,
    cgroup: &Option<String>,
    cgroup_id: u64,
) -> String {
    match (pod, container, cgroup, cgroup_id) {
        (Some(p), Some(c), _, _) => format!("{p}/{c}"),
        (Some(p), None, _, _) => p.clone(),
        (_, _, Some(c), _) => match c.trim_end_matches('/').rsplit_once('/') {
            Some((_, last)) if !last.is_empty() => last.to_owned(),
            _ => c.clone(),
        },
        (_, _, None, 0) => "*".to_owned(),
        (_, _, None, id) => format!("id:{id}"),
    }
}

fn port(p: Option<u16>) -> String {
    p.map_or_else(|| "*".to_owned(), |p| p.to_string())
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

/// The connection series as a table, handshakes first, times in milliseconds.
pub fn series(summaries: &[SeriesSummary]) -> String {
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                match s.metric {
                    Metric::Handshake => "handshake",
                    Metric::Lifetime => "lifetime",
                    Metric::FailedConnect => "failed-connect",
                    Metric::Srtt => "srtt",
                }
                .to_owned(),
                match s.direction {
                    Direction::Active => "active",
                    Direction::Passive => "passive",
                    Direction::Unknown => "?",
                }
                .to_owned(),
                who(&s.pod, &s.container, &s.cgroup, s.cgroup_id),
                port(s.local_port),
                port(s.remote_port),
                s.latency.count.to_string(),
                ms(s.latency.min_us),
                ms(s.latency.p50_us),
                ms(s.latency.p90_us),
                ms(s.latency.p99_us),
                ms(s.latency.max_us),
            ]
        })
        .collect();
    render(
        &[
            "series",
            "side",
            "pod/container",
            "lport",
            "rport",
            "count",
            "min_ms",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
        ],
        &rows,
    )
}

/// The hops in the order a request passes them, times in milliseconds.
pub fn hops(summaries: &[HopSummary]) -> String {
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                match s.direction {
                    Some(d) => format!("{} {}", s.hop.name(), d.name()),
                    None => s.hop.name().to_owned(),
                },
                s.interface.clone().unwrap_or_else(|| "*".to_owned()),
                who(&s.pod, &s.container, &s.cgroup, s.cgroup_id),
                s.local_port
                    .map_or_else(|| "*".to_owned(), |p| p.to_string()),
                // A Service (from the Kubernetes API) says more than its ClusterIP; the
                // address stays in JSON.
                match (&s.peer_service, &s.peer_pod, &s.peer) {
                    (Some(svc), _, Some(p)) => format!("svc:{svc} ({p})"),
                    (None, Some(pod), Some(p)) => format!("pod:{pod} ({p})"),
                    (_, _, p) => p.clone().unwrap_or_else(|| "*".to_owned()),
                },
                s.latency.count.to_string(),
                ms(s.latency.p50_us),
                ms(s.latency.p90_us),
                ms(s.latency.p99_us),
                ms(s.latency.max_us),
            ]
        })
        .collect();
    render(
        &[
            "hop",
            "iface",
            "pod/container",
            "lport",
            "peer",
            "count",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_and_right_aligns_numbers() {
        let out = render(
            &["name", "n"],
            &[
                vec!["a".into(), "5".into()],
                vec!["long".into(), "123".into()],
            ],
        );
        assert_eq!(out, "name    n\na       5\nlong  123\n");
    }

    #[test]
    fn rows_name_pods_and_containers_not_cgroup_paths() {
        let path = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod82c0a928_1df8_41d3_8c76_d2323d47e853.slice/cri-containerd-ac39119b.scope";
        let named = who(
            &Some("reviews-v1".into()),
            &Some("istio-proxy".into()),
            &Some(path.into()),
            7,
        );
        assert_eq!(named, "reviews-v1/istio-proxy");
        let unnamed = who(&None, &None, &Some(path.into()), 7);
        assert_eq!(unnamed, "cri-containerd-ac39119b.scope");
        assert_eq!(who(&None, &None, &Some("/".into()), 1), "/");
        assert_eq!(who(&None, &None, &None, 0), "*");
        assert_eq!(who(&None, &None, &None, 9), "id:9");
    }
}
