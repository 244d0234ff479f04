//! The two ring buffers the kernel fills (socket exchanges, datapath exchanges), registered
//! with the runtime in one place and read by one routine.

use aya::maps::{MapData, RingBuf};
use probe_common::{exchange::Exchange, tcflow::TcExchange};
use tokio::io::{
    Interest,
    unix::{AsyncFd, AsyncFdReadyMutGuard},
};

use super::RunError;
use crate::attach::probe::Probe;

/// What the rings' records go to.
pub trait Consumer {
    fn exchange(&mut self, x: &Exchange);
    fn datapath(&mut self, x: &TcExchange);
    /// Records too short to be what their ring holds.
    fn short(&mut self, n: u64);
}

pub struct Ring {
    fd: AsyncFd<RingBuf<MapData>>,
    what: &'static str,
}

impl Ring {
    fn register(ring: RingBuf<MapData>, what: &'static str) -> Result<Self, RunError> {
        // SAFETY: the RingBuf owns its map fd and always returns that same fd until dropped.
        let fd =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
                RunError::Io {
                    context: format!("polling the {what}"),
                    source: e.into(),
                }
            })?;
        Ok(Self { fd, what })
    }

    /// Resolves when the kernel has woken the ring; the guard borrows only this ring, so the
    /// loop can wait on both at once and hand the ready one everything it needs.
    pub async fn readable(&mut self) -> Result<Ready<'_>, RunError> {
        let what = self.what;
        self.fd
            .readable_mut()
            .await
            .map(Ready)
            .map_err(|source| RunError::Io {
                context: format!("polling the {what}"),
                source,
            })
    }
}

/// A ring the kernel said is readable.
pub struct Ready<'a>(AsyncFdReadyMutGuard<'a, RingBuf<MapData>>);

pub struct Rings {
    pub exchanges: Ring,
    pub datapath: Ring,
}

impl Rings {
    pub fn take(probe: &mut Probe) -> Result<Self, RunError> {
        Ok(Self {
            exchanges: Ring::register(probe.take_exchanges()?, "exchange ring buffer")?,
            datapath: Ring::register(probe.take("TC_FLOW_EVENTS")?, "datapath ring buffer")?,
        })
    }

    /// Reads everything waiting in both.
    pub fn drain_all(&mut self, to: &mut impl Consumer) {
        drain_exchanges(self.exchanges.fd.get_mut(), to);
        drain_datapath(self.datapath.fd.get_mut(), to);
    }

    /// Leaves the runtime (the probe is detached by then) and reads what is left.
    pub fn drain_last(self, to: &mut impl Consumer) {
        drain_exchanges(&mut self.exchanges.fd.into_inner(), to);
        drain_datapath(&mut self.datapath.fd.into_inner(), to);
    }
}

impl Ready<'_> {
    pub fn exchanges(mut self, to: &mut impl Consumer) {
        drain_exchanges(self.0.get_inner_mut(), to);
        self.0.clear_ready();
    }

    pub fn datapath(mut self, to: &mut impl Consumer) {
        drain_datapath(self.0.get_inner_mut(), to);
        self.0.clear_ready();
    }
}

fn drain_exchanges(ring: &mut RingBuf<MapData>, to: &mut impl Consumer) {
    let short = drain(ring, |x: &Exchange| to.exchange(x));
    to.short(short);
}

fn drain_datapath(ring: &mut RingBuf<MapData>, to: &mut impl Consumer) {
    let short = drain(ring, |x: &TcExchange| to.datapath(x));
    to.short(short);
}

/// Reads every item of a ring buffer as a `T`; returns how many were too short to be one.
fn drain<T: Copy>(ring: &mut RingBuf<MapData>, mut each: impl FnMut(&T)) -> u64 {
    let mut short = 0;
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<T>() {
            // SAFETY: T is plain data written whole by the kernel; read_unaligned copes with
            // any offset.
            let value = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) };
            each(&value);
        } else {
            short += 1;
        }
    }
    short
}
