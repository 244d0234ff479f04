//! Types shared by the eBPF programs and `hopprobe`.
//!
//! Every struct here crosses the kernel/user boundary byte for byte: `repr(C)`, explicit padding
//! fields, no `bool` or `Option`, and a size assertion so that a layout change fails to compile
//! instead of corrupting data at run time.
#![no_std]

pub mod conn;
pub mod exchange;
pub mod hist;
pub mod layout;
pub mod ratelimit;
pub mod sockops;
pub mod stats;
pub mod tcflow;
pub mod tls;
