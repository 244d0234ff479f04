//! The benchmark's "answers exactly 10 ms after each request" server, made to be late by
//! as little as the machine allows, so that what a client reports beyond 10 ms is the client's.
//!
//! One thread, one epoll: requests are read as they arrive and their deadlines go into a heap.
//! A deadline counts from the kernel's receive timestamp of the request (`SO_TIMESTAMPNS`; on
//! loopback that is when the client sent it), so a late wake-up to read the request delays the
//! response no more than a late wake-up to write it, and both count as the server's lateness. The thread sleeps (1 ns timer slack, `epoll_pwait2` with a
//! nanosecond timeout) until `SPIN` before the earliest deadline and then polls epoll without
//! sleeping until that deadline, so only one deadline at a time is spun for, and requests that
//! arrive meanwhile are still read at once. A thread per connection that each slept and spun
//! (the earlier server) had 16 threads competing for 2 cores, and was itself 0.5 ms late at p99.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io::{self, Write},
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;

/// Reads like `read`, and also returns when the kernel received the data: its `SO_TIMESTAMPNS`
/// (CLOCK_REALTIME) turned into an `Instant`, or now if there is none.
fn recv_stamped(s: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Instant)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: `msg` describes writable buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
    let now = Instant::now();
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = now;
    // SAFETY: walking the control messages recvmsg wrote, with libc's own macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let at = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                received = now.checked_sub(wall.saturating_sub(at)).unwrap_or(now);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, received))
}

/// How long before a deadline the thread stops sleeping: covers its (real-time) wake-up, at the
/// price of polling for that long. Short, because every µs it polls is taken from the clients on
/// 2 cores (150 µs measured no better: +0.18–0.19 ms client p50 against +0.12–0.15 ms).
const SPIN: Duration = Duration::from_micros(50);

/// How late each response was written, in µs past "request received + delay".
pub type Lateness = Arc<Mutex<Vec<u64>>>;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const LISTENER: u64 = u64::MAX;

/// Starts the server on 127.0.0.1; returns its port and its lateness log. The thread lives
/// until the process ends.
pub fn start(delay: Duration) -> Result<(u16, Lateness)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    l.set_nonblocking(true)?;
    let port = l.local_addr()?.port();
    let ep = Epoll::new()?;
    ep.add(l.as_raw_fd(), LISTENER)?;
    let lateness: Lateness = Default::default();
    let late = lateness.clone();
    std::thread::spawn(move || {
        if let Err(e) = serve(&ep, &l, delay, &late) {
            eprintln!("precise server stopped: {e}");
        }
    });
    Ok((port, lateness))
}

struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: no memory arguments; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid epoll_event, open fds.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (None: no limit) with nanosecond resolution.
    fn wait(&self, ev: &mut [libc::epoll_event], timeout: Option<Duration>) -> io::Result<usize> {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `ev` is writable for its length; `tsp` is null or points to a timespec.
        let n = unsafe {
            libc::epoll_pwait2(
                self.0.as_raw_fd(),
                ev.as_mut_ptr(),
                ev.len() as i32,
                tsp,
                std::ptr::null(),
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

/// SCHED_FIFO (lowest real-time priority) when allowed: on a busy machine a normal thread wakes
/// up whenever the scheduler gets to it, which is the server's lateness, not the client's. The
/// thread sleeps but for at most `SPIN` per deadline, so it cannot take a core for itself.
fn realtime_priority() {
    let p = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; `p` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } != 0 {
        eprintln!(
            "precise server: no SCHED_FIFO ({}); its lateness may grow",
            io::Error::last_os_error()
        );
    }
}

struct Conn {
    s: TcpStream,
    pending: Vec<u8>,
    /// Tells this connection's deadlines from those of an earlier one in the same slot.
    id: u64,
}

fn serve(ep: &Epoll, l: &TcpListener, delay: Duration, late: &Lateness) -> io::Result<()> {
    // SAFETY: prctl on the calling thread with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    realtime_priority();
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut due: BinaryHeap<Reverse<(Instant, usize, u64)>> = BinaryHeap::new();
    let mut ids = 0u64;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut buf = [0u8; 4096];
    loop {
        while let Some(&Reverse((at, i, id))) = due.peek() {
            if Instant::now() < at {
                break;
            }
            due.pop();
            if let Some(c) = conns[i].as_mut().filter(|c| c.id == id) {
                if c.s.write_all(RESPONSE).is_err() {
                    conns[i] = None;
                    continue;
                }
                let us = at.elapsed().as_micros() as u64;
                late.lock().unwrap_or_else(|p| p.into_inner()).push(us);
            }
        }
        let timeout = due.peek().map(|Reverse((at, _, _))| {
            at.saturating_duration_since(Instant::now())
                .saturating_sub(SPIN)
        });
        let n = ep.wait(&mut events, timeout)?;
        for ev in &events[..n] {
            if ev.u64 == LISTENER {
                while let Ok((s, _)) = l.accept() {
                    s.set_nonblocking(true)?;
                    s.set_nodelay(true)?;
                    let on: libc::c_int = 1;
                    // SAFETY: a valid int option on an open socket.
                    unsafe {
                        libc::setsockopt(
                            s.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_TIMESTAMPNS,
                            (&on as *const libc::c_int).cast(),
                            size_of::<libc::c_int>() as libc::socklen_t,
                        )
                    };
                    let i = conns.iter().position(Option::is_none).unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    ep.add(s.as_raw_fd(), i as u64)?;
                    ids += 1;
                    conns[i] = Some(Conn {
                        s,
                        pending: Vec::new(),
                        id: ids,
                    });
                }
                continue;
            }
            let i = ev.u64 as usize;
            let Some(c) = conns[i].as_mut() else { continue };
            let closed = loop {
                match recv_stamped(&c.s, &mut buf) {
                    Ok((0, _)) => break true,
                    Ok((k, received)) => {
                        c.pending.extend_from_slice(&buf[..k]);
                        while let Some(e) = c.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            c.pending.drain(..e + 4);
                            due.push(Reverse((received + delay, i, c.id)));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break true,
                }
            };
            if closed {
                conns[i] = None;
            }
        }
    }
}
