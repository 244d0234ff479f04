//! The lab: a Kubernetes node with a Bookinfo-shaped app and an optional service mesh, built
//! from network namespaces, veths, iptables and cgroups, with processes for the apps and
//! proxies. `Lab::up` builds it; dropping the `Lab` (or `down`) removes all of it.

pub mod app;
pub mod config;
pub mod http;
pub mod names;
pub mod proxy;
pub mod spawn;
pub mod state;
pub mod stream;
pub mod teardown;
pub mod tls;
pub mod topology;
pub mod wire;

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use config::{LabConfig, Mesh, SERVICES, calls};
use names::{
    APP_PORT, INGRESS_SERVICE, NODE_IP, NODEPORT_INGRESS, NODEPORT_PRODUCTPAGE, Names, PROXY_UID,
    Pod, SIDECAR_INBOUND_PORT, pod,
};
use proxy::{Route, TlsIn};
use state::{ContainerState, LabState, PodState};
use tls::{TlsFiles, TlsPolicy, mesh_name};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("lab `{0}` is already up; run `lab down` first (or `lab status` to see it)")]
    AlreadyUp(String),
    #[error("no lab named `{0}` is up")]
    NotUp(String),
    #[error("the lab needs root (network namespaces, cgroups, iptables)")]
    NotRoot,
    #[error("no cgroup v2 mount found")]
    NoCgroup2,
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("the lab did not become ready: {0}")]
    NotReady(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Io { context, source }
}

/// A running lab. Dropping it tears it down unless [`Lab::keep`] was called.
pub struct Lab {
    pub state: LabState,
    keep: bool,
}

/// Cgroup of the delayed client link's process, beside kubepods.slice under the lab's root.
pub(crate) const WIRE_CGROUP: &str = "hoplab-wire.scope";

pub const SIDECAR_CONTAINER: &str = "istio-proxy";

/// True when lab tests can run: root (see `root::available`) and the tools the lab drives
/// (`iptables-restore`, `sysctl`). The VM test matrix boots minimal initramfs images without
/// them, where lab tests say SKIPPED; under `HOPPROBE_LAB_TESTS=require` (the host run of
/// `cargo xtask test`) a missing tool is a failure instead.
pub fn available(test: &str) -> bool {
    if !crate::root::available(test) {
        return false;
    }
    // CI's VM matrix leaves the lab out (`vm-test --lab` puts it in): under emulation its
    // timing bounds are not yet reliable. Said on a line of its own, which xtask's VM runner
    // reads to count the test as skipped, not passed (xtask vm::guest::NOT_RUN_HERE).
    if std::env::var("HOPPROBE_LAB_TESTS").as_deref() == Ok("off") {
        eprintln!("LAB-OFF {test}: not run here (HOPPROBE_LAB_TESTS=off; vm-test --lab runs it)");
        return false;
    }
    let missing: Vec<&str> = ["iptables-restore", "sysctl"]
        .into_iter()
        .filter(|tool| {
            !["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|dir| Path::new(dir).join(tool).exists())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip(test, &format!("the lab needs {missing:?} installed"))
}

/// A lab test that cannot run for want of `what`: SKIPPED, or a failure under
/// `HOPPROBE_LAB_TESTS=require`. Returns false, for `available`'s callers.
pub fn skip(test: &str, what: &str) -> bool {
    if std::env::var("HOPPROBE_LAB_TESTS").as_deref() == Ok("require") {
        panic!("{test}: HOPPROBE_LAB_TESTS=require, but {what}");
    }
    eprintln!("SKIPPED {test}: {what}");
    false
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Lab {
    /// Builds the lab. `exe` is the `hoplab` binary whose `app`/`proxy` subcommands become the
    /// containers' processes.
    pub fn up(config: LabConfig, exe: &Path) -> Result<Self, LabError> {
        config.validate().map_err(LabError::Invalid)?;
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        let names = Names::new(&config.name);
        if state::load(&names).is_some_and(|s| s.healthy()) {
            return Err(LabError::AlreadyUp(config.name.clone()));
        }
        // Whatever an earlier, killed run left behind goes first.
        teardown::down(&config.name)?;

        let v2 = probe_user::names::cgroup::v2_mount().ok_or(LabError::NoCgroup2)?;
        let cgroup_root = names.cgroup_root(&v2);
        let mut pods: Vec<Pod> = SERVICES.iter().map(|s| pod(s)).collect();
        if config.ingress {
            pods.push(pod(INGRESS_SERVICE));
        }
        let mut lab = Lab {
            state: LabState::new(config, &names, cgroup_root),
            keep: false,
        };
        // From here on an error drops `lab`, which tears down what was built.
        fs::create_dir_all(names.state_dir()).map_err(io_err("creating the state directory"))?;
        state::save(&lab.state)?;
        if lab.state.config.any_tls() {
            let services: Vec<&str> = pods.iter().map(|p| p.service).collect();
            lab.tls_files()
                .generate(&services, NODE_IP.into(), PROXY_UID)?;
        }
        fs::create_dir_all(&lab.state.cgroup_root).map_err(io_err(format!(
            "creating {}",
            lab.state.cgroup_root.display()
        )))?;

        for role in ["client", "node"] {
            topology::create_netns(&names.netns(role))?;
        }
        if lab.state.config.link_delay.is_zero() {
            topology::uplink_veth(&names)?;
        } else {
            lab.start_wire(&names, exe)?;
        }
        topology::uplink(&names)?;
        for p in &pods {
            topology::create_netns(&names.netns(p.service))?;
            topology::pod_network(&names, p)?;
        }
        topology::apply_rules(
            &names.netns("node"),
            &topology::kube_proxy_rules(&pods, lab.state.config.ingress),
        )?;
        if lab.state.config.mesh == Mesh::Sidecar {
            for s in SERVICES {
                let upstreams: Vec<Pod> = calls(s).iter().map(|c| pod(c)).collect();
                topology::apply_rules(
                    &names.netns(s),
                    &topology::sidecar_rules(&pod(s), &upstreams),
                )?;
            }
        }
        for p in &pods {
            lab.start_pod(&names, p, exe)?;
        }
        state::save(&lab.state)?;
        let metadata =
            serde_json::to_string_pretty(&lab.state.metadata()).map_err(|e| LabError::Io {
                context: "serialising the lab's metadata".into(),
                source: e.into(),
            })?;
        fs::write(&lab.state.metadata_file, metadata).map_err(io_err(format!(
            "writing {}",
            lab.state.metadata_file.display()
        )))?;
        lab.wait_ready(Duration::from_secs(20))?;
        Ok(lab)
    }

    /// The delayed client ↔ node link: a `hoplab wire` process owning a TAP device at each
    /// end (see `wire`). Its cgroup sits beside the pods', so `down` kills it with them.
    fn start_wire(&self, names: &Names, exe: &Path) -> Result<(), LabError> {
        let cgroup = self.state.cgroup_root.join(WIRE_CGROUP);
        fs::create_dir_all(&cgroup).map_err(io_err(format!("creating {}", cgroup.display())))?;
        let log = names.state_dir().join("wire.log");
        let (client, node) = (names.netns("client"), names.netns("node"));
        let delay_us = self.state.config.link_delay.as_micros().to_string();
        let args: Vec<String> = [
            "wire",
            "--lab",
            &self.state.config.name,
            "--client-netns",
            &client,
            "--node-netns",
            &node,
            "--delay-us",
            &delay_us,
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        spawn::spawn(
            exe,
            &args,
            &spawn::Placement {
                netns: &client,
                cgroup: &cgroup,
                uid: None,
                log: &log,
            },
        )
        .map_err(io_err("starting the client link's delay line"))?;
        for ns in [&client, &node] {
            if !topology::wait_link(ns, topology::UPLINK, Duration::from_secs(5)) {
                let said = fs::read_to_string(&log).unwrap_or_default();
                return Err(LabError::NotReady(format!(
                    "the client link's delay line did not create {} in {ns} within 5 s: {}",
                    topology::UPLINK,
                    said.trim()
                )));
            }
        }
        Ok(())
    }

    fn start_pod(&mut self, names: &Names, p: &Pod, exe: &Path) -> Result<(), LabError> {
        let cfg = self.state.config.clone();
        let ns = names.netns(p.service);
        let mut containers = Vec::new();
        let (files, policy) = (self.tls_files(), self.tls_policy());
        if p.service == INGRESS_SERVICE {
            let upstream = pod("productpage").service_addr();
            // Under mTLS the ingress is a mesh member, as Istio's ingress gateway is: it
            // reaches productpage's sidecar with its own certificate.
            let upstream_name = cfg.mtls.then(|| mesh_name("productpage"));
            let args = match (&cfg.ingress_cmd, &cfg.ingress_template) {
                (Some(cmd), Some(tmpl)) => {
                    let mut vars = vec![
                        ("listen_port", p.port().to_string()),
                        ("upstream", upstream.to_string()),
                        (
                            "bind_ssl",
                            tls::haproxy_bind(
                                &files,
                                p.service,
                                policy,
                                cfg.ingress_tls.then_some(false),
                            ),
                        ),
                        (
                            "server_ssl",
                            tls::haproxy_server(
                                &files,
                                p.service,
                                policy,
                                upstream_name.as_deref(),
                            ),
                        ),
                    ];
                    vars.extend(tls::template_vars(&files, p.service, policy));
                    byo_args(names, p, "ingress", cmd, tmpl, &vars, &[])?
                }
                _ => self.proxy_args(
                    names,
                    p,
                    "ingress",
                    &[Route {
                        tls_in: if cfg.ingress_tls {
                            TlsIn::Tls
                        } else {
                            TlsIn::Plain
                        },
                        tls_out: upstream_name,
                        ..Route::plain(
                            SocketAddr::new([0, 0, 0, 0].into(), p.port()),
                            upstream,
                            cfg.ingress_delay,
                        )
                    }],
                ),
            };
            containers.push(self.start_container(names, p, "ingress", &ns, exe, args, None)?);
        } else {
            let mut args = vec![
                "app".to_owned(),
                "--lab".into(),
                cfg.name.clone(),
                "--name".into(),
                p.service.into(),
                "--listen".into(),
                SocketAddr::new([0, 0, 0, 0].into(), APP_PORT).to_string(),
                "--delay".into(),
                cfg.delay_of(p.service).to_string(),
                "--workers".into(),
                cfg.workers_of(p.service).to_string(),
            ];
            for c in calls(p.service) {
                args.push("--upstream".into());
                args.push(format!("{c}={}", pod(c).service_addr()));
            }
            containers.push(self.start_container(
                names, p,
                // The app's container is named after its service, as in Bookinfo.
                p.service, &ns, exe, args, None,
            )?);
            if cfg.mesh == Mesh::Sidecar {
                let inbound = SocketAddr::new([0, 0, 0, 0].into(), SIDECAR_INBOUND_PORT);
                let app = SocketAddr::new([127, 0, 0, 1].into(), APP_PORT);
                let args = match (&cfg.sidecar_cmd, &cfg.sidecar_template) {
                    (Some(cmd), Some(tmpl)) => {
                        let outbound: Vec<Vec<(&str, String)>> = calls(p.service)
                            .iter()
                            .map(|c| {
                                let up = pod(c);
                                let name = mesh_name(c);
                                vec![
                                    ("name", (*c).to_owned()),
                                    ("outbound_port", up.outbound_port().to_string()),
                                    ("upstream", up.service_addr().to_string()),
                                    (
                                        "server_ssl",
                                        tls::haproxy_server(
                                            &files,
                                            p.service,
                                            policy,
                                            cfg.mtls.then_some(name.as_str()),
                                        ),
                                    ),
                                ]
                            })
                            .collect();
                        let mut vars = vec![
                            ("inbound_port", SIDECAR_INBOUND_PORT.to_string()),
                            ("app", app.to_string()),
                            ("pod_ip", p.ip().to_string()),
                            (
                                "bind_ssl",
                                tls::haproxy_bind(
                                    &files,
                                    p.service,
                                    policy,
                                    cfg.mtls.then_some(true),
                                ),
                            ),
                        ];
                        vars.extend(tls::template_vars(&files, p.service, policy));
                        byo_args(names, p, "sidecar", cmd, tmpl, &vars, &outbound)?
                    }
                    _ => {
                        // The app ↔ its own sidecar hop stays plaintext, as in Istio; only
                        // sidecar ↔ sidecar is mutual TLS.
                        let mut routes = vec![Route {
                            tls_in: if cfg.mtls {
                                TlsIn::Mutual
                            } else {
                                TlsIn::Plain
                            },
                            ..Route::plain(inbound, app, cfg.sidecar_delay.inbound)
                        }];
                        for c in calls(p.service) {
                            let up = pod(c);
                            routes.push(Route {
                                tls_out: cfg.mtls.then(|| mesh_name(c)),
                                ..Route::plain(
                                    SocketAddr::new([0, 0, 0, 0].into(), up.outbound_port()),
                                    up.service_addr(),
                                    cfg.sidecar_delay.outbound,
                                )
                            });
                        }
                        self.proxy_args(names, p, SIDECAR_CONTAINER, &routes)
                    }
                };
                containers.push(self.start_container(
                    names,
                    p,
                    SIDECAR_CONTAINER,
                    &ns,
                    exe,
                    args,
                    Some(PROXY_UID),
                )?);
            }
        }
        self.state.pods.push(PodState {
            service: p.service.to_owned(),
            netns: ns,
            ip: p.ip(),
            cluster_ip: p.cluster_ip(),
            host_veth: names.host_veth(p),
            uid: names.pod_uid(p),
            containers,
        });
        Ok(())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per container kind"
    )]
    fn start_container(
        &self,
        names: &Names,
        p: &Pod,
        container: &str,
        ns: &str,
        exe: &Path,
        args: Vec<String>,
        uid: Option<u32>,
    ) -> Result<ContainerState, LabError> {
        let cgroup = self
            .state
            .cgroup_root
            .join(names.container_cgroup(p, container));
        fs::create_dir_all(&cgroup).map_err(io_err(format!("creating {}", cgroup.display())))?;
        let log = names
            .state_dir()
            .join(format!("{}-{container}.log", p.service));
        let (program, args) = match args.first().map(String::as_str) {
            // A bring-your-own proxy runs through the shell so its command line can be any.
            Some("/bin/sh") => (PathBuf::from("/bin/sh"), args[1..].to_vec()),
            _ => (exe.to_path_buf(), args),
        };
        let pid = spawn::spawn(
            &program,
            &args,
            &spawn::Placement {
                netns: ns,
                cgroup: &cgroup,
                uid,
                log: &log,
            },
        )
        .map_err(io_err(format!("starting {container} in {ns}")))?;
        let cgroup_id = fs::metadata(&cgroup).map(|m| m.ino()).unwrap_or(0);
        Ok(ContainerState {
            name: container.to_owned(),
            container_id: names.container_id(p, container),
            cgroup,
            cgroup_id,
            pid,
            command: std::iter::once(program.display().to_string())
                .chain(args)
                .collect::<Vec<_>>()
                .join(" "),
            log,
        })
    }

    /// Ready when a page request from the client succeeds through every entry point.
    fn wait_ready(&self, timeout: Duration) -> Result<(), LabError> {
        let until = Instant::now() + timeout;
        for url in self.entry_points() {
            loop {
                let last = match self.get(url, "/productpage") {
                    Ok(resp) if resp.status() == Some(200) => break,
                    Ok(resp) => format!("{url} answered {:?}", resp.status()),
                    Err(e) => format!("{url}: {e}"),
                };
                if let Some(dead) = self.state.dead_containers().first() {
                    return Err(LabError::NotReady(format!(
                        "{dead} exited; its log:\n{}",
                        self.state.log_tail(dead)
                    )));
                }
                if Instant::now() > until {
                    return Err(LabError::NotReady(last));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Where the client reaches the page: the NodePort, and the ingress when there is one.
    /// Under mTLS only the ingress: productpage's sidecar refuses the NodePort's plaintext.
    pub fn entry_points(&self) -> Vec<SocketAddr> {
        let mut v = Vec::new();
        if !self.state.config.mtls {
            v.push(self.nodeport());
        }
        if let Some(i) = self.ingress() {
            v.push(i);
        }
        v
    }

    /// Whether `addr` speaks HTTPS (the ingress under `ingress_tls`).
    pub fn is_https(&self, addr: SocketAddr) -> bool {
        self.state.config.ingress_tls && Some(addr) == self.ingress()
    }

    /// The URL of `path` at an entry point: `https://` at a TLS ingress.
    pub fn url(&self, addr: SocketAddr, path: &str) -> String {
        let scheme = if self.is_https(addr) { "https" } else { "http" };
        format!("{scheme}://{addr}{path}")
    }

    /// The page through the ingress, `https://` under `ingress_tls`.
    pub fn ingress_url(&self) -> Option<String> {
        self.ingress().map(|i| self.url(i, "/productpage"))
    }

    /// The flags loadgen needs besides the URL to reach `addr`: `--insecure` at a TLS
    /// ingress, as oha is run against a self-signed ingress (the lab's CA is in
    /// `TlsFiles::ca` for a client that verifies).
    pub fn loadgen_flags(&self, addr: SocketAddr) -> Vec<&'static str> {
        if self.is_https(addr) {
            vec!["--insecure"]
        } else {
            Vec::new()
        }
    }

    /// Where the lab's CA and certificates are (written only when some hop speaks TLS).
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles::new(&Names::new(&self.state.config.name).state_dir())
    }

    pub fn tls_policy(&self) -> TlsPolicy {
        TlsPolicy {
            version: self.state.config.tls_version,
            resumption: self.state.config.tls_resumption,
        }
    }

    /// Handshakes a built-in proxy has made so far (counts at most 50 ms old); `None` for a
    /// container that has no TLS route or has not written them yet.
    pub fn tls_counts(&self, service: &str, container: &str) -> Option<tls::HandshakeCounts> {
        tls::read_counts(&tls_stats_file(
            &Names::new(&self.state.config.name),
            service,
            container,
        ))
    }

    pub fn nodeport(&self) -> SocketAddr {
        SocketAddr::new(NODE_IP.into(), NODEPORT_PRODUCTPAGE)
    }

    pub fn ingress(&self) -> Option<SocketAddr> {
        self.state
            .config
            .ingress
            .then(|| SocketAddr::new(NODE_IP.into(), NODEPORT_INGRESS))
    }

    pub fn client_netns(&self) -> String {
        Names::new(&self.state.config.name).netns("client")
    }

    /// One GET from the client namespace, on a connection of its own; HTTPS at a TLS ingress.
    /// Deletes the pod of `service` (`teardown::delete_pod`).
    pub fn delete_pod(&self, service: &str) -> Result<(), LabError> {
        teardown::delete_pod(&self.state, service)
    }

    pub fn get(&self, addr: SocketAddr, path: &str) -> Result<http::Message, LabError> {
        if self.is_https(addr) {
            return Ok(self.get_https(addr, path)?.0);
        }
        let ns = self.client_netns();
        crate::netns::run_in(&ns, || http::get(addr, path))
            .map_err(|e| LabError::Invalid(e.to_string()))?
            .map_err(io_err(format!("GET {}", self.url(addr, path))))
    }

    /// One HTTPS GET from the client namespace to the ingress, verifying it with the lab's CA
    /// under the lab's TLS policy; also how the handshake went. A fresh client each call, so
    /// never resumed: resumption is for callers keeping a config ([`tls::client_config`]).
    pub fn get_https(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<(http::Message, Option<rustls::HandshakeKind>), LabError> {
        let config = tls::client_config(&self.tls_files(), None, self.tls_policy())?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let ns = self.client_netns();
        crate::netns::run_in(&ns, || http::get_tls(addr, path, config, name))
            .map_err(|e| LabError::Invalid(e.to_string()))?
            .map_err(io_err(format!("GET {}", self.url(addr, path))))
    }

    /// Leaves the lab running after this value is dropped (for `lab up`).
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = teardown::down(&self.state.config.name)
        {
            eprintln!("warning: tearing down lab {}: {e}", self.state.config.name);
        }
    }
}

/// Where a built-in proxy publishes its handshake counts: a directory the sidecars' uid may
/// write (see [`TlsFiles::generate`]).
pub fn tls_stats_file(names: &Names, service: &str, container: &str) -> PathBuf {
    TlsFiles::new(&names.state_dir())
        .stats_dir()
        .join(format!("{service}-{container}.json"))
}

impl Lab {
    /// The built-in proxy's command line; with the lab's TLS material when a route speaks TLS.
    fn proxy_args(&self, names: &Names, p: &Pod, container: &str, routes: &[Route]) -> Vec<String> {
        let cfg = &self.state.config;
        let mut args = vec!["proxy".to_owned(), "--lab".into(), cfg.name.clone()];
        for r in routes {
            args.push("--route".into());
            args.push(r.to_arg());
        }
        if routes
            .iter()
            .any(|r| r.tls_in != TlsIn::Plain || r.tls_out.is_some())
        {
            let stats = tls_stats_file(names, p.service, container);
            args.extend([
                "--tls-dir".into(),
                self.tls_files().dir.display().to_string(),
                "--identity".into(),
                p.service.to_owned(),
                "--tls-version".into(),
                cfg.tls_version.to_string(),
                "--tls-resumption".into(),
                if cfg.tls_resumption { "on" } else { "off" }.into(),
                "--tls-stats".into(),
                stats.display().to_string(),
            ]);
        }
        args
    }
}

/// Renders a bring-your-own proxy's config template and returns the shell command that runs
/// it. `{key}` placeholders are replaced; lines between `{outbound_begin}` and
/// `{outbound_end}` repeat once per upstream service.
fn byo_args(
    names: &Names,
    p: &Pod,
    role: &str,
    cmd: &str,
    template_path: &str,
    vars: &[(&str, String)],
    repeated: &[Vec<(&str, String)>],
) -> Result<Vec<String>, LabError> {
    let template = fs::read_to_string(template_path)
        .map_err(io_err(format!("reading template {template_path}")))?;
    let rendered = render_template(&template, vars, repeated);
    let path = names.state_dir().join(format!("{}-{role}.cfg", p.service));
    fs::write(&path, rendered).map_err(io_err(format!("writing {}", path.display())))?;
    let command = cmd.replace("{config}", &path.display().to_string());
    // The marker lets teardown find the process by its command line.
    Ok(vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("exec {command}"),
        format!("--lab={}", names.lab),
    ])
}

pub fn render_template(
    template: &str,
    vars: &[(&str, String)],
    repeated: &[Vec<(&str, String)>],
) -> String {
    let fill = |text: &str, vars: &[(&str, String)]| {
        vars.iter().fold(text.to_owned(), |t, (k, v)| {
            t.replace(&format!("{{{k}}}"), v)
        })
    };
    let mut out = String::new();
    let mut block: Option<String> = None;
    for line in template.lines() {
        match (line.trim(), &mut block) {
            ("{outbound_begin}", None) => block = Some(String::new()),
            ("{outbound_end}", Some(b)) => {
                for item in repeated {
                    out.push_str(&fill(&fill(b, item), vars));
                }
                block = None;
            }
            (_, Some(b)) => {
                b.push_str(line);
                b.push('\n');
            }
            (_, None) => {
                out.push_str(&fill(line, vars));
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_repeat() {
        let t = "listen {inbound_port}\n{outbound_begin}\nfrontend {name} :{outbound_port} -> {upstream}\n{outbound_end}\nend\n";
        let out = render_template(
            t,
            &[("inbound_port", "15006".into())],
            &[
                vec![
                    ("name", "details".into()),
                    ("outbound_port", "15101".into()),
                    ("upstream", "10.96.0.11:9080".into()),
                ],
                vec![
                    ("name", "reviews".into()),
                    ("outbound_port", "15102".into()),
                    ("upstream", "10.96.0.12:9080".into()),
                ],
            ],
        );
        assert_eq!(
            out,
            "listen 15006\nfrontend details :15101 -> 10.96.0.11:9080\nfrontend reviews :15102 -> 10.96.0.12:9080\nend\n"
        );
    }
}
