//! loadgen's exit codes: the only place their numbers appear. They agree with hopprobe's where
//! both have the case (1 failure, 2 bad command line; 3, hopprobe's "unsupported", is not
//! used here); the table for both binaries is `docs/exit-codes.md`.

/// The run completed (failed requests are results, not a failure of the run).
pub const OK: i32 = 0;
/// The run failed: an I/O error on the report or the records.
pub const FAILED: i32 = 1;
/// Bad command line or configuration: nothing was sent (clap exits 2 for bad flags too).
pub const USAGE: i32 = 2;
/// Stopped by Ctrl-C (SIGINT): the partial report is printed. 128 + SIGINT, what a shell
/// reports for a process killed by Ctrl-C.
pub const INTERRUPTED: i32 = 130;
