//! The built-in sidecar and ingress proxy: HTTP/1.1, a keep-alive pool per upstream as Envoy
//! keeps, an optional delay per request, and TLS (rustls) on either side of a route.

use std::{
    io::{self, BufReader},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rustls::{ClientConfig, ServerConfig, pki_types::ServerName};

use super::{
    app::{bind, precise_sleep},
    config::Delay,
    http::{Message, read_message},
    stream::Conn,
    tls::{self, HandshakeStats, TlsError, TlsFiles, TlsPolicy},
};

/// What a route's listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsIn {
    Plain,
    /// Server-only TLS (the ingress's HTTPS).
    Tls,
    /// The client must present a certificate of the lab's CA (a sidecar's inbound port).
    Mutual,
}

/// One listener of a proxy and where it sends what it receives.
#[derive(Debug, Clone)]
pub struct Route {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub delay: Delay,
    pub tls_in: TlsIn,
    /// Mutual TLS to the upstream, verifying that it is this name (a Service's DNS name).
    pub tls_out: Option<String>,
}

impl Route {
    pub fn plain(listen: SocketAddr, upstream: SocketAddr, delay: Delay) -> Self {
        Self {
            listen,
            upstream,
            delay,
            tls_in: TlsIn::Plain,
            tls_out: None,
        }
    }

    /// `listen=upstream@delay[,in=tls|mtls][,out=<name>]`, as the proxy's `--route` takes it.
    pub fn to_arg(&self) -> String {
        let mut s = format!("{}={}@{}", self.listen, self.upstream, self.delay);
        match self.tls_in {
            TlsIn::Plain => {}
            TlsIn::Tls => s.push_str(",in=tls"),
            TlsIn::Mutual => s.push_str(",in=mtls"),
        }
        if let Some(name) = &self.tls_out {
            s.push_str(&format!(",out={name}"));
        }
        s
    }
}

impl std::str::FromStr for Route {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FORM: &str = "expected listen=upstream@delay[,in=tls|mtls][,out=name]";
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default();
        let (listen, rest) = first.split_once('=').ok_or(FORM)?;
        let (upstream, delay) = rest.split_once('@').ok_or(FORM)?;
        let mut route = Route::plain(
            listen.parse().map_err(|e| format!("{listen}: {e}"))?,
            upstream.parse().map_err(|e| format!("{upstream}: {e}"))?,
            delay.parse()?,
        );
        for opt in parts {
            match opt.split_once('=') {
                Some(("in", "tls")) => route.tls_in = TlsIn::Tls,
                Some(("in", "mtls")) => route.tls_in = TlsIn::Mutual,
                Some(("out", name)) if !name.is_empty() => route.tls_out = Some(name.to_owned()),
                _ => return Err(format!("`{opt}`: {FORM}")),
            }
        }
        Ok(route)
    }
}

/// The proxy's TLS material: whose certificate it presents, where the lab's files are, the
/// lab's TLS policy, and where to publish its handshake counts.
#[derive(Debug, Clone)]
pub struct ProxyTls {
    pub files: TlsFiles,
    pub identity: String,
    pub policy: TlsPolicy,
    pub stats: Option<PathBuf>,
}

struct Upstream {
    reader: BufReader<Conn>,
}

/// How a pool reaches its upstream over mutual TLS: one client config per process, so that
/// its session cache resumes sessions across the pool's connections.
struct Dial {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Upstream>>,
    tls: Option<Dial>,
    stats: Arc<HandshakeStats>,
}

impl Pool {
    fn take(&self) -> Option<Upstream> {
        self.idle.lock().expect("not poisoned").pop()
    }

    fn connect(&self) -> io::Result<Upstream> {
        let conn = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let conn = match &self.tls {
            Some(d) => Conn::connect(conn, d.config.clone(), d.name.clone(), &self.stats)?,
            None => Conn::Plain(conn),
        };
        Ok(Upstream {
            reader: BufReader::new(conn),
        })
    }

    fn put(&self, up: Upstream) {
        self.idle.lock().expect("not poisoned").push(up);
    }

    /// Forwards on a pooled connection, retrying once on a fresh one if the pooled one had
    /// been closed by the upstream meanwhile.
    fn forward(&self, request: &Message) -> io::Result<Message> {
        if let Some(mut up) = self.take()
            && let Ok(Some(resp)) = exchange(&mut up, request)
        {
            self.keep(up, &resp);
            return Ok(resp);
        }
        let mut up = self.connect()?;
        let resp = exchange(&mut up, request)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed without answering",
            )
        })?;
        self.keep(up, &resp);
        Ok(resp)
    }

    fn keep(&self, up: Upstream, resp: &Message) {
        if !resp.wants_close() {
            self.put(up);
        }
    }
}

fn exchange(up: &mut Upstream, request: &Message) -> io::Result<Option<Message>> {
    request.write_to(up.reader.get_mut())?;
    read_message(&mut up.reader)
}

/// Serves every route until the process is killed.
///
/// Each route's connections are served by reused threads, as Envoy's and Linkerd's fixed
/// workers are, not by a thread spawned per connection: apps open a connection per call, and
/// a spawn per call put the acceptor's wake-up, the thread's creation and its first run into
/// every outbound request's wait at the proxy (p50 39–162 µs against 21–46 µs on the kept-alive
/// inbound side), with a tail that grew whenever the CPUs had idled. A thread that has
/// accepted one connection serves it to the end; one more is started whenever no thread is
/// left waiting in `accept`, so concurrency is never capped.
pub fn serve(routes: Vec<Route>, tls: Option<ProxyTls>) -> Result<(), ProxyError> {
    let stats = Arc::new(HandshakeStats::default());
    if let Some(path) = tls.as_ref().and_then(|t| t.stats.clone()) {
        stats.publish(path);
    }
    let configs = Configs::new(&routes, tls.as_ref())?;
    let mut threads = Vec::new();
    for route in routes {
        let accept = match route.tls_in {
            TlsIn::Plain => None,
            TlsIn::Tls => configs.server.clone(),
            TlsIn::Mutual => configs.mutual.clone(),
        };
        let dial = match (&route.tls_out, &configs.client) {
            (Some(name), Some(config)) => Some(Dial {
                config: config.clone(),
                name: tls::server_name(name)?,
            }),
            _ => None,
        };
        let route = Arc::new(Listener {
            socket: bind(route.listen).map_err(|e| ProxyError::Bind(route.listen, e))?,
            pool: Pool {
                addr: route.upstream,
                idle: Mutex::new(Vec::new()),
                tls: dial,
                stats: stats.clone(),
            },
            delay: route.delay,
            accept,
            waiting: AtomicUsize::new(0),
        });
        for _ in 0..SPARE_WORKERS {
            threads.push(spawn_worker(&route));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listening on {0}: {1}")]
    Bind(SocketAddr, io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("a route speaks TLS but the proxy was given no --tls-dir")]
    NoTls,
}

/// The rustls configs the routes need, each made once and shared: a server config per kind
/// of listener, one client config for every pool.
struct Configs {
    server: Option<Arc<ServerConfig>>,
    mutual: Option<Arc<ServerConfig>>,
    client: Option<Arc<ClientConfig>>,
}

impl Configs {
    fn new(routes: &[Route], tls: Option<&ProxyTls>) -> Result<Self, ProxyError> {
        let wants = |f: &dyn Fn(&Route) -> bool| routes.iter().any(f);
        let any = wants(&|r| r.tls_in != TlsIn::Plain || r.tls_out.is_some());
        let Some(t) = tls else {
            return if any {
                Err(ProxyError::NoTls)
            } else {
                Ok(Self {
                    server: None,
                    mutual: None,
                    client: None,
                })
            };
        };
        let server = |mutual: bool| tls::server_config(&t.files, &t.identity, t.policy, mutual);
        Ok(Self {
            server: wants(&|r| r.tls_in == TlsIn::Tls)
                .then(|| server(false))
                .transpose()?,
            mutual: wants(&|r| r.tls_in == TlsIn::Mutual)
                .then(|| server(true))
                .transpose()?,
            client: wants(&|r| r.tls_out.is_some())
                .then(|| tls::client_config(&t.files, Some(&t.identity), t.policy))
                .transpose()?,
        })
    }
}

/// Threads kept waiting in `accept` per listener: one takes the next connection while the
/// other is there for the one after, until its replacement has started.
const SPARE_WORKERS: usize = 2;

struct Listener {
    socket: std::net::TcpListener,
    pool: Pool,
    delay: Delay,
    accept: Option<Arc<ServerConfig>>,
    /// Threads blocked in (or about to call) `accept`.
    waiting: AtomicUsize,
}

fn spawn_worker(route: &Arc<Listener>) -> std::thread::JoinHandle<()> {
    route.waiting.fetch_add(1, Ordering::SeqCst);
    let route = route.clone();
    std::thread::spawn(move || {
        loop {
            let accepted = route.socket.accept();
            if route.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
                spawn_worker(&route);
            }
            if let Ok((stream, _)) = accepted {
                let _ = downstream(stream, &route);
            }
            route.waiting.fetch_add(1, Ordering::SeqCst);
        }
    })
}

fn downstream(stream: TcpStream, route: &Listener) -> io::Result<()> {
    let (pool, delay) = (&route.pool, route.delay);
    stream.set_nodelay(true)?;
    let conn = match &route.accept {
        Some(config) => Conn::accept(stream, config.clone(), &pool.stats)?,
        None => Conn::Plain(stream),
    };
    let mut reader = BufReader::new(conn);
    while let Some(mut request) = read_message(&mut reader)? {
        let close = request.wants_close();
        // Upstream connections are pooled whatever the downstream wants.
        request.set_header("Connection", "keep-alive");
        precise_sleep(delay.sample(rand::random::<f64>()));
        let mut response = match pool.forward(&request) {
            Ok(r) => r,
            Err(e) => Message::response(502, "Bad Gateway", format!("proxy: {e}\n").into_bytes()),
        };
        if close {
            response.set_header("Connection", "close");
        } else {
            response.set_header("Connection", "keep-alive");
        }
        response.write_to(reader.get_mut())?;
        if close {
            reader.get_mut().close();
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::app::{AppOptions, call};
    use std::time::Instant;

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }

    fn wait_up(addr: SocketAddr) {
        for _ in 0..200 {
            if TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{addr} did not start");
    }

    /// A `details` app with `workers` behind a proxy adding `delay`; the proxy's address.
    fn app_behind_proxy(workers: u32, delay: Delay) -> SocketAddr {
        let app = free_port();
        let opts = AppOptions {
            name: "details".into(),
            listen: app,
            delay: Delay::ZERO,
            workers,
            upstreams: vec![],
        };
        std::thread::spawn(move || crate::lab::app::serve(opts));
        wait_up(app);
        let proxy = free_port();
        let routes = vec![Route::plain(proxy, app, delay)];
        std::thread::spawn(move || serve(routes, None));
        wait_up(proxy);
        proxy
    }

    #[test]
    fn forwards_with_its_delay_and_reuses_upstream_connections() {
        let delay = Duration::from_millis(15);
        let proxy = app_behind_proxy(2, Delay::Fixed(delay));
        for _ in 0..3 {
            let t = Instant::now();
            let resp = call(proxy, "details").expect("call");
            assert_eq!(resp.status(), Some(200));
            assert!(resp.body.starts_with(b"details"));
            assert!(t.elapsed() >= delay);
        }
    }

    #[test]
    fn idle_connections_do_not_hold_up_new_ones() {
        let proxy = app_behind_proxy(1, Delay::ZERO);
        // Each holds a worker that waits for a request; more than the spare workers.
        let held: Vec<TcpStream> = (0..3 * SPARE_WORKERS)
            .map(|_| TcpStream::connect(proxy).expect("connect"))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(call(proxy, "details").map(|r| r.status()));
        });
        let status = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a new connection was served while others were held open");
        assert_eq!(status.expect("call"), Some(200));
        drop(held);
    }

    #[test]
    fn unreachable_upstream_is_a_502() {
        let proxy = free_port();
        let routes = vec![Route::plain(
            proxy,
            "127.0.0.1:1".parse().expect("addr"),
            Delay::ZERO,
        )];
        std::thread::spawn(move || serve(routes, None));
        wait_up(proxy);
        assert_eq!(call(proxy, "x").expect("call").status(), Some(502));
    }

    /// app ← B (inbound, mutual TLS) ← A (outbound, mutual TLS out) ← plaintext caller: the
    /// page arrives, A's pool makes one handshake for several requests, and B refuses a
    /// plaintext connection with a TLS alert instead of answering it.
    #[test]
    fn mutual_tls_between_two_proxies_is_pooled_and_strict() {
        use crate::lab::{
            config::TlsVersion,
            tls::{TlsFiles, TlsPolicy, mesh_name, read_counts},
        };
        use std::io::{Read, Write};

        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles::new(dir.path());
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        files
            .generate(&["productpage", "details"], [127, 0, 0, 1].into(), me)
            .expect("certs");
        let policy = TlsPolicy {
            version: TlsVersion::V1_3,
            resumption: true,
        };
        let tls = |identity: &str| ProxyTls {
            files: files.clone(),
            identity: identity.into(),
            policy,
            stats: Some(files.stats_dir().join(format!("{identity}.json"))),
        };
        let app = app_behind_proxy(2, Delay::ZERO);
        let b = free_port();
        let inbound = Route {
            tls_in: TlsIn::Mutual,
            ..Route::plain(b, app, Delay::ZERO)
        };
        let tls_b = tls("details");
        std::thread::spawn(move || serve(vec![inbound], Some(tls_b)));
        wait_up(b);
        let a = free_port();
        let outbound = Route {
            tls_out: Some(mesh_name("details")),
            ..Route::plain(a, b, Delay::ZERO)
        };
        let tls_a = tls("productpage");
        std::thread::spawn(move || serve(vec![outbound], Some(tls_a)));
        wait_up(a);
        for _ in 0..3 {
            let resp = call(a, "details").expect("call");
            assert_eq!(resp.status(), Some(200), "{resp:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
        let counts = read_counts(&files.stats_dir().join("productpage.json")).expect("A's counts");
        assert_eq!(
            (counts.client_full, counts.client_resumed),
            (1, 0),
            "{counts:?}"
        );
        let b_counts = || read_counts(&files.stats_dir().join("details.json")).expect("B's counts");
        // `wait_up`'s probe connection was a failed handshake already.
        let before = b_counts();
        assert_eq!(before.server_full, 1, "{before:?}");
        let mut plain = TcpStream::connect(b).expect("connect");
        plain
            .write_all(b"GET /details HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer);
        // 0x15: a TLS alert record, never an HTTP response.
        assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
        std::thread::sleep(Duration::from_millis(200));
        let after = b_counts();
        assert_eq!(after.failed, before.failed + 1, "{after:?}");
    }
}
