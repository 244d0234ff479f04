//! `loadgen`: an oha-compatible HTTP/1.1 and HTTP/2 load generator whose per-request records (socket
//! addresses, CLOCK_MONOTONIC timestamps) join with hopprobe's per-hop events.

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod epoll;
pub mod error;
pub mod exit;
pub mod head;
pub mod http1;
pub mod http2;
pub mod record;
pub mod report;
pub mod request;
pub mod run;
pub mod shared;
pub mod stats;
pub mod timer;
pub mod tls;
