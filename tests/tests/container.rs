//! The image `cargo xtask image` built (`HOPPROBE_IMAGE`: its OCI archive), run under podman
//! with the settings of the DaemonSet the chart renders — the lab node's network namespace as
//! the host's, the host's cgroup, BPF and tracing filesystems, `NODE_NAME`, the DaemonSet's
//! args, its security context (privileged, or `leastPrivilege`: only its capabilities and a
//! read-only root) — against the lab under load. The image has nothing but hopprobe: no `tc`,
//! no shell. After `podman stop` (SIGTERM) and after SIGKILL and a restart, the node is checked
//! with bpftool and netlink for anything of hopprobe's.

#[path = "../../probe-user/tests/chart/mod.rs"]
#[expect(dead_code, reason = "the chart's metadata is the chart test's")]
mod chart;
#[path = "../../probe-user/tests/fake_api/mod.rs"]
#[expect(
    dead_code,
    reason = "this test serves the lab's objects, not the helpers' fixtures"
)]
mod fake_api;
mod lab_api;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Once,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{
    lab::{Lab, config::LabConfig},
    leftovers,
    netns::run_in,
};

/// The node name the fake API puts the lab's pods on.
const NODE: &str = "lab-node";
const REQUESTS: usize = 30;
/// Limits under the runner's: podman sets RLIMIT_NOFILE and RLIMIT_NPROC for a container (a
/// kubelet sets none), and a runner without CAP_SYS_RESOURCE refuses values above its own
/// hard limits ("setrlimit `RLIMIT_NOFILE`: Operation not permitted").
const ULIMITS: [&str; 2] = ["--ulimit=nofile=1024:8192", "--ulimit=nproc=1024:8192"];

/// The archive, or `None` (and a SKIPPED line) where container tests are not asked for; in
/// the VM matrix, which has no podman, `None` and a HOST-ONLY line.
fn image(test: &str) -> Option<PathBuf> {
    if testkit::emulation::emulated() {
        // The VM runner counts a test that says HOST-ONLY as skipped, not failed
        // (xtask vm::guest::NOT_RUN_HERE): its guests carry no podman; the host run checks it.
        eprintln!("HOST-ONLY {test}: the VM image carries no podman; the host run checks it");
        return None;
    }
    let required = std::env::var("HOPPROBE_CONTAINER_TESTS").is_ok_and(|v| v == "require");
    match std::env::var_os("HOPPROBE_IMAGE") {
        Some(p) if testkit::lab::available(test) => Some(PathBuf::from(p)),
        Some(_) => None,
        None if required => {
            panic!("{test}: HOPPROBE_CONTAINER_TESTS=require without HOPPROBE_IMAGE")
        }
        None => {
            eprintln!("SKIPPED {test}: no HOPPROBE_IMAGE (cargo xtask test builds it as root)");
            None
        }
    }
}

/// runc: Debian 12's crun refuses a host with cgroup v1 and v2 controllers both mounted (AL2's
/// layout, and this runner's): "cgroups in hybrid mode not supported".
fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The container the chart's DaemonSet describes.
struct Settings {
    image: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<(String, String, bool)>,
    privileged: bool,
    capabilities: Vec<String>,
    read_only: bool,
    no_new_privileges: bool,
    seccomp_unconfined: bool,
    port: u16,
}

fn qualified(image: &str) -> String {
    // As containerd (and `cargo xtask image`) name a short Docker Hub name.
    if image.contains('/') {
        image.to_owned()
    } else {
        format!("docker.io/library/{image}")
    }
}

fn settings(least_privilege: bool) -> Settings {
    let objects = chart::objects(&chart::values(&[(
        "leastPrivilege",
        Value::Bool(least_privilege),
    )]));
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("the chart renders a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "the probe sees the node's network"
    );
    let c = &pod["containers"][0];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().expect("string").to_owned())
            .collect()
    };
    let volumes: BTreeMap<String, String> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().expect("name").to_owned(),
                v["hostPath"]["path"].as_str().expect("hostPath").to_owned(),
            )
        })
        .collect();
    let sc = &c["securityContext"];
    Settings {
        image: qualified(c["image"].as_str().expect("image")),
        args: strings(&c["args"]),
        // Literal values; NODE_NAME (from the downward API) is the caller's.
        env: c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect(),
        mounts: c["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .map(|m| {
                (
                    volumes[m["name"].as_str().expect("name")].clone(),
                    m["mountPath"].as_str().expect("mountPath").to_owned(),
                    m["readOnly"] == true,
                )
            })
            .collect(),
        privileged: sc["privileged"] == true,
        capabilities: strings(&sc["capabilities"]["add"]),
        read_only: sc["readOnlyRootFilesystem"] == true,
        no_new_privileges: sc["allowPrivilegeEscalation"] == false,
        seccomp_unconfined: sc["seccompProfile"]["type"] == "Unconfined",
        port: c["ports"][0]["containerPort"].as_u64().expect("port") as u16,
    }
}

static LOADED: Once = Once::new();

/// Loads the archive into podman's store (once per test binary), as a node's runtime would.
fn load(archive: &Path, image: &str) {
    LOADED.call_once(|| {
        let out = podman_ok(&["load", "-i", archive.to_str().expect("utf-8")]);
        assert!(out.contains(image), "the archive holds {out}, not {image}");
    });
}

/// A container started from [`Settings`] in the lab node's network namespace.
struct Container {
    name: String,
}

impl Container {
    fn start(s: &Settings, node: &str, kubeconfig_dir: &Path, tag: &str) -> Self {
        let name = format!("hopprobe-{tag}-{}", std::process::id());
        let netns = format!("ns:/run/netns/{node}");
        let kube = format!("{}:/kube:ro", kubeconfig_dir.display());
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--pull=never",
            ULIMITS[0],
            ULIMITS[1],
            "--name",
            &name,
            "--network",
            &netns,
            "-v",
            &kube,
            "-e",
            "KUBECONFIG=/kube/kubeconfig",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("-e".into());
        args.push(format!("NODE_NAME={NODE}"));
        for (k, v) in &s.env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        for (host, path, ro) in &s.mounts {
            args.push("-v".into());
            args.push(format!("{host}:{path}{}", if *ro { ":ro" } else { "" }));
        }
        if s.privileged {
            args.push("--privileged".into());
        } else {
            args.push("--cap-drop=all".into());
            for cap in &s.capabilities {
                args.push(format!("--cap-add=CAP_{cap}"));
            }
        }
        if s.read_only {
            args.push("--read-only".into());
        }
        if s.no_new_privileges {
            args.push("--security-opt=no-new-privileges".into());
        }
        if s.seccomp_unconfined {
            args.push("--security-opt=seccomp=unconfined".into());
        }
        args.push(s.image.clone());
        args.extend(s.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Owned before it runs: a container podman created and could not start goes too.
        let container = Self { name };
        podman_ok(&args);
        container
    }

    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
    }

    /// `podman stop`: SIGTERM, as the kubelet stops a pod; the container's exit code.
    fn stop(&self) -> i64 {
        podman_ok(&["stop", "-t", "30", &self.name]);
        podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.name])
            .trim()
            .parse()
            .expect("exit code")
    }

    fn kill(&self) {
        podman_ok(&["kill", "-s", "KILL", &self.name]);
        podman_ok(&["wait", &self.name]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}

/// `GET path` on 127.0.0.1:`port` in the lab node's network namespace: (status, body).
fn get(node: &str, port: u16, path: &str) -> Option<(u16, String)> {
    run_in(node, || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    })
    .expect("the node's namespace")
}

fn wait_ready(node: &str, port: u16, logs: &dyn Fn() -> String) {
    let start = Instant::now();
    while get(node, port, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not ready within 60 s: {:?}\n{}",
            get(node, port, "/readyz"),
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `hopprobe_hop_duration_seconds_count` per label set; hopprobe's own port left out (the
/// test's polls of `/readyz` are exchanges too, as many as it took to get ready).
fn hop_counts(metrics: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("hopprobe_hop_duration_seconds_count"))
        .filter(|l| !l.contains("port=\"9464\""))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sends the load, waits for the pairing horizon, scrapes.
fn load_and_scrape(lab: &Lab, node: &str, port: u16) -> BTreeMap<String, f64> {
    for _ in 0..REQUESTS {
        let resp = lab.get(lab.nodeport(), "/productpage").expect("GET");
        assert_eq!(resp.status(), Some(200));
    }
    // Sidecar and app_self hops are paired --pairing-horizon (5 s) behind.
    std::thread::sleep(Duration::from_secs(7));
    let (status, body) = get(node, port, "/metrics").expect("/metrics");
    assert_eq!(status, 200, "{body}");
    hop_counts(&body)
}

/// The host's hopprobe with the same args and environment, in the node's namespace.
fn host_run(s: &Settings, lab: &Lab, node: &str, kubeconfig: &Path) -> BTreeMap<String, f64> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{node}"))
        .arg(testkit::probe::binary())
        .args(&s.args)
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .env("NODE_NAME", NODE)
        .env("KUBECONFIG", kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("nsenter hopprobe");
    wait_ready(node, s.port, &|| String::new());
    let counts = load_and_scrape(lab, node, s.port);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let out = child.wait_with_output().expect("exit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    counts
}

/// Nothing of hopprobe's on the node, read from the kernel: bpftool's programs and the
/// namespace's TC state over netlink.
fn nothing_left(node: &str) {
    assert_eq!(leftovers::tc(node), Vec::<String>::new());
    assert_eq!(leftovers::bpftool_programs(), Vec::<String>::new());
}

fn up(tag: char) -> (Lab, fake_api::FakeApi, tempfile::TempDir, String) {
    let name = format!("hpt{}{tag}", std::process::id() % 100_000);
    let lab = Lab::up(
        LabConfig::new(&name),
        Path::new(env!("CARGO_BIN_EXE_hoplab")),
    )
    .expect("lab up");
    let node = lab.state.node_netns.clone();
    let api = lab_api::serve(&lab, NODE, Some(&format!("/run/netns/{node}")));
    let dir = tempfile::tempdir().expect("tempdir");
    api.kubeconfig(dir.path());
    (lab, api, dir, node)
}

#[test]
fn the_image_measures_what_the_host_binary_measures_and_leaves_nothing() {
    let test = "the_image_measures_what_the_host_binary_measures_and_leaves_nothing";
    let Some(archive) = image(test) else {
        return;
    };
    let s = settings(false);
    load(&archive, &s.image);
    let (lab, _api, dir, node) = up('i');
    let host = host_run(&s, &lab, &node, &dir.path().join("kubeconfig"));
    nothing_left(&node);

    let c = Container::start(&s, &node, dir.path(), "priv");
    wait_ready(&node, s.port, &|| c.logs());
    let image = load_and_scrape(&lab, &node, s.port);
    assert_eq!(c.stop(), 0, "{}", c.logs());
    // The DaemonSet's `--log-format json`: every line of stderr one object.
    let out = podman(&["logs", &c.name]);
    let log = String::from_utf8_lossy(&out.stderr);
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(log.contains("\"message\":\"attached\""), "{log}");
    nothing_left(&node);

    let context = format!("host {host:#?}\nimage {image:#?}");
    let only = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| -> Vec<String> {
        a.keys().filter(|k| !b.contains_key(*k)).cloned().collect()
    };
    assert_eq!(
        (only(&host, &image), only(&image, &host)),
        (Vec::new(), Vec::new()),
        "series of one only: {context}"
    );
    // For the record: how far apart the two runs came, per kind of hop.
    let mut widest = [(0usize, 0.0f64); 2];
    for (labels, h) in &host {
        let i = image[labels];
        let kind = usize::from(labels.contains("hop=\"datapath") || labels.contains("hop=\"pod_"));
        widest[kind].0 += 1;
        widest[kind].1 = widest[kind].1.max((h - i).abs() / h.max(i).max(1.0));
    }
    eprintln!(
        "host vs image: {} exchange series, widest {:.2} %; {} packet series, widest {:.2} %",
        widest[0].0,
        100.0 * widest[0].1,
        widest[1].0,
        100.0 * widest[1].1
    );
    for (labels, h) in &host {
        let i = image[labels];
        // Exchanges within 1 %. The packet hops count packets, whose number for the same
        // requests varies from run to run with ACK timing: 1.3 % apart on a quiet machine,
        // 4.8 % with a VM running beside (reviews' pod_delivery, 312 and 297).
        let packets = ["datapath_in", "datapath_out", "pod_delivery", "pod_send"]
            .iter()
            .any(|hop| labels.contains(&format!("hop=\"{hop}\"")));
        let within = if packets { 0.10 } else { 0.01 };
        assert!(
            (h - i).abs() <= (within * h.max(i)).max(1.0),
            "{labels}: host {h}, image {i}: {context}"
        );
    }
    let app = host
        .iter()
        .filter(|(l, _)| l.contains("hop=\"app\"") && l.contains("productpage"))
        .map(|(_, v)| v)
        .sum::<f64>();
    assert_eq!(app, REQUESTS as f64, "{context}");
    drop(lab);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

#[test]
fn least_privilege_measures_and_a_killed_container_leaves_nothing_after_the_next() {
    let test = "least_privilege_measures_and_a_killed_container_leaves_nothing_after_the_next";
    let Some(archive) = image(test) else {
        return;
    };
    let s = settings(true);
    assert!(!s.privileged && s.read_only);
    load(&archive, &s.image);
    let (lab, _api, dir, node) = up('l');

    // hopprobe check inside the container, with the DaemonSet's capabilities: all required
    // hooks there.
    let c = Container::start(&s, &node, dir.path(), "least1");
    wait_ready(&node, s.port, &|| c.logs());
    let check = podman(&["exec", &c.name, "/hopprobe", "check"]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let first = load_and_scrape(&lab, &node, s.port);
    c.kill();
    drop(c);

    let c = Container::start(&s, &node, dir.path(), "least2");
    wait_ready(&node, s.port, &|| c.logs());
    let second = load_and_scrape(&lab, &node, s.port);
    assert_eq!(c.stop(), 0, "{}", c.logs());
    nothing_left(&node);
    for counts in [&first, &second] {
        let app: f64 = counts
            .iter()
            .filter(|(l, _)| l.contains("hop=\"app\"") && l.contains("productpage"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(app, REQUESTS as f64, "{counts:#?}");
    }
    drop(lab);
    assert_eq!(leftovers::all(), Vec::<String>::new());
}

/// A capability the DaemonSet lacks: `hopprobe check` names it, `run` exits 3.
#[test]
fn a_missing_capability_is_named() {
    let Some(archive) = image("a_missing_capability_is_named") else {
        return;
    };
    let s = settings(true);
    load(&archive, &s.image);
    for missing in &s.capabilities {
        let mut args = vec![
            "run".to_owned(),
            "--rm".into(),
            "--pull=never".into(),
            ULIMITS[0].into(),
            ULIMITS[1].into(),
            "--network=none".into(),
            "--cap-drop=all".into(),
        ];
        args.extend(
            s.capabilities
                .iter()
                .filter(|c| *c != missing)
                .map(|c| format!("--cap-add=CAP_{c}")),
        );
        if s.seccomp_unconfined {
            args.push("--security-opt=seccomp=unconfined".into());
        }
        args.push(s.image.clone());
        args.push("check".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = podman(&args);
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{said}");
        assert!(
            said.contains(&format!("CAP_{missing}")),
            "{missing}: {said}"
        );
    }
    assert_eq!(leftovers::bpftool_programs(), Vec::<String>::new());
}
