//! The validated run configuration: everything that can be wrong with the command line is
//! found here, before any request is sent (exit code 2).

use std::{path::PathBuf, sync::Arc, time::Duration};

use base64::Engine;

use crate::{
    cli::{Opts, OutputFormat},
    conn::Family,
    http2::H2Request,
};

/// Used when `-t` is absent: bounded, so that a server that never answers cannot hang a run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no target: give a URL or --target NAME=URL")]
    NoTarget,
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("HTTP version {0:?} is not supported (1.1 or 2)")]
    HttpVersion(String),
    #[error("-p/--http2-parallel needs --http-version 2")]
    ParallelNeedsHttp2,
    #[error("request not valid for HTTP/2: {0}")]
    Http2Request(String),
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("-q must be a positive number of requests per second")]
    Rate,
    #[error("reading the body file {path}: {source}")]
    BodyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading --cacert {path}: {reason}")]
    CaCert { path: PathBuf, reason: String },
    #[error("duplicate target name {0:?}")]
    DuplicateTarget(String),
}

#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The full request, written as is for every request.
    pub request: Arc<[u8]>,
    /// HEAD responses carry no body whatever their headers say.
    pub head: bool,
    /// The same request for HTTP/2 (with `--http-version 2`).
    pub h2: Option<H2Request>,
}

#[derive(Debug)]
pub struct Config {
    pub targets: Vec<Target>,
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub wait_ongoing: bool,
    pub connections: u32,
    pub qps: Option<f64>,
    pub latency_correction: bool,
    pub open_model: bool,
    pub max_in_flight: u32,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub keepalive: bool,
    pub http2: bool,
    /// HTTP/2 streams in flight per connection.
    pub parallel: u32,
    pub insecure: bool,
    pub family: Family,
    pub cacert: Option<Vec<u8>>,
    pub warmup: u64,
    pub threads: usize,
    pub records: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub format: OutputFormat,
    pub progress: bool,
}

impl Config {
    pub fn from_opts(o: &Opts) -> Result<Config, ConfigError> {
        let version = if o.http2 {
            Some("2")
        } else {
            o.http_version.as_deref()
        };
        let http2 = match version {
            None | Some("1.1" | "1") => false,
            Some("2" | "2.0") => true,
            Some(v) => return Err(ConfigError::HttpVersion(v.to_owned())),
        };
        if o.http2_parallel.is_some() && !http2 {
            return Err(ConfigError::ParallelNeedsHttp2);
        }
        let method = o.method.to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
            return Err(ConfigError::Method(o.method.clone()));
        }
        if let Some(q) = o.qps
            && !(q.is_finite() && q > 0.0)
        {
            return Err(ConfigError::Rate);
        }
        let body: Vec<u8> = match (&o.body_string, &o.body_path) {
            (Some(s), _) => s.clone().into_bytes(),
            (None, Some(p)) => std::fs::read(p).map_err(|source| ConfigError::BodyFile {
                path: p.clone(),
                source,
            })?,
            (None, None) => Vec::new(),
        };
        let cacert = match &o.cacert {
            Some(p) => Some(std::fs::read(p).map_err(|e| ConfigError::CaCert {
                path: p.clone(),
                reason: e.to_string(),
            })?),
            None => None,
        };

        let mut named: Vec<(String, String)> = Vec::new();
        if let Some(u) = &o.url {
            named.push(("default".to_owned(), u.clone()));
        }
        named.extend(o.targets.iter().cloned());
        if named.is_empty() {
            return Err(ConfigError::NoTarget);
        }
        let mut targets = Vec::new();
        for (name, url) in named {
            if targets.iter().any(|t: &Target| t.name == name) {
                return Err(ConfigError::DuplicateTarget(name));
            }
            targets.push(build_target(o, name, &url, &method, &body, http2)?);
        }

        let threads = o.threads.map_or_else(
            || {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                let here = targets.iter().all(|t| on_this_host(&t.host));
                default_threads(cpus, here && !o.disable_keepalive)
            },
            |t| t as usize,
        );
        let format = o.format();
        let progress = !o.no_tui && std::io::IsTerminal::is_terminal(&std::io::stderr());
        Ok(Config {
            targets,
            requests: if o.duration.is_some() {
                None
            } else {
                Some(o.n_requests)
            },
            duration: o.duration,
            wait_ongoing: o.wait_ongoing,
            connections: o.connections,
            qps: o.qps,
            latency_correction: o.latency_correction || o.open_model,
            open_model: o.open_model,
            max_in_flight: o.max_in_flight.max(1),
            timeout: o.timeout.unwrap_or(DEFAULT_TIMEOUT),
            connect_timeout: o.connect_timeout,
            keepalive: !o.disable_keepalive,
            http2,
            parallel: o.http2_parallel.unwrap_or(1),
            insecure: o.insecure,
            family: if o.ipv4 {
                Family::V4
            } else if o.ipv6 {
                Family::V6
            } else {
                Family::Any
            },
            cacert,
            warmup: o.warmup,
            threads,
            records: o.records.clone(),
            output: o.output.clone(),
            format,
            progress,
        })
    }
}

fn build_target(
    o: &Opts,
    name: String,
    raw: &str,
    method: &str,
    body: &[u8],
    http2: bool,
) -> Result<Target, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidUrl {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(invalid(&format!("scheme {other:?} is not http or https"))),
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(invalid("no host")),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| invalid("no port"))?;
    let host_header = match (&o.host, url.port()) {
        (Some(h), _) => h.clone(),
        (None, Some(p)) => format!("{}:{p}", url.host_str().unwrap_or(&host)),
        (None, None) => url.host_str().unwrap_or(&host).to_owned(),
    };
    let mut path = url.path().to_owned();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }

    let headers = request_headers(o, method, body, http2, host_header);
    let h2 = if http2 {
        let authority = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map_or_else(|| host.clone(), |(_, v)| v.clone());
        Some(
            H2Request::new(method, url.scheme(), &authority, &path, &headers, body)
                .map_err(ConfigError::Http2Request)?,
        )
    } else {
        None
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (n, v) in &headers {
        req.push_str(n);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    Ok(Target {
        name,
        url: raw.to_owned(),
        tls,
        host,
        port,
        request: bytes.into(),
        head: method == "HEAD",
        h2,
    })
}

/// Worker threads when `--threads` is not given. `leave_cores`: the server runs on this
/// machine and requests are cheap for the client (keep-alive), so the server, not the client,
/// needs the cores: with a thread per CPU the two take turns on every core, and a client
/// thread that is not running delays the responses it should be reading. Then half the CPUs
/// (at least one); else all of them. Without keep-alive the client's kernel work per request
/// (connect, close, and TLS) is as large as the server's, and one thread was the limit. On the
/// 2-core development VM against a loopback nginx (2026-12-04, `cargo xtask bench-loadgen`):
/// keep-alive 127-134 k req/s with one thread, 106-125 k with two; one connection per request
/// 20-22 k with one (its thread at 98 % of a core), 25-27 k with two.
pub fn default_threads(cpus: usize, leave_cores: bool) -> usize {
    if leave_cores { cpus.div_ceil(2) } else { cpus }.max(1)
}

/// Whether `host` (a URL's host: an IP literal or a name) is this machine: a loopback
/// address, `localhost`, or an address of one of this network namespace's interfaces.
pub fn on_this_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    let Ok(ip) = host.parse::<std::net::IpAddr>() else {
        return false;
    };
    ip.is_loopback() || ip.is_unspecified() || local_addresses().contains(&ip)
}

fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below; each entry's address is read
    // only as the family it says it is.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut at = list;
        while let Some(ifa) = at.as_ref() {
            if let Some(sa) = ifa.ifa_addr.as_ref() {
                match i32::from(sa.sa_family) {
                    libc::AF_INET => {
                        let a = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                        out.push(std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into());
                    }
                    libc::AF_INET6 => {
                        let a = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                        out.push(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into());
                    }
                    _ => {}
                }
            }
            at = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

/// A header list that keeps its order of first insertion, as `http::HeaderMap` does: setting
/// a name already present replaces its value in place.
#[derive(Default)]
struct Headers(Vec<(String, String)>);

impl Headers {
    fn insert(&mut self, name: &str, value: String) {
        let name = name.to_ascii_lowercase();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(h) => h.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
}

/// The request's headers, in the order oha 1.16 sends them (checked on the wire by
/// `tests/wire.rs` against captures of oha): its defaults, `--host`, `-a`,
/// `connection: close` without keep-alive, then `-H` (replacing a default of the same name
/// where it stands), then `host` unless given, then `content-length` as hyper adds it.
fn request_headers(
    o: &Opts,
    method: &str,
    body: &[u8],
    http2: bool,
    host_header: String,
) -> Vec<(String, String)> {
    let mut h = Headers::default();
    h.insert("accept", "*/*".into());
    if !o.disable_compression {
        h.insert("accept-encoding", "gzip, compress, deflate, br".into());
    }
    h.insert(
        "user-agent",
        concat!("loadgen/", env!("CARGO_PKG_VERSION")).into(),
    );
    if let Some(a) = &o.accept {
        h.insert("accept", a.clone());
    }
    if let Some(ct) = &o.content_type {
        h.insert("content-type", ct.clone());
    }
    if let Some(host) = &o.host {
        h.insert("host", host.clone());
    }
    if let Some(auth) = &o.basic_auth {
        let b64 = base64::engine::general_purpose::STANDARD.encode(auth);
        h.insert("authorization", format!("Basic {b64}"));
    }
    if o.disable_keepalive && !o.client_close && !http2 {
        h.insert("connection", "close".into());
    }
    for (n, v) in &o.headers {
        h.insert(n, v.clone());
    }
    if !h.has("host") {
        h.insert("host", host_header);
    }
    // hyper leaves content-length out of a GET, HEAD or CONNECT with no body.
    if !h.has("content-length")
        && (!body.is_empty() || !matches!(method, "GET" | "HEAD" | "CONNECT"))
    {
        h.insert("content-length", body.len().to_string());
    }
    h.0
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["loadgen"];
        full.extend_from_slice(args);
        Config::from_opts(&Opts::try_parse_from(full).unwrap())
    }

    #[test]
    fn threads_leave_cores_to_a_server_on_this_machine_with_keepalive() {
        assert_eq!(default_threads(2, true), 1);
        assert_eq!(default_threads(2, false), 2);
        assert_eq!(default_threads(1, true), 1);
        assert_eq!(default_threads(8, true), 4);
        assert_eq!(default_threads(3, true), 2);
        for here in [
            "127.0.0.1",
            "127.0.0.9",
            "::1",
            "[::1]",
            "localhost",
            "0.0.0.0",
        ] {
            assert!(on_this_host(here), "{here}");
        }
        for mine in local_addresses() {
            assert!(
                on_this_host(&mine.to_string()),
                "{mine}: an interface's own address"
            );
        }
        for away in ["192.0.2.1", "2001:db8::1", "example.test"] {
            assert!(!on_this_host(away), "{away}");
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            config(&["http://127.0.0.1:1/"]).unwrap().threads,
            cpus.div_ceil(2)
        );
        assert_eq!(config(&["http://192.0.2.1:1/"]).unwrap().threads, cpus);
        assert_eq!(
            config(&["http://127.0.0.1:1/", "--threads", "3"])
                .unwrap()
                .threads,
            3
        );
    }

    #[test]
    fn request_bytes_follow_the_flags() {
        let c = config(&[
            "http://example.test:8080/a?b=1",
            "-m",
            "post",
            "-d",
            "hi",
            "-H",
            "user-agent: me",
            "--disable-compression",
        ])
        .unwrap();
        let req = String::from_utf8(c.targets[0].request.to_vec()).unwrap();
        // A user header replaces the default where it stands, as in oha's HeaderMap.
        assert_eq!(
            req,
            "POST /a?b=1 HTTP/1.1\r\naccept: */*\r\nuser-agent: me\r\n\
             host: example.test:8080\r\ncontent-length: 2\r\n\r\nhi"
        );
        assert_eq!(c.targets[0].port, 8080);
    }

    #[test]
    fn invalid_input_is_a_config_error() {
        assert!(matches!(
            config(&["not a url"]),
            Err(ConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            config(&["ftp://127.0.0.1/"]),
            Err(ConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            config(&["http://127.0.0.1/", "--http-version", "3"]),
            Err(ConfigError::HttpVersion(_))
        ));
        assert!(matches!(
            config(&["http://127.0.0.1/", "-p", "4"]),
            Err(ConfigError::ParallelNeedsHttp2)
        ));
        assert!(matches!(
            config(&["http://127.0.0.1/", "-q", "0"]),
            Err(ConfigError::Rate)
        ));
        assert!(matches!(
            config(&["http://127.0.0.1/", "-D", "/nonexistent/body"]),
            Err(ConfigError::BodyFile { .. })
        ));
        assert!(matches!(
            config(&[
                "--target",
                "a=http://127.0.0.1/",
                "--target",
                "a=http://[::1]/"
            ]),
            Err(ConfigError::DuplicateTarget(_))
        ));
    }

    #[test]
    fn http2_request_has_authority_and_no_host_header() {
        let c = config(&[
            "http://example.test:8080/a?b=1",
            "--http-version",
            "2",
            "-p",
            "8",
            "-H",
            "x-a: 1",
            "-H",
            "connection: close",
        ])
        .unwrap();
        assert!(c.http2);
        assert_eq!(c.parallel, 8);
        let r = c.targets[0].h2.as_ref().unwrap().build();
        assert_eq!(r.uri().to_string(), "http://example.test:8080/a?b=1");
        assert_eq!(r.headers()["x-a"], "1");
        assert!(r.headers().get("host").is_none());
        assert!(r.headers().get("connection").is_none());
        let c = config(&["https://[::1]/", "--http2", "--host", "h.test"]).unwrap();
        let r = c.targets[0].h2.as_ref().unwrap().build();
        assert_eq!(r.uri().authority().unwrap().as_str(), "h.test");
    }

    #[test]
    fn https_defaults_to_443_and_ipv6_hosts_are_bare() {
        let c = config(&["https://[::1]/"]).unwrap();
        assert!(c.targets[0].tls);
        assert_eq!(c.targets[0].port, 443);
        assert_eq!(c.targets[0].host, "::1");
    }
}
