//! The `hopprobe` binary as a user meets it: check, privileges, bad flags, stopping and
//! detaching.

use std::{
    io::Read,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use nix::sys::signal::Signal;
use serde_json::Value;
use testkit::{
    leftovers,
    netns::{NetNs, unique_name},
    probe::{self, Hopprobe},
};

const UNSUPPORTED: i32 = 3;

fn hopprobe(args: &[&str]) -> Output {
    Command::new(probe::binary())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run hopprobe")
}

fn text(o: &Output) -> String {
    testkit::describe(o)
}

/// A copy of the binary that an unprivileged user may execute (the build tree may not be).
fn world_executable_copy(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let copy = dir.join("hopprobe");
    std::fs::copy(probe::binary(), &copy).expect("copy binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

fn as_nobody(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("NO_COLOR", "1")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody")
}

#[test]
fn malformed_flags_exit_2_with_a_message() {
    let o = hopprobe(&["run", "--duration", "ten"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is not a duration"), "{}", text(&o));
    let o = hopprobe(&["run", "--interval", "0s"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = hopprobe(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `--metrics-addr`: what cannot be served is refused before anything is attached.
#[test]
fn an_unusable_metrics_address_exits_2_naming_it() {
    let o = hopprobe(&["run", "--metrics-addr", "localhost:port"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--metrics-addr"), "{}", text(&o));
    let o = hopprobe(&["run", "--metrics-max-series", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--metrics-addr"), "{}", text(&o));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let o = hopprobe(&["run", "--metrics-addr", &addr, "--duration", "1s"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("--metrics-addr {addr}: Address already in use")),
        "{}",
        text(&o)
    );
}

/// [`hopprobe`] at `info`, whatever `RUST_LOG` the tests run with: the assertions read its log.
fn hopprobe_logging(args: &[&str]) -> Output {
    Command::new(probe::binary())
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .output()
        .expect("run hopprobe")
}

/// What the user names and is not there stops `run` with exit 2 before anything is attached;
/// the uplink hopprobe looks for by itself may be missing, and then only the datapath hops are
/// left out, with a warning.
#[test]
fn a_named_uplink_or_netns_that_is_not_there_exits_2_naming_it() {
    if !testkit::root::available("a_named_uplink_or_netns_that_is_not_there_exits_2_naming_it") {
        return;
    }
    // No default route in it, and an interface that hopprobe's own namespace does not have.
    let ns = NetNs::new("u").expect("namespace");
    let (iface, peer) = (unique_name("a"), unique_name("b"));
    ns.exec(&[
        "ip", "link", "add", &iface, "type", "veth", "peer", "name", &peer,
    ])
    .expect("veth in the namespace");
    let path = format!("/run/netns/{}", ns.name);
    let gone = format!("/run/netns/{}", unique_name("x"));
    // A file that is not a namespace (the VMs' root has no /etc/hostname).
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let plain = file.path().to_str().expect("utf-8").to_owned();
    let cases: [(&[&str], String); 6] = [
        (
            &["--uplink", "hptnosuch0"],
            "--uplink hptnosuch0: no such interface in hopprobe's network namespace".into(),
        ),
        (
            &["--uplink", &iface],
            format!("--uplink {iface}: no such interface in hopprobe's network namespace"),
        ),
        (
            &["--netns", &path, "--uplink", "hptnosuch0"],
            format!("--uplink hptnosuch0: no such interface in network namespace {path}"),
        ),
        (
            &["--netns", &gone],
            format!("--netns {gone}: No such file or directory"),
        ),
        (
            &["--netns", &plain],
            format!("--netns {plain}: not a network namespace"),
        ),
        (
            &["--cgroup-root", "/hptnosuch"],
            "--cgroup-root: opening cgroup root /hptnosuch".into(),
        ),
    ];
    for (args, named) in cases {
        let mut full = vec!["run", "--duration", "5s"];
        full.extend_from_slice(args);
        let o = hopprobe_logging(&full);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(&named), "{args:?}: {}", text(&o));
        // Refused before attaching: the plan is logged as the programs go in.
        assert!(!text(&o).contains("attach plan"), "{args:?}: {}", text(&o));
        assert_eq!(leftovers::bpf_programs(), Vec::<String>::new(), "{args:?}");
    }

    // Positive control: the same interface where it is.
    let o = hopprobe_logging(&[
        "run",
        "--duration",
        "1s",
        "--netns",
        &path,
        "--uplink",
        &iface,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("watching interface interface={iface}")),
        "{}",
        text(&o)
    );
    // Looked for, not named: the namespace has no default route, so the datapath hops are left
    // out and the rest is measured.
    let o = hopprobe_logging(&["run", "--duration", "1s", "--netns", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("datapath hops unavailable")
            && text(&o).contains("no default route to find the uplink by"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("attached hooks="), "{}", text(&o));

    // And `/readyz` and `/metrics` say what is missing, while ready.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut probe = Hopprobe::start(
        &probe::binary(),
        &["run", "--netns", &path, "--metrics-addr", &addr],
    );
    let get = |path: &str| -> String {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        std::io::Write::write_all(&mut s, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .expect("request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("response");
        text
    };
    let ready = get("/readyz");
    assert!(
        ready.starts_with("HTTP/1.0 200")
            && ready.contains("ready; missing: datapath (no default route to find the uplink by"),
        "{ready}"
    );
    let metrics = get("/metrics");
    assert!(
        metrics.contains("hopprobe_missing{part=\"datapath\"} 1"),
        "{metrics}"
    );
    probe.signal(Signal::SIGTERM);
    assert!(probe.wait(Duration::from_secs(10)).success());
    drop(ns);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

/// Colour codes only at a terminal: `kubectl logs`, log collectors and files get plain text.
/// Needs no root: the flag is refused before anything is attached.
#[test]
fn logs_off_a_terminal_are_plain_text() {
    let args = ["run", "--pod-ifaces", "eni["];
    let o = Command::new(probe::binary())
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .output()
        .expect("run hopprobe");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("ERROR --pod-ifaces: bad interface pattern"),
        "{stderr:?}"
    );
    assert!(!stderr.contains("\x1b["), "{stderr:?}");

    // Positive control: at a terminal (util-linux's `script` lends one) the same line is
    // coloured, unless NO_COLOR says otherwise.
    let at_a_terminal = |no_color: Option<&str>| {
        let line = format!("'{}' {}", probe::binary().display(), args.join(" "));
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"])
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdin(std::process::Stdio::null());
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        c.output()
    };
    match at_a_terminal(None) {
        Ok(o) => {
            let shown = String::from_utf8_lossy(&o.stdout);
            assert!(shown.contains("\x1b[31mERROR"), "{shown:?}");
            let o = at_a_terminal(Some("1")).expect("script ran once");
            let shown = String::from_utf8_lossy(&o.stdout);
            assert!(shown.contains("ERROR --pod-ifaces"), "{shown:?}");
            assert!(!shown.contains("\x1b["), "{shown:?}");
        }
        Err(e) => eprintln!("NOT CHECKED: colour at a terminal (`script`: {e})"),
    }
}

/// `--log-format json` (the DaemonSet's): every line one JSON object, fields beside the
/// message, no colour even at a terminal.
#[test]
fn the_json_log_is_one_object_a_line() {
    let o = Command::new(probe::binary())
        .args(["--log-format", "json", "run", "--pod-ifaces", "eni["])
        .env("RUST_LOG", "info")
        .output()
        .expect("run hopprobe");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("--pod-ifaces: bad interface pattern"))
            && l["timestamp"].is_string()),
        "{stderr}"
    );
    let o = hopprobe(&["--log-format", "yaml", "check"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn without_privilege_check_and_run_say_so() {
    if !testkit::root::available("without_privilege_check_and_run_say_so") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = world_executable_copy(dir.path());

    let o = as_nobody(&bin, &["check"]);
    assert_eq!(o.status.code(), Some(UNSUPPORTED), "{}", text(&o));
    assert!(text(&o).contains("missing privilege"), "{}", text(&o));
    assert!(text(&o).contains("NOT OK"), "{}", text(&o));

    let o = as_nobody(&bin, &["run", "--duration", "1s"]);
    assert_eq!(o.status.code(), Some(UNSUPPORTED), "{}", text(&o));
    assert!(text(&o).contains("missing privilege"), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));

    // Told what it lacks, not that a namespace it may not enter is no namespace.
    let o = as_nobody(
        &bin,
        &["run", "--duration", "1s", "--netns", "/proc/1/ns/net"],
    );
    assert_eq!(o.status.code(), Some(UNSUPPORTED), "{}", text(&o));
    assert!(text(&o).contains("missing privilege"), "{}", text(&o));
}

/// `CONFIG_<name>` from the running kernel's config, when the kernel exposes it.
fn kernel_config(name: &str) -> Option<bool> {
    let mut gz = Vec::new();
    std::fs::File::open("/proc/config.gz")
        .ok()?
        .read_to_end(&mut gz)
        .ok()?;
    let mut config = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut config)
        .ok()?;
    let set = format!("CONFIG_{name}=y");
    Some(config.lines().any(|l| l == set))
}

#[test]
fn check_reports_this_kernels_hooks_truthfully() {
    if !testkit::root::available("check_reports_this_kernels_hooks_truthfully") {
        return;
    }
    let o = hopprobe(&["check", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("check --json is JSON");
    let available = |hook: &str| -> bool {
        report["hooks"]
            .as_array()
            .expect("hooks")
            .iter()
            .find(|h| h["hook"] == hook)
            .unwrap_or_else(|| panic!("{hook} missing from {report:#}"))["available"]
            .as_bool()
            .expect("bool")
    };
    for hook in [
        "tracepoint",
        "tc_clsact",
        "cgroup_skb",
        "sock_ops",
        "ring_buffer",
    ] {
        assert!(available(hook), "{hook} should be available: {report:#}");
    }
    // kprobes exist exactly when the kernel was built with them.
    if let Some(kprobes) = kernel_config("KPROBES") {
        assert_eq!(available("kprobe"), kprobes, "{report:#}");
    }
    // fentry needs BPF trampolines, which need CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS on x86.
    if let Some(false) = kernel_config("DYNAMIC_FTRACE_WITH_DIRECT_CALLS") {
        assert!(!available("fentry"), "{report:#}");
    }
    assert_eq!(report["programs"][0]["hook"], "tracepoint", "{report:#}");
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

#[test]
fn sigterm_detaches_everything() {
    if !testkit::root::available("sigterm_detaches_everything") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("s.json");
    let mut probe = Hopprobe::start(
        &probe::binary(),
        &["run", "--json", json.to_str().expect("utf-8")],
    );
    // Positive control: while running, its programs are loaded.
    let loaded = leftovers::bpf_programs();
    assert!(
        loaded.iter().any(|p| p.starts_with("hp_sock_set_st"))
            && loaded.contains(&"hp_skb_in".to_owned())
            && loaded.contains(&"hp_skb_out".to_owned()),
        "programs while running: {loaded:?}"
    );
    probe.signal(Signal::SIGTERM);
    let status = probe.wait(Duration::from_secs(15));
    assert!(status.success(), "{status}; {}", probe.stderr());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("summary")).expect("JSON");
    assert_eq!(summary["stopped_by"], "SIGTERM");
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

#[test]
fn duration_ends_the_run_and_sigkill_leaves_nothing_attached() {
    if !testkit::root::available("duration_ends_the_run_and_sigkill_leaves_nothing_attached") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("d.json");
    let mut probe = Hopprobe::start(
        &probe::binary(),
        &[
            "run",
            "--duration",
            "1s",
            "--json",
            json.to_str().expect("utf-8"),
        ],
    );
    let status = probe.wait(Duration::from_secs(15));
    assert!(status.success(), "{status}; {}", probe.stderr());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("summary")).expect("JSON");
    assert_eq!(summary["stopped_by"], "duration");
    let d = summary["duration_s"].as_f64().expect("duration_s");
    assert!((1.0..5.0).contains(&d), "ran {d} s");

    // A killed probe cannot clean up; the kernel must, because every attachment is a link
    // or perf event owned by the process's file descriptors.
    let probe = Hopprobe::start(&probe::binary(), &["run"]);
    assert!(!leftovers::bpf_programs().is_empty());
    probe.signal(Signal::SIGKILL);
    drop(probe);
    // Program release is asynchronous (RCU); give it a moment.
    let mut left = leftovers::all();
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = leftovers::all();
    }
    assert_eq!(left, Vec::<String>::new());
}

/// The capabilities the least-privilege DaemonSet gives (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)
/// are enough for `check`, and without one of them `check` exits 3 and names it beside each
/// hook that needs it, while the others stay available. Run in each VM kernel: its lines are
/// the per-kernel table of docs/deploy.md#capabilities.
#[test]
fn check_names_the_capability_each_hook_needs() {
    if !testkit::root::available("check_names_the_capability_each_hook_needs") {
        return;
    }
    const CAPS: [&str; 3] = ["bpf", "perfmon", "net_admin"];
    let check = |caps: &[&str]| -> (Option<i32>, Value) {
        let bounding = format!(
            "--bounding-set=-all{}",
            caps.iter().map(|c| format!(",+{c}")).collect::<String>()
        );
        let o = Command::new("setpriv")
            .args([&bounding, "--inh-caps=-all", "--"])
            .arg(probe::binary())
            .args(["check", "--json"])
            .output()
            .expect("setpriv (util-linux)");
        let report =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
        (o.status.code(), report)
    };
    let hooks = |report: &Value| -> Vec<(String, bool, String)> {
        report["hooks"]
            .as_array()
            .expect("hooks")
            .iter()
            .map(|h| {
                (
                    h["hook"].as_str().expect("hook").to_owned(),
                    h["available"] == true,
                    h["detail"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    // Debian's kernels (the VMs') default to kernel.perf_event_paranoid=3, a level of their
    // own at which perf events need CAP_SYS_ADMIN: `check` says so, and at 2 CAP_PERFMON does.
    const PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";
    let level: i32 = std::fs::read_to_string(PARANOID)
        .expect("perf_event_paranoid")
        .trim()
        .parse()
        .expect("a number");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!(
        "capabilities on {}: perf_event_paranoid {level}",
        release.trim()
    );
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(PARANOID, &self.0);
        }
    }
    let _restore = Restore(level.to_string());
    if level >= 3 {
        let (code, report) = check(&CAPS);
        assert_eq!(code, Some(UNSUPPORTED), "{report:#}");
        let tracepoint = hooks(&report)
            .into_iter()
            .find(|h| h.0 == "tracepoint")
            .expect("tracepoint row");
        eprintln!(
            "  at perf_event_paranoid {level}: tracepoint: {}",
            tracepoint.2
        );
        assert!(
            !tracepoint.1 && tracepoint.2.contains("perf_event_paranoid"),
            "{tracepoint:?}"
        );
        std::fs::write(PARANOID, "2").expect("lower perf_event_paranoid");
    }
    let (code, all) = check(&CAPS);
    assert_eq!(code, Some(0), "{all:#}");
    let available: Vec<String> = hooks(&all)
        .into_iter()
        .filter(|h| h.1)
        .map(|h| h.0)
        .collect();
    eprintln!("  all three: {available:?}");
    for (dropped, needs) in [
        ("perfmon", &["tracepoint", "kprobe", "fentry"][..]),
        ("net_admin", &["tc_clsact", "cgroup_skb", "sock_ops"][..]),
    ] {
        let kept: Vec<&str> = CAPS.iter().copied().filter(|c| *c != dropped).collect();
        let (code, report) = check(&kept);
        assert_eq!(code, Some(UNSUPPORTED), "without {dropped}: {report:#}");
        let name = format!("CAP_{}", dropped.to_uppercase());
        for (hook, ok, detail) in hooks(&report) {
            eprintln!(
                "  without {name}: {hook}: {}",
                if ok { "available" } else { &detail }
            );
            // Only what the three capabilities gave: a hook this kernel lacks stays so.
            if !available.contains(&hook) {
                continue;
            }
            if needs.contains(&hook.as_str()) {
                assert!(!ok && detail.contains(&name), "{hook}: {detail}");
            } else {
                assert!(ok, "{hook} without {name}: {detail}");
            }
        }
    }
}
