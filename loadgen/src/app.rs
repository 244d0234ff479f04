//! One whole run: validate, start the workers and the records writer, show progress, print the
//! report. Exit codes: `exit`.

use std::{
    fs::File,
    io::{BufWriter, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use hopprobe_formats::loadgen_records;

use crate::{
    cli::{Opts, OutputFormat},
    clock::{mono_ns, realtime_ns},
    config::{Config, ConfigError},
    conn::Dialer,
    exit,
    record::{CsvSink, Header, HeaderTarget, Writer},
    report::{self, TargetReport},
    run,
    shared::Shared,
    stats::Stats,
    tls::{self, TlsConfigError},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    #[error("cannot create {what} {path}: {source}")]
    Create {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("writing the records or CSV: {0}")]
    Records(std::io::Error),
    #[error("writing the report: {0}")]
    Report(std::io::Error),
    #[error("starting a worker thread: {0}")]
    Thread(std::io::Error),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) | AppError::Tls(_) | AppError::Create { .. } => exit::USAGE,
            _ => exit::FAILED,
        }
    }
}

fn open_output(cfg: &Config) -> Result<Box<dyn Write + Send>, AppError> {
    Ok(match &cfg.output {
        Some(p) => Box::new(BufWriter::new(File::create(p).map_err(|source| {
            AppError::Create {
                what: "output file",
                path: p.clone(),
                source,
            }
        })?)),
        None => Box::new(BufWriter::new(std::io::stdout())),
    })
}

pub fn run(opts: &Opts) -> Result<i32, AppError> {
    let cfg = Config::from_opts(opts)?;
    let tls_config = if cfg.targets.iter().any(|t| t.tls) {
        Some(tls::client_config(
            cfg.insecure,
            cfg.cacert.as_deref(),
            cfg.http2,
        )?)
    } else {
        None
    };
    let mut dialers = Vec::new();
    for t in &cfg.targets {
        let tls = match (&tls_config, t.tls) {
            (Some(c), true) => Some((c.clone(), tls::server_name(&t.host)?)),
            _ => None,
        };
        dialers.push(Dialer::new(
            &t.host,
            t.port,
            cfg.family,
            tls,
            cfg.connect_timeout,
        ));
    }

    let mut output = Some(open_output(&cfg)?);
    let csv = (cfg.format == OutputFormat::Csv).then(|| CsvSink {
        out: output.take().unwrap_or_else(|| Box::new(std::io::sink())),
        start_ns: 0,
    });
    let names: Vec<String> = cfg.targets.iter().map(|t| t.name.clone()).collect();
    let needs_writer = cfg.records.is_some() || csv.is_some();
    let records_path = cfg.records.clone();
    let threads = cfg.threads;
    let progress_on = cfg.progress;
    let shared = Arc::new(Shared::new(cfg, dialers));
    let header = Header {
        record: loadgen_records::HEADER,
        version: loadgen_records::VERSION,
        clock: loadgen_records::CLOCK,
        monotonic_ns: mono_ns(),
        realtime_unix_ns: realtime_ns(),
        targets: shared
            .cfg
            .targets
            .iter()
            .map(|t| HeaderTarget {
                name: &t.name,
                url: &t.url,
            })
            .collect(),
        args: std::env::args().collect(),
    };
    let writer = if needs_writer {
        let csv = csv.map(|mut c| {
            c.start_ns = shared.start_ns;
            c
        });
        Some(
            Writer::start(records_path.as_deref(), &header, csv, names).map_err(|source| {
                AppError::Create {
                    what: "records file",
                    path: records_path.clone().unwrap_or_default(),
                    source,
                }
            })?,
        )
    } else {
        None
    };

    let finished = Arc::new(AtomicUsize::new(0));
    // When the last worker finished: the run's end. The supervisor looks every `run::POLL`
    // (100 ms), so the time after joining it was up to that late, which made a 1 s run's
    // requests/s up to 10 % low, in steps (988, 898, 824 req/s for the same 1000 requests).
    let last_end = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for i in 0..threads {
        let shared = shared.clone();
        let tx = writer.as_ref().map(|w| w.tx.clone());
        let finished = finished.clone();
        let last_end = last_end.clone();
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{i}"))
            .spawn(move || {
                let r = run::worker(shared, i, threads, tx);
                last_end.fetch_max(mono_ns(), Relaxed);
                finished.fetch_add(1, Relaxed);
                r
            })
            .map_err(AppError::Thread)?;
        handles.push(h);
    }
    let interrupted = supervise(&shared, &finished, threads, progress_on);
    let mut per_target = vec![Stats::default(); shared.targets.len()];
    for h in handles {
        match h.join() {
            Ok(Ok(stats)) => {
                for (acc, s) in per_target.iter_mut().zip(stats.iter()) {
                    acc.merge(s);
                }
            }
            Ok(Err(e)) => return Err(AppError::Thread(e)),
            Err(_) => return Err(AppError::Thread(std::io::Error::other("worker panicked"))),
        }
    }
    let end_ns = match last_end.load(Relaxed) {
        0 => mono_ns(),
        t => t,
    };
    if let Some(w) = writer {
        w.finish().map_err(AppError::Records)?;
    }

    let cfg = &shared.cfg;
    let reports: Vec<TargetReport<'_>> = cfg
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| TargetReport {
            name: &t.name,
            url: &t.url,
            stats: &per_target[i],
            total_secs: (end_ns.saturating_sub(shared.measured_start(i)) as f64 / 1e9).max(1e-9),
        })
        .collect();
    if let Some(mut out) = output {
        match cfg.format {
            OutputFormat::Text => report::text::write_all(&mut out, &reports),
            OutputFormat::Json => hopprobe_formats::to_pretty(&report::json::report(&reports))
                .map_err(std::io::Error::from)
                .and_then(|text| out.write_all(text.as_bytes())),
            OutputFormat::Csv | OutputFormat::Quiet => Ok(()),
        }
        .and_then(|()| out.flush())
        .map_err(AppError::Report)?;
    }
    Ok(if interrupted {
        exit::INTERRUPTED
    } else {
        exit::OK
    })
}

/// Waits for the workers, drawing the progress bar and turning the first Ctrl-C into a stop
/// (in-flight requests finish within their timeout) and a second one into an exit.
fn supervise(shared: &Shared, finished: &AtomicUsize, threads: usize, progress: bool) -> bool {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => {
            while finished.load(Relaxed) < threads {
                std::thread::sleep(run::POLL);
            }
            return false;
        }
    };
    let cfg = &shared.cfg;
    let bar = progress.then(|| {
        let (len, template) = match (cfg.requests, cfg.duration) {
            (Some(n), _) => (
                (n + cfg.warmup) * cfg.targets.len() as u64,
                "{bar:40} {pos}/{len} requests {elapsed_precise} {per_sec}",
            ),
            (None, Some(d)) => (d.as_millis() as u64, "{bar:40} {elapsed_precise} / {msg}"),
            (None, None) => (0, "{pos}"),
        };
        let b = indicatif::ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            b.set_style(style);
        }
        if let Some(d) = cfg.duration {
            b.set_message(humantime::format_duration(d).to_string());
        }
        b
    });
    let interrupted = rt.block_on(async {
        let mut interrupted = false;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            if finished.load(Relaxed) >= threads {
                break;
            }
            tokio::select! {
                r = &mut ctrl_c, if !interrupted => {
                    if r.is_ok() {
                        interrupted = true;
                        shared.stop.store(true, Relaxed);
                        eprintln!("loadgen: interrupted; finishing in-flight requests (Ctrl-C again to quit now)");
                        tokio::spawn(async {
                            if tokio::signal::ctrl_c().await.is_ok() {
                                std::process::exit(exit::INTERRUPTED);
                            }
                        });
                    }
                }
                () = tokio::time::sleep(run::POLL) => {}
            }
            if let Some(b) = &bar {
                if cfg.requests.is_some() {
                    b.set_position(shared.targets.iter().map(|t| t.done.load(Relaxed)).sum());
                } else {
                    let started = shared.measured_start(0);
                    b.set_position(mono_ns().saturating_sub(started) / 1_000_000);
                }
            }
        }
        interrupted
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(rt);
    interrupted
}
