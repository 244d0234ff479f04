//! One HTTP/1.1 request, the same for both engines (tokio in `run`, the epoll loop in
//! `epoll`): what differs between them — how a deadline is kept, how a connection is dialled
//! and read — comes in through `Deadline` and `Transport`.

use std::{future::Future, net::SocketAddr, sync::atomic::Ordering::Relaxed};

use crate::{
    clock::mono_ns,
    config::Config,
    conn::Dial,
    error::ErrorKind,
    http1::{Progress, Response},
    record::Sample,
    shared::{Shared, Slot},
    timer::Elapsed,
};

/// Runs a future until it completes or a CLOCK_MONOTONIC deadline passes.
pub(crate) trait Deadline {
    async fn run<F: Future>(&mut self, deadline_ns: u64, fut: F) -> Result<F::Output, Elapsed>;
}

/// An engine's connections: how one is opened and how a request is exchanged on it.
pub(crate) trait Transport {
    type Conn;
    /// Opens connection `id` to target `t`, with no deadline of its own (the caller's
    /// `Deadline` keeps it), filling in `dial`'s timestamps as it goes.
    async fn dial(&self, t: usize, id: u64, dial: &mut Dial) -> Result<Self::Conn, ErrorKind>;
    async fn exchange(
        &self,
        conn: &mut Self::Conn,
        t: usize,
        buf: &mut Vec<u8>,
        progress: &mut Progress,
    ) -> Result<Response, ErrorKind>;
    /// The connection's id and its local and remote addresses, for the sample.
    fn ends(conn: &Self::Conn) -> (u64, SocketAddr, SocketAddr);
}

/// One request on `conn` (dialled first when `None`; left `None` when it may not carry the
/// next request). The dial runs under the request's deadline, bounded by --connect-timeout too.
pub(crate) async fn http1_request<X: Transport>(
    shared: &Shared,
    t: usize,
    conn: &mut Option<X::Conn>,
    slot: Slot,
    buf: &mut Vec<u8>,
    deadline: &mut impl Deadline,
    io: &X,
) -> Sample {
    let cfg = &shared.cfg;
    let tr = &shared.targets[t];
    let start_ns = mono_ns();
    let mut s = new_sample(t, slot, start_ns, conn.is_some());
    let d = deadlines(shared, t, slot, start_ns);
    let mut dial = Dial::default();
    let mut progress = Progress::default();
    let mut dial_failed = None;
    if conn.is_none() {
        let connect_by = start_ns.saturating_add(tr.dialer.connect_timeout().as_nanos() as u64);
        let id = tr.conn_ids.fetch_add(1, Relaxed);
        match deadline
            .run(connect_by.min(d.first), io.dial(t, id, &mut dial))
            .await
        {
            Ok(Ok(c)) => *conn = Some(c),
            Ok(Err(e)) => dial_failed = Some(Ok(Err(e))),
            Err(_) if connect_by < d.first => {
                dial_failed = Some(Ok(Err(ErrorKind::ConnectTimeout)))
            }
            Err(elapsed) => dial_failed = Some(Err(elapsed)),
        }
    }
    let result = match dial_failed {
        Some(r) => r,
        None => {
            deadline
                .run(d.first, async {
                    let Some(c) = conn.as_mut() else {
                        return Err(ErrorKind::Connect);
                    };
                    io.exchange(c, t, buf, &mut progress).await
                })
                .await
        }
    };
    let opened = conn.as_ref().map(X::ends);
    let tls = cfg.targets[t].tls;
    if !settle_http1(&mut s, cfg, tls, dial, opened, progress, result, d) {
        *conn = None;
    }
    s
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
