//! A Bookinfo-style app: an HTTP/1.1 server with a service time, a fixed number of workers and
//! upstream calls.
//!
//! Workers take *requests*, not connections: a worker reads a request only when it is free, so
//! with too few workers new connections wait in the kernel's accept queue and requests on
//! kept-alive connections wait in the socket's receive queue — the queues a real prefork or
//! single-threaded server builds up, and the ones hopprobe must be able to see. Leader/follower:
//! one idle worker at a time polls the listener and the idle connections.

use std::{
    io::{self, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    unistd::{pipe, read, write},
};

use super::{
    config::Delay,
    http::{Message, read_message},
};

#[cfg(test)]
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct AppOptions {
    pub name: String,
    pub listen: SocketAddr,
    pub delay: Delay,
    pub workers: u32,
    /// (service name, address) called in order for every request.
    pub upstreams: Vec<(String, SocketAddr)>,
}

struct Conn {
    reader: BufReader<TcpStream>,
}

struct Shared {
    listener: TcpListener,
    idle: Mutex<Vec<Conn>>,
    /// Held by the worker that polls; says whose turn it is: accepting a new connection or
    /// serving a kept-alive one.
    leader: Mutex<bool>,
    wake_rx: OwnedFd,
    wake_tx: OwnedFd,
}

/// Binds with a deep accept queue: saturation experiments run up to 128 connections.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Sleeps for `d`, ending within a few microseconds of it: the accuracy matrix compares
/// hopprobe's figures with the delays injected, so the delays must be what the lab says.
/// A sleep alone overshoots by the timer slack (50 µs by default, set to 1 ns here) and the
/// wake-up latency (tens of µs on a VM); sleeping to just short of the end and spinning the
/// rest takes both out.
pub fn precise_sleep(d: Duration) {
    const SPIN: Duration = Duration::from_micros(200);
    if d.is_zero() {
        return;
    }
    let deadline = std::time::Instant::now() + d;
    // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    if let Some(coarse) = d.checked_sub(SPIN) {
        std::thread::sleep(coarse);
    }
    while std::time::Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

pub fn serve(opts: AppOptions) -> io::Result<()> {
    let listener = bind(opts.listen)?;
    let (wake_rx, wake_tx) = pipe().map_err(io::Error::from)?;
    let shared = Arc::new(Shared {
        listener,
        idle: Mutex::new(Vec::new()),
        leader: Mutex::new(false),
        wake_rx,
        wake_tx,
    });
    let opts = Arc::new(opts);
    let workers: Vec<_> = (0..opts.workers)
        .map(|_| {
            let (shared, opts) = (shared.clone(), opts.clone());
            std::thread::spawn(move || worker(&shared, &opts))
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn worker(shared: &Shared, opts: &AppOptions) {
    loop {
        let Some(mut conn) = next_ready(shared) else {
            continue;
        };
        if let Ok(true) = handle_one(&mut conn, opts) {
            shared.idle.lock().expect("not poisoned").push(conn);
            let _ = write(&shared.wake_tx, b"w");
        }
    }
}

fn accept(shared: &Shared) -> Option<Conn> {
    shared.listener.accept().ok().map(|(stream, _)| {
        let _ = stream.set_nodelay(true);
        Conn {
            reader: BufReader::new(stream),
        }
    })
}

/// Waits, as the leader, until a connection has a request or a new one can be accepted.
fn next_ready(shared: &Shared) -> Option<Conn> {
    let mut accept_first = shared.leader.lock().expect("not poisoned");
    *accept_first = !*accept_first;
    loop {
        // A request already buffered by a previous read needs no poll.
        {
            let mut idle = shared.idle.lock().expect("not poisoned");
            if let Some(i) = idle.iter().position(|c| !c.reader.buffer().is_empty()) {
                return Some(idle.remove(i));
            }
        }
        let fds: Vec<i32> = shared
            .idle
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|c| c.reader.get_ref().as_raw_fd())
            .collect();
        let mut pollfds = vec![
            PollFd::new(shared.listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(shared.wake_rx.as_fd(), PollFlags::POLLIN),
        ];
        // SAFETY: the fds belong to connections in `idle`, which only this leader removes
        // while it holds the lock; workers only add.
        let borrowed: Vec<_> = fds
            .iter()
            .map(|&fd| unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
            .collect();
        pollfds.extend(
            borrowed
                .iter()
                .map(|fd| PollFd::new(*fd, PollFlags::POLLIN)),
        );
        if poll(&mut pollfds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
        if ready(&pollfds[1]) {
            let mut buf = [0u8; 64];
            let _ = read(shared.wake_rx.as_raw_fd(), &mut buf);
        }
        // Turns alternate between accepting and serving kept-alive connections: serving them
        // first whenever one was ready left new connections (a proxy growing its pool) in the
        // accept queue for seconds under load.
        if *accept_first
            && ready(&pollfds[0])
            && let Some(conn) = accept(shared)
        {
            return Some(conn);
        }
        // `idle` is in the order connections were returned: taking the first ready one serves
        // them round robin, as a server's event loop does.
        if let Some(i) = pollfds[2..].iter().position(ready) {
            let fd = fds[i];
            let mut idle = shared.idle.lock().expect("not poisoned");
            if let Some(j) = idle
                .iter()
                .position(|c| c.reader.get_ref().as_raw_fd() == fd)
            {
                return Some(idle.remove(j));
            }
            continue;
        }
        if ready(&pollfds[0])
            && let Some(conn) = accept(shared)
        {
            return Some(conn);
        }
    }
}

/// Serves one request; `Ok(true)` when the connection stays open for another.
fn handle_one(conn: &mut Conn, opts: &AppOptions) -> io::Result<bool> {
    let Some(request) = read_message(&mut conn.reader)? else {
        return Ok(false);
    };
    let mut status = 200;
    let mut body = format!("{} {}\n", opts.name, request.path().unwrap_or("/"));
    for (name, addr) in &opts.upstreams {
        match call(*addr, name) {
            Ok(resp) if resp.status() == Some(200) => {
                for line in String::from_utf8_lossy(&resp.body).lines() {
                    body.push_str("  ");
                    body.push_str(line);
                    body.push('\n');
                }
            }
            Ok(resp) => {
                status = 502;
                body.push_str(&format!(
                    "  {name}: upstream answered {:?}\n",
                    resp.status()
                ));
            }
            Err(e) => {
                status = 502;
                body.push_str(&format!("  {name}: {e}\n"));
            }
        }
    }
    // The service time is the app's own work, on top of its upstream calls.
    precise_sleep(opts.delay.sample(rand::random::<f64>()));
    let reason = if status == 200 { "OK" } else { "Bad Gateway" };
    let mut response = Message::response(status, reason, body.into_bytes());
    let keep = !request.wants_close();
    if !keep {
        response.set_header("Connection", "close");
    }
    let stream = conn.reader.get_mut();
    response.write_to(stream)?;
    stream.flush()?;
    Ok(keep)
}

/// One upstream call on a fresh connection, as Bookinfo's apps make them.
pub fn call(addr: SocketAddr, name: &str) -> io::Result<Message> {
    super::http::get(addr, &format!("/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(
        name: &str,
        delay: Delay,
        workers: u32,
        upstreams: Vec<(String, SocketAddr)>,
    ) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let opts = AppOptions {
            name: name.into(),
            listen: addr,
            delay,
            workers,
            upstreams,
        };
        std::thread::spawn(move || serve(opts));
        for _ in 0..100 {
            if TcpStream::connect(addr).is_ok() {
                return addr;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("app did not start");
    }

    #[test]
    fn assembles_upstream_bodies() {
        let leaf = start("ratings", Delay::ZERO, 2, vec![]);
        let mid = start("reviews", Delay::ZERO, 2, vec![("ratings".into(), leaf)]);
        let resp = call(mid, "reviews").expect("call");
        assert_eq!(resp.status(), Some(200));
        let body = String::from_utf8(resp.body).expect("utf-8");
        assert!(body.starts_with("reviews /reviews\n"), "{body}");
        assert!(body.contains("  ratings /ratings"), "{body}");
    }

    #[test]
    fn upstream_failure_is_a_502_naming_it() {
        let dead: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let app = start(
            "productpage",
            Delay::ZERO,
            1,
            vec![("details".into(), dead)],
        );
        let resp = call(app, "productpage").expect("call");
        assert_eq!(resp.status(), Some(502));
        assert!(String::from_utf8_lossy(&resp.body).contains("details"));
    }

    #[test]
    fn one_worker_serialises_requests() {
        let delay = Duration::from_millis(20);
        let app = start("details", Delay::Fixed(delay), 1, vec![]);
        let t = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || call(app, "details").expect("call")))
            .collect();
        for h in handles {
            assert_eq!(h.join().expect("thread").status(), Some(200));
        }
        // Four requests through one worker take at least four service times.
        assert!(t.elapsed() >= 4 * delay, "{:?}", t.elapsed());
    }

    #[test]
    fn keep_alive_connections_are_served_repeatedly() {
        let app = start("details", Delay::ZERO, 1, vec![]);
        let s = TcpStream::connect(app).expect("connect");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        for _ in 0..3 {
            Message::request("GET", "/", "d")
                .write_to(&mut w)
                .expect("write");
            let resp = read_message(&mut r).expect("read").expect("response");
            assert_eq!(resp.status(), Some(200));
        }
    }
}
