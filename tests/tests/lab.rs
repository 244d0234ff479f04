//! The lab: a node with a Bookinfo-shaped app, with and without a sidecar mesh.

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use testkit::{
    emulation::assert_timing,
    lab::{
        Lab,
        config::{Delay, LabConfig, Mesh, Workers},
        teardown,
    },
};

const HOPLAB: &str = env!("CARGO_BIN_EXE_hoplab");
const MS: Duration = Duration::from_millis(1);

fn lab_name(suffix: &str) -> String {
    format!("hpt{}{suffix}", std::process::id() % 100_000)
}

fn up(config: LabConfig) -> Lab {
    Lab::up(config, Path::new(HOPLAB)).expect("lab up")
}

fn hoplab(args: &[&str]) -> Output {
    Command::new(HOPLAB)
        .args(args)
        .output()
        .expect("run hoplab")
}

fn text(o: &Output) -> String {
    testkit::describe(o)
}

fn assert_page(lab: &Lab, addr: std::net::SocketAddr) -> Duration {
    let t = Instant::now();
    let resp = lab.get(addr, "/productpage").expect("GET");
    let took = t.elapsed();
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    assert_eq!(resp.status(), Some(200), "{addr}: {body}");
    for service in ["productpage", "details", "reviews", "ratings"] {
        assert!(
            body.contains(service),
            "{addr}: {service} missing from\n{body}"
        );
    }
    took
}

#[test]
fn the_page_is_assembled_in_both_mesh_modes_via_nodeport_and_ingress() {
    if !testkit::lab::available("the_page_is_assembled_in_both_mesh_modes") {
        return;
    }
    for (mesh, suffix) in [(Mesh::None, "a"), (Mesh::Sidecar, "b")] {
        let name = lab_name(suffix);
        let mut config = LabConfig::new(&name);
        config.mesh = mesh;
        config.ingress = true;
        let lab = up(config);
        let sidecars = lab
            .state
            .containers()
            .filter(|(_, c)| c.name == "istio-proxy")
            .count();
        assert_eq!(sidecars, if mesh == Mesh::Sidecar { 4 } else { 0 });
        assert_page(&lab, lab.nodeport());
        assert_page(&lab, lab.ingress().expect("ingress"));
        drop(lab);
        assert_eq!(
            teardown::leftovers(&name),
            Vec::<String>::new(),
            "mesh {mesh}"
        );
    }
    assert_eq!(testkit::leftovers::all(), Vec::<String>::new());
}

#[test]
fn latency_covers_the_injected_delays_and_little_more() {
    if !testkit::lab::available("latency_covers_the_injected_delays_and_little_more") {
        return;
    }
    let name = lab_name("c");
    let mut config = LabConfig::new(&name);
    config.mesh = Mesh::Sidecar;
    config.ingress = true;
    config.sidecar_delay = "inbound=1ms,outbound=500us".parse().expect("delay");
    config.ingress_delay = Delay::Fixed(2 * MS);
    for (s, d) in [
        ("productpage", 5),
        ("details", 2),
        ("reviews", 3),
        ("ratings", 4),
    ] {
        config.app_delay.insert(s.into(), Delay::Fixed(d * MS));
    }
    let expected = config.min_page_latency(true);
    // 2 ingress + 14 apps + 4 × 1 inbound + 3 × 0.5 outbound.
    assert_eq!(expected, Duration::from_micros(21_500));
    let lab = up(config);
    let ingress = lab.ingress().expect("ingress");
    let mut took: Vec<Duration> = (0..30).map(|_| assert_page(&lab, ingress)).collect();
    took.sort();
    let (min, p50) = (took[0], took[took.len() / 2]);
    eprintln!("expected ≥ {expected:?}; measured min {min:?}, p50 {p50:?}");
    assert!(min >= expected, "min {min:?} < injected {expected:?}");
    // Eleven proxy and app hand-offs, each a wake-up on a 2-core machine, cost a few ms (not
    // asserted on an emulated CPU: testkit::emulation).
    let overhead = 8 * MS;
    assert_timing(p50 < expected + overhead, || {
        format!("p50 {p50:?} is more than {overhead:?} above the injected {expected:?}")
    });
}

#[test]
fn a_one_worker_app_saturates_like_a_closed_loop() {
    if !testkit::lab::available("a_one_worker_app_saturates_like_a_closed_loop") {
        return;
    }
    let name = lab_name("d");
    let mut config = LabConfig::new(&name);
    config
        .app_delay
        .insert("productpage".into(), Delay::Fixed(10 * MS));
    config.app_workers.insert("productpage".into(), Workers(1));
    let lab = up(config);
    let (connections, run_for) = (8, Duration::from_secs(3));
    let ns = lab.client_netns();
    let addr = lab.nodeport();
    let start = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let ns = ns.clone();
            std::thread::spawn(move || {
                testkit::netns::run_in(&ns, || {
                    let mut lat = Vec::new();
                    while start.elapsed() < run_for {
                        let t = Instant::now();
                        let resp = testkit::lab::http::get(addr, "/productpage").expect("GET");
                        assert_eq!(resp.status(), Some(200));
                        lat.push(t.elapsed());
                    }
                    // The client's own time between requests (Little's "think time").
                    let think = start.elapsed().saturating_sub(lat.iter().sum());
                    (lat, think)
                })
                .expect("client namespace")
            })
        })
        .collect();
    let mut lat: Vec<Duration> = Vec::new();
    let mut think = Duration::ZERO;
    for t in threads {
        let (l, z) = t.join().expect("client thread");
        lat.extend(l);
        think += z;
    }
    let elapsed = start.elapsed();
    lat.sort();
    let throughput = lat.len() as f64 / elapsed.as_secs_f64();
    let p50 = lat[lat.len() / 2].as_secs_f64();
    // Little's law for a closed loop: connections = throughput × (latency + think time). The
    // client's think time is next to nothing on a real CPU; on an emulated one each request's
    // connect and parsing cost the client tens of ms, which are not time at the server.
    let think_per_request = think.as_secs_f64() / lat.len() as f64;
    let little = connections as f64 / throughput - think_per_request;
    eprintln!(
        "{} requests, {throughput:.1} req/s, p50 {:.1} ms, connections/throughput {:.1} ms \
         less think time {:.1} ms per request",
        lat.len(),
        p50 * 1e3,
        (little + think_per_request) * 1e3,
        think_per_request * 1e3
    );
    // One worker with a 10 ms service time serves at most 100 requests a second.
    assert!(throughput <= 100.0, "{throughput}");
    assert!(
        (p50 - little).abs() / little < 0.15,
        "p50 {p50} vs connections/throughput less think time {little}"
    );
}

#[test]
fn up_twice_down_twice_and_status_without_a_lab() {
    if !testkit::lab::available("up_twice_down_twice_and_status_without_a_lab") {
        return;
    }
    let name = lab_name("e");
    // With a delayed client link: its delay line is a process of the lab's too.
    let o = hoplab(&["up", "--name", &name, "--link-delay", "1ms"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("client link  1ms each way"),
        "{}",
        text(&o)
    );
    assert_eq!(
        teardown::processes(&name).len(),
        5,
        "four apps and the delay line"
    );
    assert!(
        text(&o).contains("http://10.77.0.1:30080/productpage"),
        "{}",
        text(&o)
    );
    let o = hoplab(&["up", "--name", &name]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("already up"), "{}", text(&o));
    let o = hoplab(&["status", "--name", &name]);
    assert!(
        o.status.success() && text(&o).contains("cri-containerd-"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("between TAP devices, up)"),
        "{}",
        text(&o)
    );
    // Without its delay line the link is gone, and status says so.
    let o = hoplab(&["status", "--name", &name, "--json"]);
    let state: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status --json");
    let procs = Path::new(state["cgroup_root"].as_str().expect("cgroup_root"))
        .join("hoplab-wire.scope/cgroup.procs");
    let pid: i32 = std::fs::read_to_string(&procs)
        .expect("the delay line's cgroup")
        .trim()
        .parse()
        .expect("one pid");
    // SAFETY: a process of the lab this test made.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let gone = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty()) {
        assert!(Instant::now() < gone, "the delay line outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = hoplab(&["status", "--name", &name]);
    assert!(
        text(&o).contains("between TAP devices, DEAD)"),
        "{}",
        text(&o)
    );
    for _ in 0..2 {
        let o = hoplab(&["down", "--name", &name]);
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(teardown::leftovers(&name), Vec::<String>::new());
    let o = hoplab(&["status", "--name", &name]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("no lab named"), "{}", text(&o));
}

#[test]
fn a_killed_creator_leaves_state_that_down_and_up_clean() {
    if !testkit::lab::available("a_killed_creator_leaves_state_that_down_and_up_clean") {
        return;
    }
    let name = lab_name("f");
    for then in ["down", "up"] {
        let mut child = Command::new(HOPLAB)
            .args([
                "up",
                "--name",
                &name,
                "--mesh",
                "sidecar",
                "--ingress",
                "--link-delay",
                "2ms",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start hoplab up");
        // Kill it once it has begun to build, so that the lab is half made.
        let until = Instant::now() + Duration::from_secs(10);
        while teardown::namespaces(&name).len() < 4 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(!teardown::leftovers(&name).is_empty(), "positive control");
        let o = hoplab(&[then, "--name", &name]);
        assert!(o.status.success(), "{then} after SIGKILL: {}", text(&o));
        if then == "up" {
            let o = hoplab(&["down", "--name", &name]);
            assert!(o.status.success(), "{}", text(&o));
        }
        assert_eq!(
            teardown::leftovers(&name),
            Vec::<String>::new(),
            "after {then}"
        );
    }
}

#[test]
fn invalid_flags_are_rejected_with_a_message() {
    for (args, needle) in [
        (&["up", "--mesh", "linkerd"][..], "invalid value"),
        (
            &["up", "--app-delay", "frontend=5ms"][..],
            "unknown service `frontend`",
        ),
        (
            &["up", "--app-workers", "details=0"][..],
            "not a worker count",
        ),
        (&["up", "--sidecar-delay", "fast"][..], "not a duration"),
        (
            &["up", "--sidecar-cmd", "haproxy"][..],
            "--sidecar-template",
        ),
    ] {
        let o = hoplab(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
    }
    let o = hoplab(&["up", "--name", "Bad_Name"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("lowercase"), "{}", text(&o));
}

#[test]
fn a_real_proxy_from_debian_can_be_the_sidecar_and_the_ingress() {
    if !testkit::lab::available("a_real_proxy_from_debian_can_be_the_sidecar_and_the_ingress") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab");
    let name = lab_name("g");
    let mut config = LabConfig::new(&name);
    config.mesh = Mesh::Sidecar;
    config.ingress = true;
    config.sidecar_cmd = Some("haproxy -db -f {config}".into());
    config.sidecar_template = Some(dir.join("haproxy-sidecar.cfg").display().to_string());
    config.ingress_cmd = Some("haproxy -db -f {config}".into());
    config.ingress_template = Some(dir.join("haproxy-ingress.cfg").display().to_string());
    let lab = up(config);
    let proxies: Vec<String> = lab
        .state
        .containers()
        .filter(|(_, c)| c.name == "istio-proxy" || c.name == "ingress")
        .map(|(_, c)| std::fs::read_to_string(format!("/proc/{}/comm", c.pid)).unwrap_or_default())
        .collect();
    assert_eq!(proxies.len(), 5);
    assert!(proxies.iter().all(|c| c.trim() == "haproxy"), "{proxies:?}");
    assert_page(&lab, lab.nodeport());
    assert_page(&lab, lab.ingress().expect("ingress"));
    drop(lab);
    assert_eq!(teardown::leftovers(&name), Vec::<String>::new());
}
