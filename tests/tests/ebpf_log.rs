//! `--ebpf-log`: the eBPF programs' diagnostics reach hopprobe's stderr, named by program,
//! when asked (by the flag or by `RUST_LOG`) and at the level asked, and never by default.
//!
//! The condition provoked is the cheapest one: a socket that closes without hopprobe having
//! seen it open (counted in `untracked_close`, logged at debug), i.e. a connection opened
//! before hopprobe attached and closed after.

use std::{
    net::{TcpListener, TcpStream},
    time::Duration,
};

use nix::sys::signal::Signal;
use testkit::{emulation::slack, leftovers, probe::Hopprobe};

/// What the debug record of an untracked close says (`probe-ebpf/src/tracepoints.rs`).
const UNTRACKED: &str = "hp_sock_set_state: socket ";
const UNTRACKED_TAIL: &str = "without being seen open";

/// hopprobe's stderr around a loopback connection that it sees close but not open.
fn around_an_untracked_close(flag: Option<&str>, rust_log: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");

    let mut args = vec!["run", "--no-datapath", "--interval", "1h"];
    if let Some(level) = flag {
        args.extend(["--ebpf-log", level]);
    }
    let mut probe = Hopprobe::try_start_logging(&testkit::probe::binary(), &args, rust_log)
        .unwrap_or_else(|e| panic!("{e}"));
    drop(client);
    drop(server);
    drop(listener);
    // Both ends reach CLOSE within a loopback round trip; the reader polls every 100 ms.
    std::thread::sleep(slack(Duration::from_millis(500)));
    probe.signal(Signal::SIGINT);
    let status = probe.wait(Duration::from_secs(15));
    let stderr = probe.stderr();
    assert!(
        status.success(),
        "hopprobe exited {status}; stderr:\n{stderr}"
    );
    stderr
}

fn logged_untracked(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.contains(UNTRACKED) && l.contains(UNTRACKED_TAIL))
}

#[test]
fn ebpf_diagnostics_reach_stderr_only_when_asked() {
    if !testkit::root::available("ebpf_diagnostics_reach_stderr_only_when_asked") {
        return;
    }
    let on = around_an_untracked_close(Some("debug"), "info");
    assert!(
        logged_untracked(&on),
        "--ebpf-log debug: no untracked-close record:\n{on}"
    );
    assert!(on.contains("DEBUG"), "{on}");

    let by_env = around_an_untracked_close(None, "info,hopprobe::ebpf=debug");
    assert!(
        logged_untracked(&by_env),
        "RUST_LOG=hopprobe::ebpf=debug: no untracked-close record:\n{by_env}"
    );

    // Off by default, even where RUST_LOG would show debug records of every other target.
    for (flag, rust_log) in [
        (None, "info"),
        (None, "debug"),
        (Some("off"), "info,hopprobe::ebpf=debug"),
        // A warn level keeps the kernel's debug records from being written at all.
        (Some("warn"), "info,hopprobe::ebpf=debug"),
    ] {
        let stderr = around_an_untracked_close(flag, rust_log);
        assert!(
            !logged_untracked(&stderr),
            "--ebpf-log {flag:?}, RUST_LOG={rust_log}: a debug record was written:\n{stderr}"
        );
    }
    assert_eq!(leftovers::all(), Vec::<String>::new());
}
