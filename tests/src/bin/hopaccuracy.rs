//! `hopaccuracy` (`cargo xtask accuracy`): the ground-truth matrix of the per-hop engine in
//! the lab; prints expected vs measured per hop and exits 1 when a row is out of tolerance.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use testkit::accuracy::{self, Options, Programs};

#[derive(Parser, Debug)]
#[command(
    name = "hopaccuracy",
    about = "hopprobe's per-hop figures against the delays injected in the lab"
)]
struct Cli {
    /// Prefix of the labs' names.
    #[arg(long, default_value = "hpacc")]
    name: String,
    /// Requests per concurrency-1 run.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(20..))]
    requests: u32,
    /// D ∈ {0, 1 ms}, A ∈ {0, 2 ms} instead of the full 3 × 3 grid.
    #[arg(long)]
    quick: bool,
    /// The hopprobe to measure with [default: the one built next to this program]. `cargo
    /// xtask accuracy` passes the release build: a debug one's own work perturbs the lab.
    #[arg(long, value_name = "PATH")]
    hopprobe: Option<PathBuf>,
    /// The loadgen to load the lab with [default: the one built next to this program].
    #[arg(long, value_name = "PATH")]
    loadgen: Option<PathBuf>,
    /// Only the keep-alive run (c = 16 kept-alive connections, joined by `hopprobe report`).
    #[arg(long)]
    only_keepalive: bool,
    /// Keep each run's hopprobe summary and loadgen report (JSON) in this directory.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: locating this program: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let programs = Programs {
        hoplab: dir.join("hoplab"),
        hopprobe: cli.hopprobe.unwrap_or_else(|| dir.join("hopprobe")),
        loadgen: cli.loadgen.unwrap_or_else(|| dir.join("loadgen")),
    };
    if let Some(missing) = programs.missing() {
        eprintln!("error: {} not found: build it first", missing.display());
        return ExitCode::from(2);
    }
    let mut opts = Options::full(&cli.name);
    opts.requests = cli.requests;
    opts.keep = cli.keep;
    opts.only_keepalive = cli.only_keepalive;
    if cli.quick {
        opts.sidecar_delays.truncate(2);
        opts.app_delays.truncate(2);
    }
    eprintln!(
        "D ∈ {:?} × A ∈ {:?}, {} requests each at c=1, then c={} against a one-worker app, \
         then c={} kept alive",
        opts.sidecar_delays,
        opts.app_delays,
        opts.requests,
        opts.connections,
        opts.keepalive_connections
    );
    let started = std::time::Instant::now();
    let report = accuracy::run(&programs, &opts, |rows| {
        for r in rows {
            eprintln!("{r}");
        }
    });
    match report {
        Ok(report) => {
            println!("{report}");
            eprintln!("in {:.0} s", started.elapsed().as_secs_f64());
            if report.failures().next().is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
