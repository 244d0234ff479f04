//! What loadgen puts on the wire is what oha puts there: the same request bytes (but for the
//! user-agent's product name) for the same flags, and the same side closing the connection.
//! oha's requests are kept in `data/oha-wire/`, captured from the real oha by this test when
//! it finds one (`OHA_BIN`, or `oha` on PATH / in ~/.cargo/bin): then it also checks that the
//! kept files are still what that oha sends (`UPDATE_GOLDEN=1` rewrites them from it).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::*;

/// Flag sets users run, named for the kept capture. Each runs one connection, two requests.
const CASES: &[(&str, &[&str])] = &[
    (
        "published",
        &[
            "--disable-keepalive",
            "--disable-compression",
            "--insecure",
            "--ipv4",
        ],
    ),
    ("default", &[]),
    ("disable-keepalive", &["--disable-keepalive"]),
    ("disable-compression", &["--disable-compression"]),
    (
        "post-with-headers",
        &[
            "-m",
            "POST",
            "-d",
            "hello",
            "-T",
            "text/plain",
            "-H",
            "x-run: 7",
            "-H",
            "accept: text/html",
            "-a",
            "user:secret",
        ],
    ),
];

fn oha() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OHA_BIN") {
        return Some(p.into());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(Path::new(&h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("oha"))
        .find(|p| p.is_file())
}

/// The requests one client run sent to a fresh capture server, with the port and the
/// user-agent's product (`oha/1.16.0`, `loadgen/0.1.0`) replaced by placeholders.
fn capture(bin: &Path, flags: &[&str]) -> Vec<String> {
    let server = capture_server();
    let url = server.url();
    let mut args = vec![&url[..], "-n", "2", "-c", "1", "--no-tui"];
    args.extend_from_slice(flags);
    let out = Command::new(bin).args(&args).output().expect("run client");
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let port = format!(":{}", server.addr.port());
    server
        .heads()
        .iter()
        .map(|h| {
            let text = String::from_utf8(h.clone()).expect("an ASCII request");
            text.replace(&port, ":PORT")
                .split("\r\n")
                .map(|line| match line.split_once(": ") {
                    Some((n, v)) if n.eq_ignore_ascii_case("user-agent") && !v.contains(' ') => {
                        let product = v.split('/').next().unwrap_or(v);
                        if product == "oha" || product == "loadgen" {
                            format!("{n}: CLIENT/VERSION")
                        } else {
                            line.to_owned()
                        }
                    }
                    _ => line.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\r\n")
        })
        .collect()
}

fn kept(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/oha-wire")
        .join(format!("{name}.http"))
}

/// Shown with the line ends visible, so a missing `\r` or a reordered header reads plainly.
fn show(requests: &[String]) -> String {
    requests
        .iter()
        .map(|r| r.replace("\r\n", "\\r\\n\n"))
        .collect::<Vec<_>>()
        .join("---- next request ----\n")
}

#[test]
fn loadgen_sends_the_bytes_oha_sends() {
    let live = oha();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let loadgen_bin = Path::new(env!("CARGO_BIN_EXE_loadgen"));
    for (name, flags) in CASES {
        let ours = capture(loadgen_bin, flags);
        assert_eq!(ours.len(), 2, "{name}: two requests captured");
        let path = kept(name);
        if let Some(oha) = &live {
            let theirs = capture(oha, flags);
            if update {
                std::fs::write(&path, theirs.join("\0")).expect("write the capture");
            }
            let kept_text = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                kept_text,
                theirs.join("\0"),
                "{name}: {} no longer matches this oha ({}); UPDATE_GOLDEN=1 rewrites it",
                path.display(),
                oha.display()
            );
        }
        let theirs: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .split('\0')
            .map(str::to_owned)
            .collect();
        assert_eq!(
            show(&ours),
            show(&theirs),
            "{name} ({flags:?}): loadgen's requests (left) differ from oha's (right)"
        );
    }
}

/// TIME_WAIT sockets towards or from `port` on 127.0.0.1: (the server's side, the client's).
fn time_wait(port: u16) -> (usize, usize) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port_of = |addr: &str| {
        addr.split_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let (mut server, mut client) = (0, 0);
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[3] != "06" {
            continue;
        }
        if port_of(f[1]) == Some(port) {
            server += 1;
        } else if port_of(f[2]) == Some(port) {
            client += 1;
        }
    }
    (server, client)
}

/// With `--disable-keepalive` the request says `connection: close`, so the server closes
/// and keeps TIME_WAIT, as with oha (checked on the same server when oha is here);
/// `--client-close` keeps the other behaviour (no header; loadgen closes after the response
/// and the client keeps TIME_WAIT).
#[test]
fn without_keepalive_the_server_closes_unless_asked_otherwise() {
    let n = 200;
    let loadgen_bin = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let mut runs = vec![
        (loadgen_bin.clone(), &["--disable-keepalive"][..], true),
        (
            loadgen_bin,
            &["--disable-keepalive", "--client-close"][..],
            false,
        ),
    ];
    if let Some(oha) = oha() {
        runs.push((oha, &["--disable-keepalive"][..], true));
    }
    for (bin, flags, server_closes) in runs {
        let server = capture_server();
        let url = server.url();
        let n_s = n.to_string();
        let mut args = vec![&url[..], "-n", &n_s, "-c", "4", "--no-tui"];
        args.extend_from_slice(flags);
        let out = Command::new(&bin).args(&args).output().expect("run client");
        assert!(out.status.success(), "{} {flags:?}", bin.display());
        assert_eq!(server.heads().len(), n, "{} {flags:?}", bin.display());
        let (on_server, on_client) = time_wait(server.addr.port());
        let heads = server.heads();
        let said_close = heads
            .iter()
            .filter(|h| String::from_utf8_lossy(h).contains("\r\nconnection: close\r\n"))
            .count();
        if server_closes {
            assert_eq!(
                said_close, n,
                "{flags:?}: every request says connection: close"
            );
            // Most, not all: the client closes as soon as it has read the response, as oha
            // (hyper) does, and on a busy machine that sometimes comes before the server's
            // close (oha here: up to 40 of 200 on the client's side). Under qemu's emulated
            // CPU (the VM matrix sets HOPPROBE_EMULATED_CPU) that race is the emulator's
            // scheduling, about even (98 / 104 once): printed there, not asserted.
            let what = format!(
                "{} {flags:?}: TIME_WAIT on the server {on_server}, on the client {on_client}",
                bin.display()
            );
            if std::env::var_os("HOPPROBE_EMULATED_CPU").is_some() {
                eprintln!("emulated CPU, not asserted: {what}");
            } else {
                assert!(on_server > n / 2 && on_client < n / 2, "{what}");
            }
        } else {
            assert_eq!(
                said_close, 0,
                "{flags:?}: no request says connection: close"
            );
            assert!(
                on_client >= n * 9 / 10 && on_server <= n / 10,
                "{} {flags:?}: TIME_WAIT on the server {on_server}, on the client {on_client}",
                bin.display()
            );
        }
    }
}
