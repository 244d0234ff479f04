//! Exit codes of every `hopprobe` subcommand: the only place their numbers appear (the table
//! for both binaries is in `docs/exit-codes.md`; loadgen's agree where they overlap).

/// Any runtime failure not listed below.
pub const FAILURE: i32 = 1;
/// Missing privilege or kernel feature: nothing was attached.
pub const UNSUPPORTED: i32 = 3;
