//! Command line: oha's flags (the ones its users use, same names and meanings) plus loadgen's
//! own (`--records`, `--warmup`, `--target`, `--open-model`, `--threads`).

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
    Csv,
    Quiet,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    version,
    about = "oha-compatible HTTP load generator that records per-request socket addresses and \
             CLOCK_MONOTONIC timestamps",
    arg_required_else_help = true
)]
pub struct Opts {
    /// Target URL (or use --target NAME=URL, repeatable).
    pub url: Option<String>,

    /// Number of requests to run (k = 1,000, m = 1,000,000 suffixes accepted).
    #[arg(short = 'n', default_value = "200", value_parser = parse_n_requests, conflicts_with = "duration")]
    pub n_requests: u64,

    /// Number of connections to run concurrently (per target).
    #[arg(short = 'c', default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,

    /// Duration to send requests, e.g. 10s, 3m. Requests still running at the end are aborted
    /// and counted as "aborted due to deadline" unless -w is given.
    #[arg(short = 'z', value_parser = parse_duration, conflicts_with = "n_requests")]
    pub duration: Option<Duration>,

    /// When the duration is reached, wait for ongoing requests.
    #[arg(
        short = 'w',
        long = "wait-ongoing-requests-after-deadline",
        requires = "duration"
    )]
    pub wait_ongoing: bool,

    /// Rate limit for all connections together, in requests per second.
    #[arg(short = 'q')]
    pub qps: Option<f64>,

    /// Measure latency from each request's scheduled start (needs -q).
    #[arg(long = "latency-correction")]
    pub latency_correction: bool,

    /// Open model (needs -q): every request starts at its scheduled time on an idle or new
    /// connection whether or not earlier ones finished; latency counts from the schedule.
    #[arg(long = "open-model", requires = "qps")]
    pub open_model: bool,

    /// Upper bound on requests in flight in the open model (beyond it a request is counted as
    /// the error "in-flight limit reached").
    #[arg(long = "max-in-flight", default_value_t = 10_000)]
    pub max_in_flight: u32,

    /// No progress bar.
    #[arg(long = "no-tui")]
    pub no_tui: bool,

    /// Accepted for oha compatibility; the progress bar has its own rate.
    #[arg(long = "fps", default_value_t = 16, hide = true)]
    pub fps: u32,

    /// HTTP method.
    #[arg(short = 'm', long = "method", default_value = "GET")]
    pub method: String,

    /// Custom HTTP header, e.g. -H "foo: bar" (repeatable).
    #[arg(short = 'H', value_parser = parse_header)]
    pub headers: Vec<(String, String)>,

    /// Timeout for each request (default 30s; oha's default is infinite, which can hang).
    #[arg(short = 't', value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Timeout for establishing a new connection (TCP and TLS).
    #[arg(long = "connect-timeout", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// HTTP Accept header.
    #[arg(short = 'A')]
    pub accept: Option<String>,

    /// HTTP request body.
    #[arg(short = 'd', conflicts_with = "body_path")]
    pub body_string: Option<String>,

    /// HTTP request body from file.
    #[arg(short = 'D')]
    pub body_path: Option<PathBuf>,

    /// Content-Type.
    #[arg(short = 'T')]
    pub content_type: Option<String>,

    /// Basic authentication, username:password.
    #[arg(short = 'a')]
    pub basic_auth: Option<String>,

    /// HTTP version: 1.1 or 2 (h2c prior knowledge on http://, ALPN h2 on https://).
    #[arg(long = "http-version")]
    pub http_version: Option<String>,

    /// Use HTTP/2 (same as --http-version 2).
    #[arg(long = "http2")]
    pub http2: bool,

    /// HTTP/2 only: requests in flight on each connection at once (c * p in total).
    #[arg(short = 'p', long = "http2-parallel", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub http2_parallel: Option<u32>,

    /// HTTP Host header.
    #[arg(long = "host")]
    pub host: Option<String>,

    /// Disable compression (no Accept-Encoding header).
    #[arg(long = "disable-compression")]
    pub disable_compression: bool,

    /// One connection per request. As oha does, each HTTP/1.1 request says
    /// `connection: close`, so the server closes and keeps TIME_WAIT.
    #[arg(long = "disable-keepalive")]
    pub disable_keepalive: bool,

    /// With --disable-keepalive: send no `connection: close` and close each connection from
    /// the client after its response (the client keeps TIME_WAIT, as with loadgen before
    /// 2026-12-04). Not in oha.
    #[arg(long = "client-close", requires = "disable_keepalive")]
    pub client_close: bool,

    /// Accepted for oha compatibility: loadgen resolves on each new connection through a cache.
    #[arg(long = "no-pre-lookup")]
    pub no_pre_lookup: bool,

    /// Lookup only IPv6.
    #[arg(long = "ipv6", conflicts_with = "ipv4")]
    pub ipv6: bool,

    /// Lookup only IPv4.
    #[arg(long = "ipv4")]
    pub ipv4: bool,

    /// (TLS) Also trust the certificates in this PEM file.
    #[arg(long = "cacert")]
    pub cacert: Option<PathBuf>,

    /// Accept invalid certificates.
    #[arg(long = "insecure")]
    pub insecure: bool,

    /// Accepted for oha compatibility (loadgen prints no colour).
    #[arg(long = "no-color", alias = "disable-color")]
    pub no_color: bool,

    /// Output file for the report (default stdout).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,

    /// Output format. csv streams one line per successful request.
    #[arg(long = "output-format", value_enum)]
    pub output_format: Option<OutputFormat>,

    /// Print results as JSON (older oha's flag; same as --output-format json).
    #[arg(short = 'j', long = "json")]
    pub json: bool,

    /// Stream one JSON line per request (socket addresses, CLOCK_MONOTONIC timestamps) here.
    #[arg(long = "records")]
    pub records: Option<PathBuf>,

    /// Requests sent first and left out of the results (they are in --records, marked warmup).
    #[arg(long = "warmup", default_value = "0", value_parser = parse_n_requests)]
    pub warmup: u64,

    /// Several targets at once with the same parameters: NAME=URL (repeatable).
    #[arg(long = "target", value_parser = parse_target)]
    pub targets: Vec<(String, String)>,

    /// Worker threads (default: half the CPUs with keep-alive when every target is on this
    /// machine, which leaves the server cores of its own; else all of them).
    #[arg(long = "threads", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
}

impl Opts {
    pub fn format(&self) -> OutputFormat {
        match self.output_format {
            Some(f) => f,
            None if self.json => OutputFormat::Json,
            None => OutputFormat::Text,
        }
    }
}

pub fn parse_n_requests(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = s.strip_suffix('k') {
        (n, 1_000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 1_000_000.0)
    } else {
        return s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    };
    let v: f64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a request count"));
    }
    Ok((v * mult) as u64)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: a header is NAME: VALUE"))?;
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let value = value.trim_start_matches(' ');
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("header {name:?}: value has a control character"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

pub fn parse_target(s: &str) -> Result<(String, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=URL"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: empty target name"));
    }
    Ok((name.to_owned(), url.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_oha_command_line_parses_unchanged() {
        let o = Opts::try_parse_from([
            "loadgen",
            "http://127.0.0.1:9080/productpage",
            "-c",
            "32",
            "-n",
            "300000",
            "--disable-keepalive",
            "--disable-compression",
            "--insecure",
            "--ipv4",
            "--no-tui",
        ])
        .unwrap();
        assert_eq!(o.connections, 32);
        assert_eq!(o.n_requests, 300_000);
        assert!(o.disable_keepalive && o.disable_compression && o.insecure && o.ipv4);
        assert!(o.no_tui);
        assert_eq!(o.format(), OutputFormat::Text);
    }

    #[test]
    fn oha_flags_parse() {
        let o = Opts::try_parse_from([
            "loadgen",
            "https://localhost/x",
            "-z",
            "10s",
            "-q",
            "100",
            "--latency-correction",
            "-m",
            "POST",
            "-H",
            "foo: bar",
            "-H",
            "x-a:b",
            "-d",
            "body",
            "-T",
            "text/plain",
            "-t",
            "2s",
            "--connect-timeout",
            "1s",
            "--http-version",
            "1.1",
            "--ipv6",
            "-o",
            "/tmp/x",
            "-j",
        ])
        .unwrap();
        assert_eq!(o.duration, Some(Duration::from_secs(10)));
        assert_eq!(o.qps, Some(100.0));
        assert_eq!(
            o.headers,
            vec![
                ("foo".to_owned(), "bar".to_owned()),
                ("x-a".to_owned(), "b".to_owned())
            ]
        );
        assert_eq!(o.format(), OutputFormat::Json);
        assert_eq!(o.timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn bad_flags_are_rejected() {
        for args in [
            &["loadgen", "http://x", "-n", "ten"][..],
            &["loadgen", "http://x", "-c", "0"],
            &["loadgen", "http://x", "-n", "5", "-z", "1s"],
            &["loadgen", "http://x", "-H", "no-colon"],
            &["loadgen", "http://x", "--ipv4", "--ipv6"],
            &["loadgen", "http://x", "-z", "0s"],
            &["loadgen", "http://x", "--output-format", "xml"],
            &["loadgen", "--target", "noequals"],
        ] {
            assert!(Opts::try_parse_from(args).is_err(), "{args:?} parsed");
        }
    }

    #[test]
    fn request_counts_take_suffixes() {
        assert_eq!(parse_n_requests("10k"), Ok(10_000));
        assert_eq!(parse_n_requests("1.5m"), Ok(1_500_000));
        assert_eq!(parse_n_requests("42"), Ok(42));
        assert!(parse_n_requests("-1k").is_err());
    }
}
