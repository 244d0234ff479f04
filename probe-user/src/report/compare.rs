//! Each environment against its baseline: the end-to-end percentiles, mean latency and
//! throughput as ratios (environment / baseline). The baseline of an environment is the first
//! environment given before it that ran at the same load generator concurrency (`-c`, from the
//! records' header or the `--loadgen` file); environments whose concurrency is unknown are
//! compared with the first one whose concurrency is unknown too. So `--label baseline … --label
//! istio …` at one concurrency compares Istio with the baseline, and a report over several
//! concurrencies compares each mesh with the baseline at its own.

use serde::Serialize;

use super::aggregate::{EnvReport, PERCENTILES};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ratio {
    pub percentile: String,
    /// End-to-end at this percentile, this environment and its baseline.
    pub e2e_ms: Option<f64>,
    pub baseline_ms: Option<f64>,
    /// e2e_ms / baseline_ms.
    pub ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Versus {
    pub label: String,
    pub baseline: String,
    /// The concurrency both ran at, when known.
    pub concurrency: Option<u32>,
    pub percentiles: Vec<Ratio>,
    /// Mean latency and throughput (Little's law's W and λ), environment / baseline.
    pub mean_latency_ratio: Option<f64>,
    pub throughput_ratio: Option<f64>,
}

fn concurrency(e: &EnvReport) -> Option<u32> {
    e.littles_law.as_ref().and_then(|l| l.concurrency)
}

/// End-to-end ms at a percentile: the per-request decomposition's, else the distribution's.
fn e2e_ms(e: &EnvReport, percentile: &str) -> Option<f64> {
    e.percentiles
        .iter()
        .find(|p| p.percentile == percentile)
        .map(|p| p.e2e_ms)
        .or_else(|| {
            e.distributions
                .iter()
                .find(|d| d.percentile == percentile)
                .and_then(|d| d.e2e_ms)
        })
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// Every environment that has a baseline, against it, in the order given.
pub fn against_baselines(envs: &[EnvReport]) -> Vec<Versus> {
    envs.iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let c = concurrency(e);
            let base = envs[..i].iter().find(|b| concurrency(b) == c)?;
            let percentiles = PERCENTILES
                .iter()
                .map(|(name, _)| {
                    let (x, b) = (e2e_ms(e, name), e2e_ms(base, name));
                    Ratio {
                        percentile: (*name).into(),
                        e2e_ms: x,
                        baseline_ms: b,
                        ratio: ratio(x, b),
                    }
                })
                .collect();
            let (l, bl) = (e.littles_law.as_ref(), base.littles_law.as_ref());
            Some(Versus {
                label: e.label.clone(),
                baseline: base.label.clone(),
                concurrency: c,
                percentiles,
                mean_latency_ratio: ratio(
                    l.map(|l| l.mean_latency_ms),
                    bl.map(|l| l.mean_latency_ms),
                ),
                throughput_ratio: ratio(l.map(|l| l.throughput_rps), bl.map(|l| l.throughput_rps)),
            })
        })
        .collect()
}
