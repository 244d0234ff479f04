//! Field offsets of the tracepoints the probe reads.
//!
//! Rust eBPF has no CO-RE relocations, so the programs read tracepoint records at offsets that
//! userspace takes from tracefs (`events/<group>/<name>/format`) and writes into a global before
//! loading. The defaults are the layout of 6.1 through 6.18, which lets the programs run if the
//! format file cannot be read.

use core::mem::size_of;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetStateLayout {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// Explicit so the struct has no implicit padding.
    pub _pad: [u16; 5],
}
const _: () = assert!(size_of::<SetStateLayout>() == 32);

impl SetStateLayout {
    pub const DEFAULT: Self = Self {
        skaddr: 8,
        oldstate: 16,
        newstate: 20,
        sport: 24,
        dport: 26,
        family: 28,
        protocol: 30,
        saddr: 32,
        daddr: 36,
        saddr_v6: 40,
        daddr_v6: 56,
        _pad: [0; 5],
    };
}

#[cfg(feature = "user")]
// SAFETY: repr(C) plain data without implicit padding (asserted above).
unsafe impl aya::Pod for SetStateLayout {}
