//! What the worker threads share (the configuration, each target's request counter and
//! deadline) and what each keeps to itself (its statistics, its end of the records channel),
//! for both engines.

use std::{
    cell::RefCell,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};

use tokio::sync::mpsc;

use crate::{
    clock::mono_ns,
    config::Config,
    conn::Dialer,
    record::{BATCH, Sample},
    stats::Stats,
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
    pub(crate) deadline_ns: AtomicU64,
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
    pub(crate) seq: u64,
    pub(crate) warmup: bool,
    pub(crate) scheduled_ns: Option<u64>,
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
    tx: Option<mpsc::Sender<Vec<Sample>>>,
    /// Records not yet handed to the writer (`record::BATCH` at a time).
    batch: RefCell<Vec<Sample>>,
}

impl Local {
    pub fn new(shared: Arc<Shared>, tx: Option<mpsc::Sender<Vec<Sample>>>) -> Self {
        let stats = RefCell::new(vec![Stats::default(); shared.targets.len()]);
        Self {
            shared,
            stats,
            tx,
            batch: RefCell::new(Vec::new()),
        }
    }

    /// Adds `s` to the batch; the batch when it is full (or `s` alone when there are no
    /// records, which is never).
    fn batched(&self, s: Sample) -> Option<Vec<Sample>> {
        let mut b = self.batch.borrow_mut();
        if b.capacity() == 0 {
            b.reserve_exact(BATCH);
        }
        b.push(s);
        (b.len() >= BATCH).then(|| std::mem::replace(&mut *b, Vec::with_capacity(BATCH)))
    }

    /// Hands the records still in the batch to the writer: once, when the worker's
    /// connections are done (a run that ends, a deadline, Ctrl-C).
    pub fn flush_blocking(&self) {
        let rest = std::mem::take(&mut *self.batch.borrow_mut());
        if let Some(tx) = &self.tx
            && !rest.is_empty()
        {
            let _ = tx.blocking_send(rest);
        }
    }

    /// This thread's per-target statistics so far.
    pub fn stats(&self) -> Vec<Stats> {
        self.stats.borrow().clone()
    }

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
        if let Some(tx) = &self.tx
            && let Some(full) = self.batched(s)
        {
            let _ = tx.blocking_send(full);
        }
    }

    pub async fn finish(&self, s: Sample) {
        self.count(&s);
        if let Some(tx) = &self.tx
            && let Some(full) = self.batched(s)
        {
            // Bounded: when the writer falls behind, requests wait rather than memory grow.
            let _ = tx.send(full).await;
        }
    }
}
