//! Per-request records: what one request did, streamed as JSON Lines to `--records` (and as
//! oha's CSV rows for `--output-format csv`) by a dedicated writer thread behind a bounded
//! channel, so a slow disk slows the run down instead of filling memory. A records file named
//! `*.zst` is zstd-compressed on that thread too.

use std::{io::Write, net::SocketAddr, path::Path, thread::JoinHandle};

use hopprobe_formats::{compressed::TextWriter, loadgen_records, write_line};
use tokio::sync::mpsc;

use crate::{conn::Dial, error::ErrorKind};

/// Records in flight between the workers and the writer thread: at most 1024 × 304 bytes.
/// The queue's memory is allocated as it fills, so a long run (whose writer falls behind now
/// and then) reached more of it than a short one: with 16 Ki records, up to 5 MB, and 10 M
/// requests peaked 12 % above 10 k (docs/results/bench-loadgen.md, 2026-12-04).
pub const CHANNEL_CAPACITY: usize = 1024 / BATCH;

/// Records a worker hands over at once. One at a time, the writer thread was woken (a futex
/// call each side) for nearly every record, which cost a third of keep-alive requests/s on 2
/// cores (181 k futex calls per 100 k requests, `strace -f -c`, 2026-12-04).
pub const BATCH: usize = 64;

#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub target: usize,
    pub seq: u64,
    pub warmup: bool,
    pub conn_id: u64,
    /// The request used a connection an earlier request opened.
    pub reused: bool,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub scheduled_ns: Option<u64>,
    pub start_ns: u64,
    /// This request's own dial (not set when `reused`).
    pub dial: Dial,
    pub written_ns: Option<u64>,
    pub first_byte_ns: Option<u64>,
    pub end_ns: u64,
    pub status: Option<u16>,
    pub bytes: u64,
    pub error: Option<ErrorKind>,
}

/// First line of a records file (`hopprobe_formats::loadgen_records`), with borrowed names.
pub type Header<'a> = loadgen_records::Header<&'a str>;
pub type HeaderTarget<'a> = loadgen_records::HeaderTarget<&'a str>;

/// One request's line: borrows the target's name and the error's, so that writing a record
/// allocates nothing.
type Line<'a> = loadgen_records::Request<&'a str>;

fn line<'a>(s: &Sample, names: &'a [String]) -> Line<'a> {
    Line {
        target: names.get(s.target).map_or("", String::as_str),
        seq: s.seq,
        warmup: s.warmup,
        conn: s.conn_id,
        reused: s.reused,
        local: s.local,
        remote: s.remote,
        scheduled_ns: s.scheduled_ns,
        start_ns: s.start_ns,
        dns_ns: s.dial.dns_ns,
        connect_start_ns: s.dial.connect_start_ns,
        connect_end_ns: s.dial.connect_end_ns,
        tls_end_ns: s.dial.tls_end_ns,
        tls_resumed: s.dial.tls_resumed,
        written_ns: s.written_ns,
        first_byte_ns: s.first_byte_ns,
        end_ns: s.end_ns,
        status: s.status,
        bytes: s.bytes,
        error: s.error.map(ErrorKind::name),
    }
}

pub struct CsvSink {
    pub out: Box<dyn Write + Send>,
    /// oha's request-start column is relative to the start of the run.
    pub start_ns: u64,
}

pub struct Writer {
    pub tx: mpsc::Sender<Vec<Sample>>,
    thread: JoinHandle<std::io::Result<u64>>,
}

impl Writer {
    pub fn start(
        records: Option<&Path>,
        header: &Header<'_>,
        csv: Option<CsvSink>,
        names: Vec<String>,
    ) -> std::io::Result<Writer> {
        let mut records = match records {
            Some(p) => {
                let mut w = TextWriter::create(p, 256 * 1024)?;
                write_line(&mut w, header)?;
                Some(w)
            }
            None => None,
        };
        let mut csv = csv;
        if let Some(c) = csv.as_mut() {
            writeln!(
                c.out,
                "request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status"
            )?;
        }
        let (tx, mut rx) = mpsc::channel::<Vec<Sample>>(CHANNEL_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("loadgen-records".into())
            .spawn(move || -> std::io::Result<u64> {
                let mut n = 0u64;
                while let Some(batch) = rx.blocking_recv() {
                    for s in &batch {
                        if let Some(w) = records.as_mut() {
                            write_line(w, &line(s, &names))?;
                        }
                        if let Some(c) = csv.as_mut()
                            && !s.warmup
                            && s.error.is_none()
                        {
                            write_csv(c, s)?;
                        }
                        n += 1;
                    }
                }
                if let Some(w) = records {
                    w.finish()?;
                }
                if let Some(c) = csv.as_mut() {
                    c.out.flush()?;
                }
                Ok(n)
            })?;
        Ok(Writer { tx, thread })
    }

    /// Waits for every record to be written; call once all senders are dropped.
    pub fn finish(self) -> std::io::Result<u64> {
        drop(self.tx);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("records writer panicked")))
    }
}

fn write_csv(c: &mut CsvSink, s: &Sample) -> std::io::Result<()> {
    let secs = |ns: u64| ns as f64 / 1e9;
    let (dns, dialup) = match (s.dial.dns_ns, s.dial.connect_start_ns) {
        (Some(d), Some(cs)) => {
            let ready = s.dial.tls_end_ns.or(s.dial.connect_end_ns).unwrap_or(cs);
            (d, ready - cs)
        }
        _ => (0, 0),
    };
    writeln!(
        c.out,
        "{},{},{},{},{},{},{}",
        secs(s.start_ns.saturating_sub(c.start_ns)),
        secs(dns),
        secs(dialup),
        secs(s.first_byte_ns.map_or(0, |f| f.saturating_sub(s.start_ns))),
        secs(s.end_ns.saturating_sub(s.start_ns)),
        s.bytes,
        s.status.unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use hopprobe_formats::testing::golden;

    /// Memory flat in `-n`: what the records queue can hold is a fixed, small amount.
    #[test]
    fn the_records_queue_holds_at_most_half_a_megabyte() {
        // Each queued batch, plus the one each worker fills and the one being written.
        let bytes = CHANNEL_CAPACITY * BATCH * std::mem::size_of::<Sample>();
        assert!(bytes <= 512 * 1024, "{bytes} bytes");
    }

    #[test]
    fn the_records_file_is_the_golden_file() {
        let path =
            std::env::temp_dir().join(format!("loadgen-golden-{}.jsonl", std::process::id()));
        let header = Header {
            record: "header",
            version: 1,
            clock: "CLOCK_MONOTONIC",
            monotonic_ns: 1_000_000_000,
            realtime_unix_ns: 1_767_225_600_000_000_000,
            targets: vec![
                HeaderTarget {
                    name: "default",
                    url: "http://10.77.0.1:30080/",
                },
                HeaderTarget {
                    name: "tls \"quoted\"",
                    url: "https://[fd00::1]:8443/x?y=1",
                },
            ],
            args: [
                "loadgen",
                "http://10.77.0.1:30080/",
                "-c",
                "4",
                "--records",
                "r.jsonl",
            ]
            .map(String::from)
            .to_vec(),
        };
        let names = vec!["default".to_owned(), "tls \"quoted\"".to_owned()];
        let w = Writer::start(Some(&path), &header, None, names).expect("writer");
        // A new TLS connection, a reused one, an open-model request, a failure with no
        // response, an IPv6 target, a warm-up request.
        let samples = [
            Sample {
                seq: 0,
                conn_id: 1,
                local: Some("10.77.0.2:40000".parse().expect("addr")),
                remote: Some("10.77.0.1:30080".parse().expect("addr")),
                start_ns: 1_000_100_000,
                dial: Dial {
                    dns_ns: Some(12_000),
                    connect_start_ns: Some(1_000_112_000),
                    connect_end_ns: Some(1_000_260_000),
                    tls_end_ns: Some(1_001_100_000),
                    tls_resumed: Some(false),
                    ..Dial::default()
                },
                written_ns: Some(1_001_110_000),
                first_byte_ns: Some(1_002_000_000),
                end_ns: 1_002_050_000,
                status: Some(200),
                bytes: 1_234,
                ..Sample::default()
            },
            Sample {
                seq: 1,
                conn_id: 1,
                reused: true,
                local: Some("10.77.0.2:40000".parse().expect("addr")),
                remote: Some("10.77.0.1:30080".parse().expect("addr")),
                scheduled_ns: Some(1_002_000_000),
                start_ns: 1_002_060_000,
                written_ns: Some(1_002_070_000),
                first_byte_ns: Some(1_003_000_000),
                end_ns: 1_003_000_500,
                status: Some(503),
                bytes: 0,
                ..Sample::default()
            },
            Sample {
                seq: 2,
                conn_id: 2,
                local: Some("10.77.0.2:40002".parse().expect("addr")),
                remote: Some("10.77.0.1:30080".parse().expect("addr")),
                start_ns: 1_004_000_000,
                dial: Dial {
                    dns_ns: Some(0),
                    connect_start_ns: Some(1_004_000_000),
                    ..Dial::default()
                },
                end_ns: 1_005_000_000,
                error: Some(ErrorKind::ConnectionReset),
                ..Sample::default()
            },
            Sample {
                target: 1,
                seq: 3,
                conn_id: 3,
                local: Some("[fd00::2]:51000".parse().expect("addr")),
                remote: Some("[fd00::1]:8443".parse().expect("addr")),
                start_ns: 1_006_000_000,
                dial: Dial {
                    dns_ns: Some(30_000),
                    connect_start_ns: Some(1_006_030_000),
                    connect_end_ns: Some(1_006_100_000),
                    tls_end_ns: Some(1_006_500_000),
                    tls_resumed: Some(true),
                    ..Dial::default()
                },
                written_ns: Some(1_006_510_000),
                first_byte_ns: Some(1_007_000_000),
                end_ns: 1_007_000_001,
                status: Some(200),
                bytes: 18_446_744_073_709_551_615,
                ..Sample::default()
            },
            Sample {
                seq: 4,
                warmup: true,
                start_ns: 1_008_000_000,
                end_ns: 1_008_000_000,
                error: Some(ErrorKind::Dns),
                ..Sample::default()
            },
        ];
        for s in samples {
            w.tx.blocking_send(vec![s]).expect("send");
        }
        assert_eq!(w.finish().expect("finish"), 5);
        let text = std::fs::read_to_string(&path).expect("records");
        let _ = std::fs::remove_file(&path);
        golden("loadgen-records.jsonl", &text);
    }
}
