//! `hoplab`: bring the lab up, show it, take it down; and, inside the lab, run as an app or a
//! proxy container. `cargo xtask lab ...` runs this.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use testkit::lab::{
    Lab, LabError,
    app::{self, AppOptions},
    config::{Delay, LabConfig, Mesh, SidecarDelay, TlsVersion, Workers, on_off, per_service},
    proxy::{self, ProxyTls, Route},
    state, teardown,
    tls::{TlsFiles, TlsPolicy},
    topology, wire,
};

#[derive(Parser, Debug)]
#[command(
    name = "hoplab",
    about = "A Kubernetes node with a service mesh, built from network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_NAME: &str = "hpl";

#[derive(Subcommand, Debug)]
enum Command {
    /// Build the lab and leave it running.
    Up(UpArgs),
    /// Show the lab: namespaces, URLs, pods, cgroups, injected delays.
    Status {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Print the lab's state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the lab: processes, namespaces (with their veths and iptables rules), cgroups.
    Down {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Remove every lab found on this machine.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// (inside the lab) An app container.
    #[command(hide = true)]
    App {
        #[arg(long)]
        lab: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        delay: Delay,
        #[arg(long)]
        workers: u32,
        /// `service=ip:port`, called in order for each request.
        #[arg(long, value_parser = parse_upstream)]
        upstream: Vec<(String, SocketAddr)>,
    },
    /// (inside the lab) The delayed client ↔ node link: a TAP device at each end.
    #[command(hide = true)]
    Wire {
        #[arg(long)]
        lab: String,
        #[arg(long)]
        client_netns: String,
        #[arg(long)]
        node_netns: String,
        /// One-way delay in microseconds.
        #[arg(long)]
        delay_us: u64,
    },
    /// (inside the lab) A proxy container: sidecar or ingress.
    #[command(hide = true)]
    Proxy {
        #[arg(long)]
        lab: String,
        /// `listen=upstream@delay[,in=tls|mtls][,out=<server name>]`.
        #[arg(long)]
        route: Vec<Route>,
        /// The lab's TLS directory (CA and leaves), for routes that speak TLS.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// Whose certificate this proxy presents (its pod's service).
        #[arg(long, requires = "tls_dir")]
        identity: Option<String>,
        #[arg(long, value_enum, default_value = "1.3")]
        tls_version: TlsVersion,
        // Set, not clap's SetTrue for a bool: it takes `on`/`off`.
        #[arg(long, default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
        tls_resumption: bool,
        /// Keep this file updated with the handshake counts (JSON).
        #[arg(long)]
        tls_stats: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// Name of the lab: prefix of its namespaces and cgroup (1-12 lowercase letters/digits).
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    #[arg(long, value_enum, default_value_t = Mesh::None)]
    mesh: Mesh,
    /// Put an ingress proxy pod in front of productpage.
    #[arg(long)]
    ingress: bool,
    /// Delay the built-in sidecar adds per request: `2ms`, or `inbound=2ms,outbound=1ms`;
    /// delays may be `exp:2ms` or `uniform:1ms..3ms`.
    #[arg(long, default_value = "0")]
    sidecar_delay: SidecarDelay,
    /// Delay the built-in ingress proxy adds per request.
    #[arg(long, default_value = "0")]
    ingress_delay: Delay,
    /// Service time per app: `productpage=5ms,reviews=exp:2ms`.
    #[arg(long, default_value = "", value_parser = per_service::<Delay>)]
    app_delay: std::collections::BTreeMap<String, Delay>,
    /// Workers per app (concurrent requests it serves): `productpage=1`. Default 16.
    #[arg(long, default_value = "", value_parser = per_service::<Workers>)]
    app_workers: std::collections::BTreeMap<String, Workers>,
    /// Run this proxy as every sidecar instead of the built-in one; `{config}` is replaced by
    /// the rendered --sidecar-template. Runs as uid 1337, whose traffic is not intercepted.
    #[arg(long, requires = "sidecar_template")]
    sidecar_cmd: Option<String>,
    #[arg(long, requires = "sidecar_cmd")]
    sidecar_template: Option<PathBuf>,
    /// Run this proxy as the ingress instead of the built-in one.
    #[arg(long, requires = "ingress_template")]
    ingress_cmd: Option<String>,
    #[arg(long, requires = "ingress_cmd")]
    ingress_template: Option<PathBuf>,
    /// One-way delay on the client ↔ node link (a userspace delay line between two TAP
    /// devices, both directions): `5ms`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    link_delay: std::time::Duration,
    /// The ingress terminates HTTPS on its NodePort (needs --ingress); plaintext behind it.
    #[arg(long)]
    ingress_tls: bool,
    /// Sidecar to sidecar, and ingress to productpage's sidecar, over strict mutual TLS with
    /// the lab's CA (needs --mesh sidecar and --ingress). App ↔ own sidecar stays plaintext.
    #[arg(long)]
    mtls: bool,
    /// The TLS version every TLS hop speaks (both sides pinned to it). Default 1.3.
    #[arg(long, value_enum)]
    tls_version: Option<TlsVersion>,
    /// Session resumption (tickets, session caches) on both sides: on or off. Default on.
    #[arg(long, value_parser = on_off)]
    tls_resumption: Option<bool>,
}

fn parse_upstream(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s.split_once('=').ok_or("expected service=ip:port")?;
    Ok((
        name.to_owned(),
        addr.parse().map_err(|e| format!("{addr}: {e}"))?,
    ))
}

fn up(args: UpArgs) -> Result<()> {
    let mut config = LabConfig::new(&args.name);
    config.mesh = args.mesh;
    config.ingress = args.ingress;
    config.sidecar_delay = args.sidecar_delay;
    config.ingress_delay = args.ingress_delay;
    config.app_delay = args.app_delay;
    config.app_workers = args.app_workers;
    config.link_delay = args.link_delay;
    let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string());
    config.sidecar_cmd = args.sidecar_cmd;
    config.sidecar_template = path(args.sidecar_template);
    config.ingress_cmd = args.ingress_cmd;
    config.ingress_template = path(args.ingress_template);
    config.ingress_tls = args.ingress_tls;
    config.mtls = args.mtls;
    if (args.tls_version.is_some() || args.tls_resumption.is_some()) && !config.any_tls() {
        bail!("--tls-version and --tls-resumption need --ingress-tls or --mtls");
    }
    config.tls_version = args.tls_version.unwrap_or_default();
    config.tls_resumption = args.tls_resumption.unwrap_or(true);
    let exe = std::env::current_exe().context("locating hoplab")?;
    let lab = Lab::up(config, &exe)?;
    print!("{}", lab.state.render());
    lab.keep();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up(args),
        Command::Status { name, json } => status(&name, json),
        Command::Down { name, all } => {
            let labs = if all {
                teardown::all_labs()
            } else {
                vec![name]
            };
            labs.iter().try_for_each(|l| {
                teardown::down(l).with_context(|| format!("removing lab {l}"))?;
                eprintln!("lab `{l}` is down");
                Ok(())
            })
        }
        Command::App {
            lab: _,
            name,
            listen,
            delay,
            workers,
            upstream,
        } => app::serve(AppOptions {
            name,
            listen,
            delay,
            workers,
            upstreams: upstream,
        })
        .context("app"),
        Command::Proxy {
            lab: _,
            route,
            tls_dir,
            identity,
            tls_version,
            tls_resumption,
            tls_stats,
        } => {
            let tls = tls_dir.map(|dir| ProxyTls {
                files: TlsFiles { dir },
                identity: identity.unwrap_or_default(),
                policy: TlsPolicy {
                    version: tls_version,
                    resumption: tls_resumption,
                },
                stats: tls_stats,
            });
            proxy::serve(route, tls).context("proxy")
        }
        Command::Wire {
            lab: _,
            client_netns,
            node_netns,
            delay_us,
        } => {
            let end = |netns: String| wire::End {
                netns,
                ifname: topology::UPLINK.to_owned(),
            };
            wire::run(
                &end(client_netns),
                &end(node_netns),
                std::time::Duration::from_micros(delay_us),
            )
            .context("client link")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hoplab: {e:#}");
            if e.downcast_ref::<LabError>()
                .is_some_and(|l| matches!(l, LabError::AlreadyUp(_) | LabError::NotUp(_)))
            {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn status(name: &str, json: bool) -> Result<()> {
    let names = testkit::lab::names::Names::new(name);
    let Some(s) = state::load(&names) else {
        if teardown::leftovers(name).is_empty() {
            bail!(LabError::NotUp(name.to_owned()));
        }
        bail!(
            "lab `{name}` has no state file but left {:?}; run `lab down --name {name}`",
            teardown::leftovers(name)
        );
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", s.render());
    }
    Ok(())
}
