//! `loadgen`: an oha-compatible HTTP load generator (its own issue fills this in).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "oha-compatible HTTP load generator (not yet implemented)"
)]
struct Cli {
    /// Target URL.
    url: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "loadgen is not implemented yet (target {:?}); use oha or wrk meanwhile",
        cli.url
    )
}
