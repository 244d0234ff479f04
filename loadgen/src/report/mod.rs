//! The end-of-run report in oha's layouts.

pub mod json;
pub mod text;

use crate::stats::Stats;

/// One target's results, ready to print.
pub struct TargetReport<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub stats: &'a Stats,
    /// Seconds from the first measured request to the end of the run.
    pub total_secs: f64,
}

impl TargetReport<'_> {
    pub fn requests_per_sec(&self) -> f64 {
        self.stats.requests as f64 / self.total_secs
    }

    pub fn size_per_sec(&self) -> f64 {
        self.stats.body_bytes as f64 / self.total_secs
    }
}

/// The percentiles oha prints.
pub const PERCENTILES: [f64; 9] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99];
