//! Latency series: histograms and their summaries, connection series, containers' CPU.

pub mod conn;
pub mod cpu;
pub mod latency;
