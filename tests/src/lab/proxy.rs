//! The built-in sidecar and ingress proxy: HTTP/1.1, a keep-alive pool per upstream as Envoy
//! keeps, and an optional delay per request.

use std::{
    io::{self, BufReader},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::{
    app::{bind, precise_sleep},
    config::Delay,
    http::{Message, read_message},
};

/// One listener of a proxy and where it sends what it receives.
#[derive(Debug, Clone)]
pub struct Route {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub delay: Delay,
}

struct Upstream {
    conn: TcpStream,
    reader: BufReader<TcpStream>,
}

struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Upstream>>,
}

impl Pool {
    fn take(&self) -> Option<Upstream> {
        self.idle.lock().expect("not poisoned").pop()
    }

    fn connect(&self) -> io::Result<Upstream> {
        let conn = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Upstream {
            reader: BufReader::new(conn.try_clone()?),
            conn,
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
    request.write_to(&mut up.conn)?;
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
pub fn serve(routes: Vec<Route>) -> io::Result<()> {
    let mut threads = Vec::new();
    for route in routes {
        let route = Arc::new(Listener {
            socket: bind(route.listen)?,
            pool: Pool {
                addr: route.upstream,
                idle: Mutex::new(Vec::new()),
            },
            delay: route.delay,
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

/// Threads kept waiting in `accept` per listener: one takes the next connection while the
/// other is there for the one after, until its replacement has started.
const SPARE_WORKERS: usize = 2;

struct Listener {
    socket: std::net::TcpListener,
    pool: Pool,
    delay: Delay,
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
                let _ = downstream(stream, &route.pool, route.delay);
            }
            route.waiting.fetch_add(1, Ordering::SeqCst);
        }
    })
}

fn downstream(stream: TcpStream, pool: &Pool, delay: Delay) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
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
        response.write_to(&mut writer)?;
        if close {
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
        let routes = vec![Route {
            listen: proxy,
            upstream: app,
            delay,
        }];
        std::thread::spawn(move || serve(routes));
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
        let routes = vec![Route {
            listen: proxy,
            upstream: "127.0.0.1:1".parse().expect("addr"),
            delay: Delay::ZERO,
        }];
        std::thread::spawn(move || serve(routes));
        wait_up(proxy);
        assert_eq!(call(proxy, "x").expect("call").status(), Some(502));
    }
}
