//! Debian's Prometheus, started by a test on loopback with its own configuration and data
//! directory (never the package's service), scraping hopprobe every second; PromQL over its
//! HTTP API.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const BINARY: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// Whether a test can use Prometheus here: `cargo xtask test` installs it on the host; the VM
/// matrix's guests do not carry it (they test kernels, and this is not the kernel's part).
pub fn available(test: &str) -> bool {
    if Path::new(BINARY).exists() {
        return true;
    }
    if crate::emulation::emulated() {
        // The VM runner counts a test that says HOST-ONLY as skipped, not failed
        // (xtask vm::guest::NOT_RUN_HERE).
        eprintln!("HOST-ONLY {test}: the VM image carries no Prometheus; the host run checks it");
        return false;
    }
    crate::lab::skip(
        test,
        "Debian's prometheus is not installed (`cargo xtask test` installs it)",
    )
}

/// A free port on loopback (bound and released: free unless something takes it meanwhile).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on loopback")
}

/// One HTTP/1.1 GET over a fresh connection: (status code, body).
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response from {addr}: {text}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status from {addr}: {head}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets`' `/metrics` every second; returns once it is ready.
    pub fn start(targets: &[SocketAddr]) -> Result<Self, String> {
        Self::start_with(targets, &[])
    }

    /// `start`, with more command-line flags (`--enable-feature=native-histograms`).
    pub fn start_with(targets: &[SocketAddr], flags: &[&str]) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
             scrape_configs:\n  - job_name: hopprobe\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).map_err(|e| e.to_string())?;
        let addr = free_port();
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {BINARY}: {e}"))?;
        let mut p = Self {
            child,
            addr,
            _dir: dir,
        };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(addr, "/-/ready") {
                return Ok(p);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("prometheus exited {status}"));
            }
            if Instant::now() > until {
                return Err("prometheus not ready within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query's result vector: (labels, value) per series.
    pub fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>, String> {
        let q: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={q}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("{promql}: HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{promql}: {body}"));
        }
        Ok(v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((r["metric"].clone(), value))
            })
            .collect())
    }

    /// The single value of `promql`, once `done` accepts it; the last value (or error) after
    /// `within`.
    pub fn wait_for(
        &self,
        promql: &str,
        within: Duration,
        done: impl Fn(f64) -> bool,
    ) -> Result<f64, String> {
        let until = Instant::now() + within;
        loop {
            let got = self.query(promql).and_then(|r| match r.as_slice() {
                [(_, v)] => Ok(*v),
                other => Err(format!("{promql}: {} series: {other:?}", other.len())),
            });
            match got {
                Ok(v) if done(v) => return Ok(v),
                last if Instant::now() > until => {
                    return Err(format!("{promql} after {within:?}: {last:?}"));
                }
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
