//! loadgen's records (`loadgen --records FILE`, read by `hopprobe report --requests`): JSON
//! Lines, a [`Header`] first, then one [`Request`] per request sent (warm-up included), in the
//! order they ended. Times are the load generator's CLOCK_MONOTONIC in nanoseconds.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ReadError;

/// `record` of the header line; request lines have no `record`.
pub const HEADER: &str = "header";
/// The header's `version`.
pub const VERSION: u32 = 1;
/// The header's `clock`: what every `*_ns` of the file counts.
pub const CLOCK: &str = "CLOCK_MONOTONIC";

/// First line: ties CLOCK_MONOTONIC to wall-clock time once per run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct Header<S = String> {
    /// Always [`HEADER`].
    pub record: S,
    pub version: u32,
    pub clock: S,
    /// CLOCK_MONOTONIC and CLOCK_REALTIME read together at the start.
    pub monotonic_ns: u64,
    pub realtime_unix_ns: u64,
    pub targets: Vec<HeaderTarget<S>>,
    /// loadgen's command line.
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct HeaderTarget<S = String> {
    pub name: S,
    pub url: S,
}

impl Header {
    /// `-c N` / `--concurrency N` of the command line.
    pub fn concurrency(&self) -> Option<u32> {
        let args = &self.args;
        args.iter().enumerate().find_map(|(i, a)| {
            if a == "-c" || a == "--concurrency" {
                args.get(i + 1)?.parse().ok()
            } else {
                a.strip_prefix("-c")
                    .or_else(|| a.strip_prefix("--concurrency="))
                    .and_then(|n| n.parse().ok())
            }
        })
    }
}

/// What one request did. loadgen writes every field; a reader takes a missing one other than
/// the request's start and end as absent (records of older loadgen versions, hand-made ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct Request<S = String> {
    /// The target's name (`default` with a single URL).
    #[serde(default)]
    pub target: S,
    #[serde(default)]
    pub seq: u64,
    /// Sent before measuring began (`--warmup`): not in the report.
    #[serde(default)]
    pub warmup: bool,
    /// The connection's number in this run.
    #[serde(default)]
    pub conn: u64,
    /// The request used a connection an earlier request opened.
    #[serde(default)]
    pub reused: bool,
    /// The client socket's address: the 4-tuple hopprobe sees at the node's uplink.
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// Open model: when the request was due.
    pub scheduled_ns: Option<u64>,
    pub start_ns: u64,
    /// This request's own connection set-up (none when `reused`).
    pub dns_ns: Option<u64>,
    pub connect_start_ns: Option<u64>,
    pub connect_end_ns: Option<u64>,
    pub tls_end_ns: Option<u64>,
    pub tls_resumed: Option<bool>,
    /// The request's last byte handed to the kernel.
    pub written_ns: Option<u64>,
    pub first_byte_ns: Option<u64>,
    pub end_ns: u64,
    pub status: Option<u16>,
    /// Body bytes received.
    #[serde(default)]
    pub bytes: u64,
    /// Why the request failed, as loadgen's report names it.
    pub error: Option<S>,
}

impl<S> Request<S> {
    /// The request got a response.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.status.is_some()
    }
}

/// One line of the records file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Line<S = String> {
    Header(Header<S>),
    Request(Request<S>),
}

impl<'de> Deserialize<'de> for Line {
    /// By `record`: [`HEADER`] or none. ([`parse_line`] takes a shortcut for request lines.)
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        match v.get("record") {
            None => Request::deserialize(v).map(Line::Request),
            Some(k) if k == HEADER => Header::deserialize(v).map(Line::Header),
            Some(k) => return Err(D::Error::custom(format!("unknown record kind {k}"))),
        }
        .map_err(D::Error::custom)
    }
}

/// One line. A request line (every line but the first) has no `record` key and parses
/// straight into [`Request`]; records files run to millions of lines.
pub fn parse_line(line: &str) -> Result<Line, serde_json::Error> {
    if line.contains(r#""record""#) {
        serde_json::from_str(line)
    } else {
        serde_json::from_str(line).map(Line::Request)
    }
}

/// A records file: its header (the last one, if several) and its requests in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    pub header: Option<Header>,
    pub requests: Vec<Request>,
}

/// Reads a records file's text. Blank lines are skipped.
pub fn read(text: &str) -> Result<Records, ReadError> {
    let mut out = Records::default();
    for (n, line) in crate::lines(text) {
        match parse_line(line).map_err(|e| ReadError::line(n, "a loadgen record", e))? {
            Line::Header(h) => out.header = Some(h),
            Line::Request(r) => out.requests.push(r),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_read_from_loadgen_args() {
        let c = |args: &[&str]| {
            Header {
                args: args.iter().map(|a| a.to_string()).collect(),
                ..Header::default()
            }
            .concurrency()
        };
        assert_eq!(c(&["loadgen", "http://x", "-c", "32", "-n", "5"]), Some(32));
        assert_eq!(c(&["loadgen", "-c64"]), Some(64));
        assert_eq!(c(&["loadgen", "--concurrency", "8"]), Some(8));
        assert_eq!(c(&["loadgen", "--concurrency=16"]), Some(16));
        assert_eq!(c(&["loadgen", "-c"]), None);
        assert_eq!(c(&["x"]), None);
    }
}
