//! `cargo xtask bench-loadgen`: loadgen against oha and wrk (each in its best configuration)
//! on a private loopback nginx, with keep-alive, without, and over HTTPS with a new TLS
//! connection per request; runs alternated, with requests/s ratios, client CPU per 100 k
//! requests and peak RSS (from each child's wait4 rusage); what each client does with TLS
//! sessions; peak RSS at -n 10 k vs 10 M; then the latency each client reports against a
//! server that answers 10 ms after each request arrived, next to that server's own lateness,
//! so that client and server error are told apart.

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, precise_server, system};

const PACKAGES: [system::Package; 4] = [
    ("/usr/sbin/nginx", "nginx-light"),
    ("/usr/bin/wrk", "wrk"),
    ("/usr/bin/cmake", "cmake"),
    ("/usr/bin/openssl", "openssl"),
];

/// The clients compared. wrk runs in both of its best configurations (one thread leaves the
/// other core to the server; two use both), oha in its default, loadgen in its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Loadgen,
    Oha,
    Wrk1,
    Wrk2,
    /// Another loadgen build (`BENCH_BASELINE`), in the latency runs.
    Baseline,
    /// loadgen with `--threads N` (`BENCH_LOADGEN_THREADS=1,2`), to see what the default is
    /// worth against the other counts.
    LoadgenThreads(u32),
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Loadgen => "loadgen",
            Tool::Oha => "oha",
            Tool::Wrk1 => "wrk -t1",
            Tool::Wrk2 => "wrk -t2",
            Tool::Baseline => "baseline",
            Tool::LoadgenThreads(_) => "loadgen --threads",
        }
    }
}

/// How connections are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    KeepAlive,
    /// One connection per request, plain TCP (the published runs inside the mesh).
    Close,
    /// One TLS connection per request (`--insecure`): the published external test.
    Tls,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "close",
            Mode::Tls => "https close",
        }
    }
}

/// What one child run cost and achieved.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    requests: f64,
    rps: f64,
    cpu_s: f64,
    maxrss_kb: i64,
    /// nginx's worker: CPU seconds per second of the run (1.0: its one core was full, so no
    /// client could have gone faster).
    server_busy: f64,
}

/// A process stopped (SIGTERM, then SIGKILL) when dropped, on every exit path; it also gets
/// SIGKILL from the kernel if xtask itself dies.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn die_with_parent(c: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16) -> Result<()> {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

/// Loopback addresses nginx listens on. Without keep-alive a 3 s run leaves tens of thousands
/// of client sockets in TIME_WAIT for 60 s, more than the ephemeral ports to one address, and
/// every connect of the next run then searches for a port it may reuse: the run after a busy
/// one was measurably slower, whichever tool it was. Each run gets an address of its own, so
/// it starts from a clean slate and the order of the tools does not matter.
const LOOPBACK_ADDRESSES: u32 = 250;

struct Nginx {
    _guard: Guard,
    dir: TempDir,
    port: u16,
    tls_port: u16,
    /// Logs each request's TLS protocol and whether its session was resumed.
    tls_log_port: u16,
    next: std::cell::Cell<u32>,
}

/// CPU seconds `pid` has used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

impl Nginx {
    /// The one worker process (the master's child).
    fn worker(&self) -> Option<u32> {
        let master = self._guard.0.id();
        let children =
            std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// The URL for the next run: the next of nginx's loopback addresses, round robin.
    fn url(&self, mode: Mode) -> String {
        let i = self.next.get() % LOOPBACK_ADDRESSES + 1;
        self.next.set(i);
        match mode {
            Mode::Tls => format!("https://127.0.0.{i}:{}/", self.tls_port),
            _ => format!("http://127.0.0.{i}:{}/", self.port),
        }
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed P-256 certificate for 127.0.0.1, made with Debian's openssl.
fn make_cert(dir: &std::path::Path) -> Result<()> {
    let ok = Command::new("/usr/bin/openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl")?
        .success();
    if !ok {
        bail!("openssl could not make a certificate in {}", dir.display());
    }
    Ok(())
}

fn start_nginx() -> Result<Nginx> {
    let dir = TempDir(std::env::temp_dir().join(format!("loadgen-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    make_cert(&dir.0)?;
    let (port, tls_port, tls_log_port) = (free_port()?, free_port()?, free_port()?);
    let d = dir.0.display();
    let listens: String = (1..=LOOPBACK_ADDRESSES)
        .map(|i| format!("listen 127.0.0.{i}:{port}; listen 127.0.0.{i}:{tls_port} ssl; "))
        .collect();
    // TLS 1.3 as the ingress proxies of the published runs offer it (nginx 1.22's default
    // stops at 1.2); otherwise nginx's defaults: session tickets on, no session cache.
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
           fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
           keepalive_requests 1000000;\n\
           ssl_certificate {d}/cert.pem;\n  ssl_certificate_key {d}/key.pem;\n\
           ssl_protocols TLSv1.2 TLSv1.3;\n\
           log_format tls '$ssl_protocol $ssl_session_reused';\n\
           server {{ {listens} location / {{ return 200 \"hello world\\n\"; }} }}\n\
           server {{ listen 127.0.0.1:{tls_log_port} ssl; access_log {d}/tls.log tls; \
             location / {{ return 200 \"hello world\\n\"; }} }}\n}}\n"
    );
    let conf_path = dir.0.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut c = Command::new("/usr/sbin/nginx");
    c.arg("-c").arg(&conf_path).arg("-p").arg(&dir.0);
    die_with_parent(&mut c);
    let guard = Guard(c.spawn().context("starting nginx")?);
    wait_listening(port)?;
    Ok(Nginx {
        _guard: guard,
        dir,
        port,
        tls_port,
        tls_log_port,
        next: std::cell::Cell::new(0),
    })
}

/// Runs a client to completion; CPU and peak RSS come from wait4 on that very child.
fn measure(c: &mut Command) -> Result<(String, Run)> {
    c.stdout(Stdio::piped()).stderr(Stdio::null());
    die_with_parent(c);
    let mut child = c.spawn().with_context(|| format!("starting {c:?}"))?;
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        so.read_to_string(&mut out)?;
    }
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        out,
        Run {
            cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
            maxrss_kb: ru.ru_maxrss,
            ..Run::default()
        },
    ))
}

fn json_field(out: &str, path: &[&str]) -> Option<f64> {
    // oha and loadgen JSON: a tiny lookup without a JSON dependency in xtask.
    let mut rest = out;
    for key in path {
        let at = rest.find(&format!("\"{key}\""))?;
        rest = &rest[at + key.len() + 2..];
    }
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|ch: char| !(ch.is_ascii_digit() || ".eE+-".contains(ch)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The command line of `tool` for `secs` seconds at `c` connections in `mode`.
fn command(tool: Tool, bins: &Bins, url: &str, c: u32, mode: Mode, secs: u32) -> Command {
    let z = format!("{secs}s");
    let conns = c.to_string();
    let mut k;
    match tool {
        Tool::Loadgen | Tool::Baseline | Tool::Oha | Tool::LoadgenThreads(_) => {
            k = Command::new(match tool {
                Tool::Oha => &bins.oha,
                _ => bins.loadgen_of(tool),
            });
            k.args([
                url,
                "-c",
                &conns,
                "-z",
                &z,
                "--no-tui",
                "--output-format",
                "json",
            ]);
            if let Tool::LoadgenThreads(t) = tool {
                k.args(["--threads", &t.to_string()]);
            }
            if mode != Mode::KeepAlive {
                // Both send `connection: close` with it, so the server closes.
                k.arg("--disable-keepalive");
            }
            if mode == Mode::Tls {
                k.arg("--insecure");
            }
        }
        Tool::Wrk1 | Tool::Wrk2 => {
            k = Command::new("/usr/bin/wrk");
            let t = if tool == Tool::Wrk1 { "-t1" } else { "-t2" };
            k.args([t, "-c", &conns, "-d", &z, url]);
            if mode != Mode::KeepAlive {
                // wrk's only way to a connection per request: the server closes each one,
                // and wrk reconnects (with a new TLS handshake over HTTPS).
                k.args(["-H", "Connection: close"]);
            }
        }
    }
    k
}

fn run_tool(tool: Tool, bins: &Bins, nginx: &Nginx, c: u32, mode: Mode, secs: u32) -> Result<Run> {
    let url = nginx.url(mode);
    let worker = nginx.worker();
    let before = worker.and_then(cpu_seconds);
    let started = std::time::Instant::now();
    let (out, mut run) = measure(&mut command(tool, bins, &url, c, mode, secs))?;
    if let (Some(w), Some(b)) = (worker, before) {
        let after = cpu_seconds(w).unwrap_or(b);
        run.server_busy = (after - b) / started.elapsed().as_secs_f64();
    }
    match tool {
        Tool::Loadgen | Tool::Baseline | Tool::Oha | Tool::LoadgenThreads(_) => {
            let rps = json_field(&out, &["summary", "requestsPerSec"])
                .with_context(|| format!("{} printed no requestsPerSec:\n{out}", tool.name()))?;
            let total = json_field(&out, &["summary", "total"]).unwrap_or(f64::from(secs));
            let ok = json_field(&out, &["summary", "successRate"]).unwrap_or(0.0);
            if ok < 0.99 {
                bail!("{} {}: success rate {ok}:\n{out}", tool.name(), mode.name());
            }
            run.rps = rps;
            run.requests = rps * total;
        }
        Tool::Wrk1 | Tool::Wrk2 => {
            run.requests = out
                .lines()
                .find_map(|l| {
                    let l = l.trim();
                    l.split_once(" requests in")
                        .and_then(|(n, _)| n.trim().parse().ok())
                })
                .with_context(|| format!("wrk printed no request count:\n{out}"))?;
            run.rps = out
                .lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("wrk printed no Requests/sec:\n{out}"))?;
            if out.contains("Socket errors") || out.contains("Non-2xx") {
                bail!("wrk {}: errors:\n{out}", mode.name());
            }
        }
    }
    Ok(run)
}

/// What each client does with TLS: one second at c = 4 against a server block that logs
/// each request's protocol and whether its session was resumed.
fn tls_sessions(bins: &Bins, nginx: &Nginx) -> Result<()> {
    let log = nginx.dir.0.join("tls.log");
    let url = format!("https://127.0.0.1:{}/", nginx.tls_log_port);
    for tool in [Tool::Loadgen, Tool::Oha, Tool::Wrk1] {
        std::fs::write(&log, "")?;
        measure(&mut command(tool, bins, &url, 4, Mode::Tls, 1))?;
        // nginx writes its access log line by line as requests end.
        let text = std::fs::read_to_string(&log)?;
        let mut protocols = std::collections::BTreeMap::<&str, (u64, u64)>::new();
        for line in text.lines() {
            let (proto, reused) = line.split_once(' ').unwrap_or((line, ""));
            let e = protocols.entry(proto).or_default();
            e.0 += 1;
            e.1 += u64::from(reused == "r");
        }
        let summary: Vec<String> = protocols
            .iter()
            .map(|(p, (n, r))| format!("{p}: {n} requests, {r} on resumed sessions"))
            .collect();
        println!("TLS, {:<8} {}", tool.name(), summary.join("; "));
    }
    Ok(())
}

struct Bins {
    loadgen: PathBuf,
    oha: PathBuf,
    /// `BENCH_BASELINE`: another loadgen build to set beside this one.
    baseline: Option<PathBuf>,
}

impl Bins {
    /// The loadgen binary a loadgen-kind tool runs.
    fn loadgen_of(&self, tool: Tool) -> &PathBuf {
        match (tool, &self.baseline) {
            (Tool::Baseline, Some(b)) => b,
            _ => &self.loadgen,
        }
    }
}

fn find_oha() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(h).join("bin/oha"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(h).join(".cargo/bin/oha"));
    }
    if let Some(p) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&p).map(|d| d.join("oha")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn ensure_tools() -> Result<Bins> {
    system::ensure_packages(&PACKAGES)?;
    let oha = match find_oha() {
        Some(p) => p,
        None => {
            if !system::is_root() {
                bail!("oha is missing; install it with: cargo install oha --locked");
            }
            cmd::cargo(&["install", "oha", "--locked"])?;
            find_oha().context("cargo install oha left no binary")?
        }
    };
    cmd::cargo(&["build", "--release", "-p", "loadgen"])?;
    Ok(Bins {
        loadgen: crate::demo::measuring("loadgen"),
        oha,
        baseline: std::env::var_os("BENCH_BASELINE").map(PathBuf::from),
    })
}

/// Value at percentile `p` (0–100) of unsorted samples.
fn percentile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[i.clamp(1, v.len()) - 1] as f64
}

/// wrk --latency prints "     50%   10.08ms"; returns seconds.
fn wrk_percentile(out: &str, label: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        if it.next()? != label {
            return None;
        }
        let v = it.next()?;
        let split = v.find(|c: char| c.is_ascii_alphabetic())?;
        let (num, unit) = v.split_at(split);
        let num: f64 = num.parse().ok()?;
        Some(match unit {
            "us" => num / 1e6,
            "ms" => num / 1e3,
            "s" => num,
            "m" => num * 60.0,
            _ => return None,
        })
    })
}

/// How close loadgen's p50 and p99 must be to the server's own figures, in every round.
const ACCURACY_MS: f64 = 0.3;

/// Latency each client reports against the precise 10 ms server, alternated in the same run,
/// next to the server's own lateness for that client's run.
fn latency_accuracy(bins: &Bins, rounds: usize) -> Result<()> {
    let delay = Duration::from_millis(10);
    let (port, lateness) = precise_server::start(delay)?;
    let url = format!("http://127.0.0.1:{port}/");
    println!(
        "server answering 10 ms after each request arrived (one thread, epoll, sleep + spin \
         for the earliest deadline), c = 16, 3 s per run:"
    );
    println!(
        "{:<8} {:>9} {:>9} {:>16} {:>16} {:>10} {:>10} {:>7}",
        "client",
        "p50 - 10",
        "p99 - 10",
        "server late p50",
        "server late p99",
        "Δ p50",
        "Δ p99",
        "within"
    );
    let mut loadgen_rounds = Vec::new();
    let mut tools = vec![Tool::Loadgen];
    if bins.baseline.is_some() {
        tools.push(Tool::Baseline);
    }
    tools.extend([Tool::Oha, Tool::Wrk2]);
    for round in 0..rounds {
        // Each round starts with the next tool, as in the throughput runs.
        tools.rotate_left(usize::from(round > 0));
        for &tool in &tools {
            lateness.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let mut cmd = match tool {
                Tool::Loadgen | Tool::Baseline | Tool::LoadgenThreads(_) => {
                    let mut k = Command::new(bins.loadgen_of(tool));
                    k.args([&url, "-c", "16", "-z", "3s", "--no-tui", "-j"]);
                    k
                }
                Tool::Oha => {
                    let mut k = Command::new(&bins.oha);
                    k.args([&url, "-c", "16", "-z", "3s", "--no-tui"]);
                    k.args(["--output-format", "json"]);
                    k
                }
                Tool::Wrk1 | Tool::Wrk2 => {
                    let mut k = Command::new("/usr/bin/wrk");
                    let t = if tool == Tool::Wrk1 { "-t1" } else { "-t2" };
                    k.args([t, "-c16", "-d3s", "--latency", &url]);
                    k
                }
            };
            let (out, _) = measure(&mut cmd)?;
            let (p50, p99) = match tool {
                Tool::Wrk1 | Tool::Wrk2 => {
                    (wrk_percentile(&out, "50%"), wrk_percentile(&out, "99%"))
                }
                _ => (
                    json_field(&out, &["latencyPercentiles", "p50"]),
                    json_field(&out, &["latencyPercentiles", "p99"]),
                ),
            };
            let (p50, p99) = p50
                .zip(p99)
                .with_context(|| format!("{} printed no p50/p99:\n{out}", tool.name()))?;
            let mut late = std::mem::take(&mut *lateness.lock().unwrap_or_else(|p| p.into_inner()));
            let (late50, late99) = (
                percentile(&mut late, 50.0) / 1e3,
                percentile(&mut late, 99.0) / 1e3,
            );
            // The client's figure against the server's own (10 ms + its lateness, per request).
            let d50 = p50 * 1e3 - 10.0 - late50;
            let d99 = p99 * 1e3 - 10.0 - late99;
            let within = d50.abs() <= ACCURACY_MS && d99.abs() <= ACCURACY_MS;
            if tool == Tool::Loadgen {
                loadgen_rounds.push(within);
            }
            println!(
                "{:<8} {:>+7.3}ms {:>+7.3}ms {:>14.3}ms {:>14.3}ms {:>+8.3}ms {:>+8.3}ms {:>7}",
                tool.name(),
                p50 * 1e3 - 10.0,
                p99 * 1e3 - 10.0,
                late50,
                late99,
                d50,
                d99,
                if within { "yes" } else { "no" }
            );
        }
    }
    println!(
        "Δ = the client's percentile minus the server's own (10 ms + its lateness); loadgen \
         within {ACCURACY_MS} ms at p50 and p99 in {} of {} rounds",
        loadgen_rounds.iter().filter(|w| **w).count(),
        loadgen_rounds.len()
    );
    Ok(())
}

/// Peak RSS at -n 10 k and -n `BENCH_RSS_N` (default 10 M), c = 64 with keep-alive, with no
/// records, plain records and zstd records; and the records' bytes per request.
fn memory_and_records(bins: &Bins, nginx: &Nginx) -> Result<()> {
    let big = std::env::var("BENCH_RSS_N").unwrap_or_else(|_| "10m".to_owned());
    let records_dir = nginx.dir.0.join("records");
    std::fs::create_dir_all(&records_dir)?;
    let mut worst: f64 = 0.0;
    for records in [None, Some("r.jsonl"), Some("r.jsonl.zst")] {
        let mut rss = Vec::new();
        for n in ["10k", &big] {
            let mut k = Command::new(&bins.loadgen);
            k.args([
                &nginx.url(Mode::KeepAlive),
                "-c",
                "64",
                "-n",
                n,
                "--no-tui",
                "-j",
            ]);
            let path = records.map(|f| records_dir.join(f));
            if let Some(p) = &path {
                k.arg("--records").arg(p);
            }
            let (_, r) = measure(&mut k)?;
            rss.push(r.maxrss_kb);
            let size = match &path {
                Some(p) => {
                    let bytes = std::fs::metadata(p)?.len();
                    std::fs::remove_file(p)?;
                    let requests = n.trim_end_matches(['k', 'm']).parse::<f64>().unwrap_or(0.0)
                        * if n.ends_with('m') { 1e6 } else { 1e3 };
                    format!(", {:.1} bytes per request", bytes as f64 / requests)
                }
                None => String::new(),
            };
            println!(
                "loadgen -n {n:>4} -c 64, records {:<11}: peak RSS {} KiB{size}",
                records.unwrap_or("none"),
                r.maxrss_kb
            );
        }
        let ratio = rss[1] as f64 / rss[0].max(1) as f64;
        worst = worst.max(ratio);
        println!("  peak RSS {big} / 10k = {ratio:.3}");
    }
    println!("peak RSS, worst {big} / 10k: {worst:.3} (goal: within 10 %)");
    Ok(())
}

pub fn bench() -> Result<()> {
    let bins = ensure_tools()?;
    // Same bytes on the wire as this oha, or the comparison is not like for like.
    let mut wire = cmd::cargo_command(&["test", "--release", "-p", "loadgen", "--test", "wire"]);
    wire.env("OHA_BIN", &bins.oha);
    cmd::run(&mut wire).context("loadgen's requests differ from oha's (loadgen/tests/wire.rs)")?;
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    if rounds == 0 {
        bail!("BENCH_ROUNDS must be at least 1");
    }
    // Only the 10 ms server part: to look at timing accuracy without the nginx runs.
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "latency") {
        return latency_accuracy(&bins, rounds);
    }
    let nginx = start_nginx()?;
    let secs = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!(
        "nginx (1 worker) on 127.0.0.{{1..{LOOPBACK_ADDRESSES}}}, port {} (http) and {} \
         (https), a fresh address per run; {rounds} rounds of {secs} s per tool and setting, \
         each round starting with the next tool",
        nginx.port, nginx.tls_port
    );
    tls_sessions(&bins, &nginx)?;
    let mut tools = vec![Tool::Loadgen, Tool::Oha, Tool::Wrk1, Tool::Wrk2];
    let threads = std::env::var("BENCH_LOADGEN_THREADS").unwrap_or_default();
    for t in threads.split(',').filter(|t| !t.is_empty()) {
        let t = t
            .trim()
            .parse()
            .with_context(|| format!("BENCH_LOADGEN_THREADS: {t:?} is not a count"))?;
        tools.push(Tool::LoadgenThreads(t));
    }
    println!(
        "{:<11} {:>4} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>15}",
        "mode",
        "c",
        "loadgen/s",
        "oha/s",
        "wrk-t1/s",
        "wrk-t2/s",
        "ratio",
        "cpu lg",
        "cpu oha",
        "cpu w1",
        "cpu w2",
        "cpu r",
        "rss lg",
        "rss oh",
        "rss wr",
        "nginx lg/oh/w1/w2"
    );
    let mut worst = f64::INFINITY;
    for mode in [Mode::KeepAlive, Mode::Close, Mode::Tls] {
        for c in [32u32, 64, 128] {
            let mut sums = vec![Run::default(); tools.len()];
            for round in 0..rounds {
                // Each round starts with the next tool, so none is always first.
                for k in 0..tools.len() {
                    let tool = tools[(k + round) % tools.len()];
                    let r = run_tool(tool, &bins, &nginx, c, mode, secs)?;
                    let i = tools.iter().position(|t| *t == tool).unwrap_or(0);
                    sums[i].requests += r.requests;
                    sums[i].rps += r.rps / rounds as f64;
                    sums[i].cpu_s += r.cpu_s;
                    sums[i].maxrss_kb = sums[i].maxrss_kb.max(r.maxrss_kb);
                    sums[i].server_busy += r.server_busy / rounds as f64;
                }
            }
            let [lg, oha, w1, w2] = [sums[0], sums[1], sums[2], sums[3]];
            let cpu = |r: &Run| r.cpu_s / r.requests * 100_000.0;
            let ratio = lg.rps / oha.rps.max(w1.rps).max(w2.rps);
            worst = worst.min(ratio);
            println!(
                "{:<11} {:>4} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>5}M {:>5}M {:>5}M {:>4.0}/{:.0}/{:.0}/{:.0}%",
                mode.name(),
                c,
                lg.rps,
                oha.rps,
                w1.rps,
                w2.rps,
                ratio,
                cpu(&lg),
                cpu(&oha),
                cpu(&w1),
                cpu(&w2),
                cpu(&lg) / cpu(&w1).min(cpu(&w2)),
                lg.maxrss_kb / 1024,
                oha.maxrss_kb / 1024,
                w1.maxrss_kb.max(w2.maxrss_kb) / 1024,
                lg.server_busy * 100.0,
                oha.server_busy * 100.0,
                w1.server_busy * 100.0,
                w2.server_busy * 100.0,
            );
            for (tool, r) in tools.iter().zip(&sums).skip(4) {
                if let Tool::LoadgenThreads(t) = tool {
                    println!(
                        "{:<11} {:>4} {:>10.0}   loadgen --threads {t}: ratio {:.2}, cpu {:.2}, \
                         nginx {:.0}%",
                        "",
                        "",
                        r.rps,
                        r.rps / oha.rps.max(w1.rps).max(w2.rps),
                        cpu(r),
                        r.server_busy * 100.0
                    );
                }
            }
        }
    }
    println!(
        "ratio = loadgen requests/s / the best of oha, wrk -t1 and wrk -t2 (lowest: {worst:.2})\n\
         without keep-alive every client has the server close each connection (loadgen and oha \
         send `connection: close` with --disable-keepalive, wrk gets -H 'Connection: close')\n\
         cpu = client CPU seconds per 100k requests; cpu r = loadgen's / the lower of wrk's\n\
         nginx = its one worker's CPU during each client's runs (100 %: the server was the limit)"
    );

    memory_and_records(&bins, &nginx)?;
    drop(nginx);

    latency_accuracy(&bins, rounds)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_are_found_by_path() {
        let j = r#"{"summary": {"total": 3.5, "requestsPerSec": 1.25e3},
                    "latencyPercentiles": {"p50": 0.01, "p99": 0.0105}}"#;
        assert_eq!(json_field(j, &["summary", "requestsPerSec"]), Some(1250.0));
        assert_eq!(json_field(j, &["latencyPercentiles", "p99"]), Some(0.0105));
        assert_eq!(json_field(j, &["nothing"]), None);
    }

    #[test]
    fn wrk_latency_lines_are_read_in_seconds() {
        let out =
            "  Latency Distribution\n     50%   10.08ms\n     75%  850.00us\n     99%    1.20s\n";
        assert_eq!(wrk_percentile(out, "50%"), Some(0.01008));
        assert_eq!(wrk_percentile(out, "75%"), Some(0.00085));
        assert_eq!(wrk_percentile(out, "99%"), Some(1.2));
        assert_eq!(wrk_percentile(out, "90%"), None);
        let mut v = vec![5, 1, 4, 2, 3];
        assert_eq!(percentile(&mut v, 50.0), 3.0);
        assert_eq!(percentile(&mut v, 99.0), 5.0);
    }
}
