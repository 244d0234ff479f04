//! The engine: one current-thread tokio runtime per worker thread, each holding its share of
//! the connections and its own statistics (merged at the end), so the hot path takes no lock.
//! HTTP/1.1 runs one request at a time per connection; HTTP/2 runs `-p` streams per connection.

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

use crate::{
    clock::{instant_at, mono_ns},
    config::Config,
    conn::{Connection, Dial, Dialer, Stream},
    error::ErrorKind,
    http1::{self, Progress, Response},
    http2::{self, H2Conn},
    record::Sample,
    stats::Stats,
    timer::{Elapsed, Timer},
};

/// Per-target state shared by all worker threads.
pub struct TargetRun {
    pub dialer: Dialer,
    next: AtomicU64,
    /// Completed requests, warm-up included (for the progress bar).
    pub done: AtomicU64,
    /// When the first measured (non-warm-up) request was claimed; 0 until then.
    pub measured_start_ns: AtomicU64,
    /// End of a `-z` run, set when the measured phase starts; 0 until then.
    deadline_ns: AtomicU64,
    pub(crate) conn_ids: AtomicU64,
}

pub struct Shared {
    pub cfg: Config,
    pub targets: Vec<TargetRun>,
    pub stop: AtomicBool,
    pub start_ns: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    seq: u64,
    warmup: bool,
    scheduled_ns: Option<u64>,
}

impl Shared {
    pub fn new(cfg: Config, dialers: Vec<Dialer>) -> Shared {
        let targets = dialers
            .into_iter()
            .map(|dialer| TargetRun {
                dialer,
                next: AtomicU64::new(0),
                done: AtomicU64::new(0),
                measured_start_ns: AtomicU64::new(0),
                deadline_ns: AtomicU64::new(0),
                conn_ids: AtomicU64::new(0),
            })
            .collect();
        Shared {
            cfg,
            targets,
            stop: AtomicBool::new(false),
            start_ns: mono_ns(),
        }
    }

    pub(crate) fn claim(&self, t: usize) -> Option<Slot> {
        if self.stop.load(Relaxed) {
            return None;
        }
        let tr = &self.targets[t];
        let seq = tr.next.fetch_add(1, Relaxed);
        let warmup = seq < self.cfg.warmup;
        if let Some(n) = self.cfg.requests
            && seq >= self.cfg.warmup + n
        {
            return None;
        }
        let scheduled_ns = self
            .cfg
            .qps
            .map(|q| self.start_ns + (seq as f64 * 1e9 / q) as u64);
        if seq == self.cfg.warmup {
            let now = scheduled_ns.unwrap_or_else(mono_ns).max(mono_ns());
            tr.measured_start_ns.store(now, Relaxed);
            if let Some(d) = self.cfg.duration {
                tr.deadline_ns.store(now + d.as_nanos() as u64, Relaxed);
            }
        }
        if !warmup && self.cfg.duration.is_some() {
            let deadline = tr.deadline_ns.load(Relaxed);
            let when = scheduled_ns.unwrap_or_else(mono_ns);
            if deadline != 0 && when >= deadline {
                return None;
            }
        }
        Some(Slot {
            seq,
            warmup,
            scheduled_ns,
        })
    }

    pub fn measured_start(&self, t: usize) -> u64 {
        match self.targets[t].measured_start_ns.load(Relaxed) {
            0 => self.start_ns,
            v => v,
        }
    }
}

/// A worker thread's own aggregates and its end of the records channel.
pub(crate) struct Local {
    pub shared: Arc<Shared>,
    stats: RefCell<Vec<Stats>>,
    tx: Option<mpsc::Sender<Sample>>,
}

impl Local {
    fn count(&self, s: &Sample) {
        let t = s.target;
        if !s.warmup {
            let start = self.shared.measured_start(t);
            self.stats.borrow_mut()[t].add(s, start, self.shared.cfg.latency_correction);
        }
        self.shared.targets[t].done.fetch_add(1, Relaxed);
    }

    /// `finish` outside tokio (the epoll engine): a full records channel blocks the thread.
    pub fn finish_blocking(&self, s: Sample) {
        self.count(&s);
        if let Some(tx) = &self.tx {
            let _ = tx.blocking_send(s);
        }
    }

    async fn finish(&self, s: Sample) {
        self.count(&s);
        if let Some(tx) = &self.tx {
            // Bounded: when the writer falls behind, requests wait rather than memory grow.
            let _ = tx.send(s).await;
        }
    }
}

/// The request's own deadline (`-t`), the run's (`-z` without `-w`), and the earlier of both,
/// in CLOCK_MONOTONIC ns.
pub(crate) fn deadlines(shared: &Shared, t: usize, slot: Slot, start_ns: u64) -> Deadlines {
    let cfg = &shared.cfg;
    let request = start_ns.saturating_add(cfg.timeout.as_nanos() as u64);
    let run = match shared.targets[t].deadline_ns.load(Relaxed) {
        0 => None,
        _ if cfg.wait_ongoing || slot.warmup => None,
        d => Some(d),
    };
    Deadlines {
        first: run.map_or(request, |r| r.min(request)),
        run,
        request,
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    pub first: u64,
    pub run: Option<u64>,
    pub request: u64,
}

/// What a request that ran out of time is counted as, by how far it got.
pub(crate) fn timeout_kind(
    run_deadline: Option<u64>,
    request_deadline: u64,
    connected: bool,
    progress: &Progress,
) -> ErrorKind {
    if run_deadline.is_some_and(|r| r <= request_deadline) {
        ErrorKind::AbortedDeadline
    } else if !connected {
        ErrorKind::ConnectTimeout
    } else if progress.first_byte_ns.is_none() {
        ErrorKind::NeverAnswered
    } else {
        ErrorKind::Timeout
    }
}

/// A new sample for `slot`, started now.
pub(crate) fn new_sample(t: usize, slot: Slot, start_ns: u64, reused: bool) -> Sample {
    Sample {
        target: t,
        seq: slot.seq,
        warmup: slot.warmup,
        scheduled_ns: slot.scheduled_ns,
        start_ns,
        reused,
        ..Sample::default()
    }
}

/// The outcome of an HTTP/1.1 request, into its sample (both engines). `opened` is the
/// connection the request ran on, if it got one; returns whether that connection may carry
/// the next request.
#[expect(
    clippy::too_many_arguments,
    reason = "everything a request found out, kept in the caller's locals until here"
)]
pub(crate) fn settle_http1(
    s: &mut Sample,
    cfg: &Config,
    tls: bool,
    dial: Dial,
    opened: Option<(u64, SocketAddr, SocketAddr)>,
    progress: Progress,
    result: Result<Result<Response, ErrorKind>, Elapsed>,
    d: Deadlines,
) -> bool {
    let dialing_done = s.reused || dial.tls_end_ns.is_some() || dial.local.is_some();
    s.dial = dial;
    match opened {
        Some((id, local, remote)) => {
            s.conn_id = id;
            s.local = Some(local);
            s.remote = Some(remote);
        }
        None => {
            s.local = dial.local;
            s.remote = dial.remote;
        }
    }
    s.written_ns = progress.written_ns;
    s.first_byte_ns = progress.first_byte_ns;
    match result {
        Ok(Ok(resp)) => {
            s.status = Some(resp.status);
            s.bytes = resp.body_bytes;
            s.end_ns = resp.end_ns;
            resp.reusable && cfg.keepalive
        }
        Ok(Err(e)) => {
            s.error = Some(e);
            s.end_ns = mono_ns();
            false
        }
        Err(Elapsed) => {
            s.end_ns = mono_ns();
            let tls_pending = s.dial.local.is_some() && tls && s.dial.tls_end_ns.is_none();
            s.error = Some(timeout_kind(
                d.run,
                d.request,
                dialing_done && (s.reused || !tls_pending),
                &progress,
            ));
            false
        }
    }
}

async fn one_request(
    shared: &Shared,
    t: usize,
    conn: &mut Option<Connection>,
    slot: Slot,
    buf: &mut Vec<u8>,
    timer: &mut Timer,
) -> Sample {
    let cfg = &shared.cfg;
    let target = &cfg.targets[t];
    let tr = &shared.targets[t];
    let start_ns = mono_ns();
    let mut s = new_sample(t, slot, start_ns, conn.is_some());
    let d = deadlines(shared, t, slot, start_ns);
    let deadline = instant_at(d.first);

    let mut dial = Dial::default();
    let mut progress = Progress::default();
    // The dial runs under the same per-connection timer, bounded by --connect-timeout too.
    let mut dial_failed = None;
    if conn.is_none() {
        let connect_by = Instant::now() + tr.dialer.connect_timeout();
        let id = tr.conn_ids.fetch_add(1, Relaxed);
        // Boxed: the dial future (a TLS handshake's state included) is large, and kept inline
        // it would make every request's future as large, copied on each request.
        let dialing = Box::pin(tr.dialer.dial_untimed(id, &mut dial));
        match timer.run(connect_by.min(deadline), dialing).await {
            Ok(Ok(c)) => *conn = Some(c),
            Ok(Err(e)) => dial_failed = Some(Ok(Err(e))),
            Err(_) if connect_by < deadline => {
                dial_failed = Some(Ok(Err(ErrorKind::ConnectTimeout)))
            }
            Err(elapsed) => dial_failed = Some(Err(elapsed)),
        }
    }
    let result = match dial_failed {
        Some(r) => r,
        None => {
            timer
                .run(deadline, async {
                    let Some(c) = conn.as_mut() else {
                        return Err(ErrorKind::Connect);
                    };
                    match &mut c.stream {
                        Stream::Tcp(st) => {
                            http1::exchange(st, &target.request, target.head, buf, &mut progress)
                                .await
                        }
                        Stream::Tls(st) => {
                            http1::exchange(
                                st.as_mut(),
                                &target.request,
                                target.head,
                                buf,
                                &mut progress,
                            )
                            .await
                        }
                    }
                })
                .await
        }
    };
    let opened = conn.as_ref().map(|c| (c.id, c.local, c.remote));
    if !settle_http1(&mut s, cfg, target.tls, dial, opened, progress, result, d) {
        *conn = None;
    }
    s
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
        let s = one_request(&shared, t, &mut conn, slot, &mut buf, &mut timer).await;
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
            let s = one_request(&shared, t, &mut conn, slot, &mut buf, &mut Timer::default()).await;
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
    tx: Option<mpsc::Sender<Sample>>,
) -> std::io::Result<Vec<Stats>> {
    let n_targets = shared.targets.len();
    let local = Rc::new(Local {
        shared: shared.clone(),
        stats: RefCell::new(vec![Stats::default(); n_targets]),
        tx,
    });
    if crate::epoll::suits(&shared) {
        crate::epoll::worker(&local, index, threads)?;
        let stats = local.stats.borrow().clone();
        return Ok(stats);
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
    let stats = local.stats.borrow().clone();
    Ok(stats)
}

/// How long to wait between progress/stop checks in the main thread.
pub const POLL: Duration = Duration::from_millis(100);
