//! The engine: one current-thread tokio runtime per worker thread, each holding its share of
//! the connections and its own statistics (merged at the end), so the hot path takes no lock.
//! HTTP/1.1 runs one request at a time per connection; HTTP/2 runs `-p` streams per connection.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    net::SocketAddr,
    rc::Rc,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::sync::mpsc;

use crate::{
    clock::{instant_at, mono_ns},
    conn::{Connection, Dial, Stream},
    error::ErrorKind,
    http1::{self, Progress, Response},
    http2::{self, H2Conn},
    record::Sample,
    request::{Deadline, Transport, deadlines, http1_request, new_sample, timeout_kind},
    shared::{Local, Shared, Slot, TargetRun},
    stats::Stats,
    timer::{Elapsed, Timer},
};

impl Deadline for Timer {
    async fn run<F: Future>(&mut self, deadline_ns: u64, fut: F) -> Result<F::Output, Elapsed> {
        Timer::run(self, instant_at(deadline_ns), fut).await
    }
}

/// Connections on tokio: any target (TLS, DNS names), through the target's `Dialer`.
struct TokioIo<'a>(&'a Shared);

impl Transport for TokioIo<'_> {
    type Conn = Connection;

    async fn dial(&self, t: usize, id: u64, dial: &mut Dial) -> Result<Connection, ErrorKind> {
        // Boxed: the dial future (a TLS handshake's state included) is large, and kept inline
        // it would make every request's future as large, copied on each request.
        Box::pin(self.0.targets[t].dialer.dial_untimed(id, dial)).await
    }

    async fn exchange(
        &self,
        conn: &mut Connection,
        t: usize,
        buf: &mut Vec<u8>,
        progress: &mut Progress,
    ) -> Result<Response, ErrorKind> {
        let target = &self.0.cfg.targets[t];
        match &mut conn.stream {
            Stream::Tcp(st) => {
                http1::exchange(st, &target.request, target.head, buf, progress).await
            }
            Stream::Tls(st) => {
                http1::exchange(st.as_mut(), &target.request, target.head, buf, progress).await
            }
        }
    }

    fn ends(conn: &Connection) -> (u64, SocketAddr, SocketAddr) {
        (conn.id, conn.local, conn.remote)
    }
}

/// One HTTP/2 connection slot, shared by the streams that use it. The first stream that finds
/// it empty dials (that request carries the dial's timings); the others wait for it.
#[derive(Default)]
struct H2Slot {
    conn: RefCell<Option<H2Conn>>,
    dialing: Cell<bool>,
    ready: tokio::sync::Notify,
}

/// Marks a dial in progress; wakes the waiting streams however the dial ends (success,
/// failure, or the request's timeout dropping it).
struct Dialing<'a>(&'a H2Slot);

impl<'a> Dialing<'a> {
    fn new(slot: &'a H2Slot) -> Dialing<'a> {
        slot.dialing.set(true);
        Dialing(slot)
    }
}

impl Drop for Dialing<'_> {
    fn drop(&mut self) {
        self.0.dialing.set(false);
        self.0.ready.notify_waiters();
    }
}

/// The slot's open connection, or a new one (then `opened` is set and `dial` filled). Without
/// keep-alive every request opens its own.
async fn h2_conn(
    tr: &TargetRun,
    slot: &H2Slot,
    keepalive: bool,
    dial: &mut Dial,
    opened: &mut bool,
) -> Result<H2Conn, ErrorKind> {
    if keepalive {
        loop {
            if let Some(c) = slot.conn.borrow().as_ref().filter(|c| c.is_open()) {
                return Ok(c.clone());
            }
            if !slot.dialing.get() {
                break;
            }
            // Single-threaded: nothing can notify between the check above and this await.
            slot.ready.notified().await;
        }
    }
    *opened = true;
    let _dialing = keepalive.then(|| Dialing::new(slot));
    let id = tr.conn_ids.fetch_add(1, Relaxed);
    let c = Box::pin(async { H2Conn::start(tr.dialer.dial(id, dial).await?).await }).await?;
    if keepalive {
        *slot.conn.borrow_mut() = Some(c.clone());
    }
    Ok(c)
}

async fn one_request_h2(shared: &Shared, t: usize, slot: &H2Slot, claim: Slot) -> Sample {
    let cfg = &shared.cfg;
    let target = &cfg.targets[t];
    let tr = &shared.targets[t];
    let start_ns = mono_ns();
    let mut s = new_sample(t, claim, start_ns, false);
    let d = deadlines(shared, t, claim, start_ns);
    let mut dial = Dial::default();
    let mut progress = Progress::default();
    let mut opened = false;
    let mut used: Option<H2Conn> = None;
    let result = tokio::time::timeout_at(instant_at(d.first), async {
        let Some(req) = target.h2.as_ref() else {
            return Err(ErrorKind::Http2);
        };
        let c = h2_conn(tr, slot, cfg.keepalive, &mut dial, &mut opened).await?;
        used = Some(c.clone());
        http2::exchange(&c, req, &mut progress).await
    })
    .await;

    s.reused = !opened;
    let dialing_done =
        !opened || dial.tls_end_ns.is_some() || (dial.local.is_some() && !target.tls);
    if opened {
        s.dial = dial;
    }
    match &used {
        Some(c) => {
            s.conn_id = c.id;
            s.local = Some(c.local);
            s.remote = Some(c.remote);
        }
        None => {
            s.local = dial.local;
            s.remote = dial.remote;
        }
    }
    s.written_ns = progress.written_ns;
    s.first_byte_ns = progress.first_byte_ns;
    let failed = match result {
        Ok(Ok(resp)) => {
            s.status = Some(resp.status);
            s.bytes = resp.body_bytes;
            s.end_ns = resp.end_ns;
            false
        }
        Ok(Err(e)) => {
            s.error = Some(e);
            s.end_ns = mono_ns();
            true
        }
        Err(_elapsed) => {
            s.end_ns = mono_ns();
            s.error = Some(timeout_kind(d.run, d.request, dialing_done, &progress));
            true
        }
    };
    // A failed request's connection is suspect: later requests open a new one (the streams
    // still running on it finish there).
    if failed && let Some(c) = &used {
        let mut cur = slot.conn.borrow_mut();
        if cur.as_ref().is_some_and(|x| x.id == c.id) {
            *cur = None;
        }
    }
    s
}

/// HTTP/2 closed model: `-p` of these share one connection slot.
async fn h2_stream_loop(local: Rc<Local>, t: usize, slot: Rc<H2Slot>) {
    let shared = local.shared.clone();
    while let Some(claim) = shared.claim(t) {
        if let Some(at) = claim.scheduled_ns {
            tokio::time::sleep_until(instant_at(at)).await;
        }
        let s = one_request_h2(&shared, t, &slot, claim).await;
        local.finish(s).await;
    }
}

/// Closed model: one connection, one request at a time, as oha and wrk do.
async fn connection_loop(local: Rc<Local>, t: usize) {
    let shared = local.shared.clone();
    let mut conn: Option<Connection> = None;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut timer = Timer::default();
    while let Some(slot) = shared.claim(t) {
        if let Some(at) = slot.scheduled_ns {
            tokio::time::sleep_until(instant_at(at)).await;
        }
        let io = TokioIo(&shared);
        let s = http1_request(&shared, t, &mut conn, slot, &mut buf, &mut timer, &io).await;
        local.finish(s).await;
    }
}

/// Open model: each request starts at its scheduled time on an idle connection or a new one,
/// whether or not earlier requests have finished.
async fn open_loop(local: Rc<Local>, t: usize, max_in_flight: u32) {
    let shared = local.shared.clone();
    let pool: Rc<RefCell<Vec<Connection>>> = Rc::new(RefCell::new(Vec::new()));
    // HTTP/2: every request is a stream on this thread's one connection to the target.
    let h2_slot = Rc::new(H2Slot::default());
    let in_flight = Rc::new(Cell::new(0u32));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(slot) = shared.claim(t) {
        if let Some(at) = slot.scheduled_ns {
            tokio::time::sleep_until(instant_at(at)).await;
        }
        while tasks.try_join_next().is_some() {}
        if in_flight.get() >= max_in_flight {
            let now = mono_ns();
            let s = Sample {
                target: t,
                seq: slot.seq,
                warmup: slot.warmup,
                scheduled_ns: slot.scheduled_ns,
                start_ns: now,
                end_ns: now,
                error: Some(ErrorKind::InFlightLimit),
                ..Sample::default()
            };
            local.finish(s).await;
            continue;
        }
        in_flight.set(in_flight.get() + 1);
        let (local, pool, in_flight, shared, h2_slot) = (
            local.clone(),
            pool.clone(),
            in_flight.clone(),
            shared.clone(),
            h2_slot.clone(),
        );
        tasks.spawn_local(async move {
            if shared.cfg.http2 {
                let s = one_request_h2(&shared, t, &h2_slot, slot).await;
                in_flight.set(in_flight.get() - 1);
                local.finish(s).await;
                return;
            }
            let mut conn = pool.borrow_mut().pop();
            let mut buf = Vec::with_capacity(8 * 1024);
            let mut timer = Timer::default();
            let io = TokioIo(&shared);
            let s = http1_request(&shared, t, &mut conn, slot, &mut buf, &mut timer, &io).await;
            if let Some(c) = conn {
                pool.borrow_mut().push(c);
            }
            in_flight.set(in_flight.get() - 1);
            local.finish(s).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs worker thread `index` of `threads` to completion; returns its per-target statistics.
pub fn worker(
    shared: Arc<Shared>,
    index: usize,
    threads: usize,
    tx: Option<mpsc::Sender<Vec<Sample>>>,
) -> std::io::Result<Vec<Stats>> {
    let n_targets = shared.targets.len();
    let local = Rc::new(Local::new(shared.clone(), tx));
    let epoll = crate::epoll::suits(&shared);
    // Which engine ran is not in the output; tests and users debugging a run read it here.
    tracing::debug!(
        engine = if epoll { "epoll" } else { "tokio" },
        thread = index,
        "worker"
    );
    if epoll {
        let ran = crate::epoll::worker(&local, index, threads);
        local.flush_blocking();
        ran?;
        return Ok(local.stats());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let set = tokio::task::LocalSet::new();
    let cfg = &shared.cfg;
    for t in 0..n_targets {
        if cfg.open_model {
            let share = (cfg.max_in_flight as usize).div_ceil(threads).max(1) as u32;
            set.spawn_local(open_loop(local.clone(), t, share));
        } else if cfg.http2 {
            for _ in (index..cfg.connections as usize).step_by(threads) {
                let slot = Rc::new(H2Slot::default());
                for _ in 0..cfg.parallel {
                    set.spawn_local(h2_stream_loop(local.clone(), t, slot.clone()));
                }
            }
        } else {
            for _ in (index..cfg.connections as usize).step_by(threads) {
                set.spawn_local(connection_loop(local.clone(), t));
            }
        }
    }
    rt.block_on(set);
    // Outside the runtime, where a blocking send is allowed.
    drop(rt);
    local.flush_blocking();
    Ok(local.stats())
}

/// How long to wait between progress/stop checks in the main thread.
pub const POLL: Duration = Duration::from_millis(100);
