//! The closed model's common case — plain TCP to an IP literal, HTTP/1.1, no `-q` — on a
//! hand-written epoll loop instead of tokio. Without keep-alive every request opens a socket,
//! and tokio's per-socket machinery (a `ScheduledIo` allocated and released, a deregistering
//! `epoll_ctl`, task and waker bookkeeping) cost about as much user time as the rest of the
//! request. Here each connection is still an `async` function (the same `http1::exchange`, the
//! same sample), polled by this loop with a no-op waker whenever epoll reports its socket, or
//! its deadline passes. A socket is registered once, edge-triggered, and leaves epoll when it
//! is closed. TLS, HTTP/2, DNS names, `-q` and the open model stay on tokio (`run`).

use std::{
    cell::{Cell, RefCell},
    future::{Future, poll_fn},
    io::{self, Read, Write},
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    pin::{Pin, pin},
    rc::Rc,
    task::{Context, Poll, Waker},
};

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    clock::mono_ns,
    conn::Dial,
    error::ErrorKind,
    http1::{self, Progress, Response},
    request::{Deadline, Transport, http1_request},
    shared::{Local, Shared},
    timer::Elapsed,
};

/// What the loop and one connection's future share.
struct Wait {
    /// When the step in progress times out (CLOCK_MONOTONIC ns); `u64::MAX`: no step.
    deadline: Cell<u64>,
    /// The loop saw `deadline` pass.
    fired: Cell<bool>,
    /// epoll events seen since the current socket was registered.
    events: Cell<u32>,
    /// The future waited for its socket during the current request.
    waited: Cell<bool>,
    /// A request was written and no epoll event has come since: its response cannot be there
    /// yet (a server answers only after the request; the bytes' arrival is an edge epoll will
    /// report), so the first read waits for that event instead of a `recv` that would return
    /// `EAGAIN`, which it did for nearly every keep-alive request (2 `recvfrom` per request).
    written_unseen: Cell<bool>,
}

impl Wait {
    fn new() -> Wait {
        Wait {
            deadline: Cell::new(u64::MAX),
            fired: Cell::new(false),
            events: Cell::new(0),
            waited: Cell::new(false),
            written_unseen: Cell::new(false),
        }
    }
}

/// What one thread's loop knows of all its connections, so that a turn costs what happened in
/// it, not a look at every connection. With a look at each per turn, user CPU per keep-alive
/// request was 3.40 µs at c = 1000 and 1.37 at c = 128; with this, 2.07 and 1.27 (wrk: 1.91
/// and 1.11; medians of 5 alternated rounds against nginx on loopback).
struct Sched {
    /// No connection's deadline is earlier (a lower bound: a deadline that moves later or is
    /// cleared leaves it, and the scan it then causes finds the true one).
    earliest: Cell<u64>,
    /// Connections that yielded, to poll again without an event.
    ready: RefCell<Vec<usize>>,
    /// Events of this `epoll_wait` not yet handed to their connections.
    unread: Cell<usize>,
}

impl Sched {
    fn set_deadline(&self, w: &Wait, deadline: u64) {
        w.deadline.set(deadline);
        self.earliest.set(self.earliest.get().min(deadline));
    }
}

/// Runs `fut` until it completes or the loop sees `deadline` pass.
async fn timed<F: Future>(cx: &Ctx<'_>, deadline: u64, fut: F) -> Result<F::Output, Elapsed> {
    let w = &*cx.w;
    cx.sched.set_deadline(w, deadline);
    w.fired.set(false);
    let mut fut = pin!(fut);
    let r = poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if w.fired.get() {
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    })
    .await;
    w.deadline.set(u64::MAX);
    r
}

/// Lets the other connections run: for a connection whose requests need no wait (a refused
/// connect can fail at once), which would otherwise keep the thread to itself.
async fn yield_now(cx: &Ctx<'_>) {
    let mut yielded = false;
    poll_fn(|_| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.sched.ready.borrow_mut().push(cx.index);
        Poll::Pending
    })
    .await
}

struct Conn {
    sock: Socket,
    id: u64,
    local: SocketAddr,
    remote: SocketAddr,
}

/// A non-blocking socket as tokio's I/O traits see it: `Pending` on `EAGAIN`, and the loop
/// polls again on the socket's next epoll event.
struct Io<'a> {
    sock: &'a Socket,
    w: &'a Wait,
}

impl Io<'_> {
    fn ready<T>(&self, r: io::Result<T>) -> Option<Poll<io::Result<T>>> {
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.w.waited.set(true);
                Some(Poll::Pending)
            }
            r => Some(Poll::Ready(r)),
        }
    }
}

impl AsyncRead for Io<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Bytes or a close that came before the write were in an earlier event's mask, and a
        // hang-up or error is not an edge that comes again: once seen, every read is tried.
        let gone = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if self.w.written_unseen.get() && self.w.events.get() & gone == 0 {
            self.w.waited.set(true);
            return Poll::Pending;
        }
        loop {
            let r = (&*self.sock).read(buf.initialize_unfilled());
            if let Some(p) = self.ready(r) {
                return p.map_ok(|n| buf.advance(n));
            }
        }
    }
}

impl AsyncWrite for Io<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            // socket2 sends with MSG_NOSIGNAL: a closed peer is an error, not a SIGPIPE.
            let r = (&*self.sock).write(b);
            if let Some(p) = self.ready(r) {
                if matches!(p, Poll::Ready(Ok(_))) {
                    self.w.written_unseen.set(true);
                }
                return p;
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One thread's epoll instance; a connection's index in the loop is its epoll data.
struct Poller {
    ep: OwnedFd,
}

impl Poller {
    fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 has no memory arguments; a non-negative result is a new fd.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(Poller {
            ep: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Edge-triggered for both directions, once per socket: closing the socket removes it.
    fn add(&self, fd: RawFd, index: usize) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: index as u64,
        };
        // SAFETY: `ev` is a valid epoll_event; both fds are open.
        if unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: `events` is writable for its length.
        let n = unsafe {
            libc::epoll_wait(
                self.ep.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

/// What a connection's future needs from the loop.
struct Ctx<'a> {
    local: &'a Local,
    poller: &'a Poller,
    sched: &'a Sched,
    w: Rc<Wait>,
    index: usize,
}

/// `Dialer::dial_untimed` for plain TCP to an IP literal, with the same timestamps.
async fn dial(cx: &Ctx<'_>, t: usize, id: u64, dial: &mut Dial) -> Result<Conn, ErrorKind> {
    let t0 = mono_ns();
    let remote = cx.local.shared.targets[t]
        .dialer
        .literal()
        .unwrap_or(Err(ErrorKind::Dns))?;
    let t1 = mono_ns();
    dial.dns_ns = Some(t1 - t0);
    dial.connect_start_ns = Some(t1);
    dial.remote = Some(remote);
    let refused = |e: io::Error| ErrorKind::from_connect(&e);
    let sock = Socket::new(
        Domain::for_address(remote),
        Type::STREAM.nonblocking(),
        None,
    )
    .map_err(refused)?;
    let in_progress = match sock.connect(&remote.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(e) => return Err(refused(e)),
    };
    cx.w.events.set(0);
    cx.w.written_unseen.set(false);
    cx.poller
        .add(sock.as_raw_fd(), cx.index)
        .map_err(|_| ErrorKind::Connect)?;
    if in_progress {
        let done = (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32;
        poll_fn(|_| {
            if cx.w.events.get() & done != 0 {
                Poll::Ready(())
            } else {
                cx.w.waited.set(true);
                Poll::Pending
            }
        })
        .await;
        if let Some(e) = sock.take_error().map_err(refused)? {
            return Err(refused(e));
        }
    }
    dial.connect_end_ns = Some(mono_ns());
    // Requests are small and latency is what we measure: no Nagle delay.
    let _ = sock.set_tcp_nodelay(true);
    let local = sock
        .local_addr()
        .map_err(refused)?
        .as_socket()
        .ok_or(ErrorKind::Connect)?;
    dial.local = Some(local);
    Ok(Conn {
        sock,
        id,
        local,
        remote,
    })
}

/// The request's deadline on this loop.
struct LoopDeadline<'a, 'b>(&'a Ctx<'b>);

impl Deadline for LoopDeadline<'_, '_> {
    async fn run<F: Future>(&mut self, deadline_ns: u64, fut: F) -> Result<F::Output, Elapsed> {
        timed(self.0, deadline_ns, fut).await
    }
}

/// Connections on this loop: plain TCP to an IP literal.
struct LoopIo<'a, 'b>(&'a Ctx<'b>);

impl Transport for LoopIo<'_, '_> {
    type Conn = Conn;

    async fn dial(&self, t: usize, id: u64, info: &mut Dial) -> Result<Conn, ErrorKind> {
        dial(self.0, t, id, info).await
    }

    async fn exchange(
        &self,
        conn: &mut Conn,
        t: usize,
        buf: &mut Vec<u8>,
        progress: &mut Progress,
    ) -> Result<Response, ErrorKind> {
        let target = &self.0.local.shared.cfg.targets[t];
        let mut io = Io {
            sock: &conn.sock,
            w: &self.0.w,
        };
        http1::exchange(&mut io, &target.request, target.head, buf, progress).await
    }

    fn ends(conn: &Conn) -> (u64, SocketAddr, SocketAddr) {
        (conn.id, conn.local, conn.remote)
    }
}

/// Requests a connection may run back to back without waiting before it lets the others run.
const UNWAITED_BEFORE_YIELD: u32 = 8;

/// Closed model: one connection, one request at a time (`run::connection_loop`).
async fn connection_loop(cx: Ctx<'_>, t: usize) {
    let shared = &cx.local.shared;
    let mut conn = None;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut unwaited = 0u32;
    while let Some(slot) = shared.claim(t) {
        cx.w.waited.set(false);
        let s = http1_request(
            shared,
            t,
            &mut conn,
            slot,
            &mut buf,
            &mut LoopDeadline(&cx),
            &LoopIo(&cx),
        )
        .await;
        cx.local.finish_blocking(s);
        // A few in a row without a wait are common with keep-alive (the response was there);
        // yielding after each would cost a loop turn and an `epoll_wait` per request.
        unwaited = if cx.w.waited.get() { 0 } else { unwaited + 1 };
        if cx.sched.unread.get() > 0 {
            // Other responses of this wake-up wait to be read and timed. Sending the next
            // request first would time them late: the write wakes the server, which on
            // loopback may take this CPU (as wrk does, requests go out after the batch).
            unwaited = 0;
            yield_now(&cx).await;
        } else if unwaited >= UNWAITED_BEFORE_YIELD {
            unwaited = 0;
            yield_now(&cx).await;
        }
    }
}

/// Whether this engine can run the whole configuration.
pub(crate) fn suits(shared: &Shared) -> bool {
    let cfg = &shared.cfg;
    !cfg.open_model
        && !cfg.http2
        && cfg.qps.is_none()
        && shared.targets.iter().all(|t| t.dialer.is_plain_literal())
        && std::env::var_os("LOADGEN_ENGINE").is_none_or(|v| v != "tokio")
}

struct Task<'a> {
    w: Rc<Wait>,
    fut: Option<Pin<Box<dyn Future<Output = ()> + 'a>>>,
}

impl Task<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) {
        if let Some(f) = self.fut.as_mut()
            && f.as_mut().poll(cx).is_ready()
        {
            self.fut = None;
        }
    }
}

/// Runs worker thread `index` of `threads`' connections to completion.
pub(crate) fn worker(local: &Local, index: usize, threads: usize) -> io::Result<()> {
    let poller = Poller::new()?;
    let sched = Sched {
        earliest: Cell::new(u64::MAX),
        ready: RefCell::new(Vec::new()),
        unread: Cell::new(0),
    };
    let shared = &local.shared;
    let mut tasks: Vec<Task<'_>> = Vec::new();
    for t in 0..shared.targets.len() {
        for _ in (index..shared.cfg.connections as usize).step_by(threads) {
            let w = Rc::new(Wait::new());
            let cx = Ctx {
                local,
                poller: &poller,
                sched: &sched,
                w: w.clone(),
                index: tasks.len(),
            };
            tasks.push(Task {
                w,
                fut: Some(Box::pin(connection_loop(cx, t))),
            });
        }
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut live = tasks.len();
    let mut poll = |task: &mut Task<'_>, live: &mut usize| {
        if task.fut.is_some() {
            task.poll(&mut cx);
            if task.fut.is_none() {
                *live -= 1;
            }
        }
    };
    for task in &mut tasks {
        poll(task, &mut live);
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut yielded = Vec::new();
    loop {
        // What yielded last turn runs now; whatever yields meanwhile, next turn.
        std::mem::swap(&mut yielded, &mut *sched.ready.borrow_mut());
        for i in yielded.drain(..) {
            poll(&mut tasks[i], &mut live);
        }
        let now = mono_ns();
        if sched.earliest.get() <= now {
            // Some deadline has passed: fire those, then learn the true earliest (those polls
            // may have set new deadlines).
            for task in tasks.iter_mut() {
                if task.fut.is_some() && task.w.deadline.get() <= now {
                    task.w.fired.set(true);
                    poll(task, &mut live);
                }
            }
            let earliest = tasks
                .iter()
                .filter(|t| t.fut.is_some())
                .map(|t| t.w.deadline.get())
                .min()
                .unwrap_or(u64::MAX);
            sched.earliest.set(earliest);
        }
        if live == 0 {
            return Ok(());
        }
        let earliest = sched.earliest.get();
        let timeout_ms = if !sched.ready.borrow().is_empty() {
            0
        } else if earliest == u64::MAX {
            -1
        } else {
            // Rounded up: waking before the deadline would only mean waiting again.
            earliest
                .saturating_sub(mono_ns())
                .div_ceil(1_000_000)
                .min(i32::MAX as u64) as i32
        };
        let n = poller.wait(&mut events, timeout_ms)?;
        for (i, ev) in events[..n].iter().enumerate() {
            sched.unread.set(n - i - 1);
            let task = &mut tasks[ev.u64 as usize];
            task.w.events.set(task.w.events.get() | ev.events);
            task.w.written_unseen.set(false);
            poll(task, &mut live);
        }
        sched.unread.set(0);
    }
}
