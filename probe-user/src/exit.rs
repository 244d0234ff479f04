//! Exit codes of every `hopprobe` subcommand: the only place their numbers appear. They agree
//! with loadgen's where both have the case; the table for both binaries is
//! `docs/exit-codes.md`.

/// The command did what was asked (`check`: every required hook is there).
pub const OK: i32 = 0;
/// Any runtime failure not listed below.
pub const FAILURE: i32 = 1;
/// Bad command line or input file (clap exits with the same code for the flags it rejects):
/// nothing was attached.
pub const USAGE: i32 = 2;
/// Missing privilege or kernel feature: nothing was attached.
pub const UNSUPPORTED: i32 = 3;
