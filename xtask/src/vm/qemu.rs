//! Booting a kernel and initramfs under qemu's software emulation, with a hard time limit.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub struct Boot {
    pub serial: String,
    pub elapsed: Duration,
    pub timed_out: bool,
    pub exit: Option<std::process::ExitStatus>,
}

/// Boots, echoes each console line prefixed with `label`, and writes the transcript to `log`.
/// qemu is killed when `limit` passes: a VM never outlives the run.
pub fn boot(
    kernel: &Path,
    initrd: &Path,
    log: &Path,
    limit: Duration,
    label: &str,
) -> Result<Boot> {
    let mut c = Command::new("qemu-system-x86_64");
    // KVM hangs on these machines; TCG (software) works everywhere, if slowly.
    c.args(["-accel", "tcg", "-m", "2G", "-smp", "2", "-no-reboot"])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-nodefaults",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        // loglevel=1 keeps kernel messages from splitting the guest's output lines; panic=-1
        // with -no-reboot turns a kernel panic into qemu's exit.
        .args([
            "-append",
            "console=ttyS0 panic=-1 loglevel=1 mitigations=off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!(
        "xtask: [{label}] booting {} under qemu (TCG)",
        kernel.display()
    );
    let start = Instant::now();
    let mut child = c.spawn().context("starting qemu-system-x86_64")?;
    let mut file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().context("piped stdout")?;
    let err = child.stderr.take().context("piped stderr")?;
    let tx2 = tx.clone();
    let readers = [
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        }),
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("qemu: {l}"));
            }
        }),
    ];
    let mut serial = String::new();
    let mut timed_out = false;
    let mut take = |l: String, serial: &mut String| {
        let l = l.trim_end_matches('\r').to_owned();
        println!("[{label}] {l}");
        let _ = writeln!(file, "{l}");
        serial.push_str(&l);
        serial.push('\n');
    };
    let exit = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => take(l, &mut serial),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > limit {
            timed_out = true;
            eprintln!("xtask: [{label}] no power-off after {limit:?}: killing qemu");
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
    };
    let elapsed = start.elapsed();
    for r in readers {
        let _ = r.join();
    }
    while let Ok(l) = rx.try_recv() {
        take(l, &mut serial);
    }
    Ok(Boot {
        serial,
        elapsed,
        timed_out,
        exit,
    })
}
