//! Project tasks: `cargo xtask <task>`. docs/xtask.md says what each one does.

mod bench_loadgen;
mod bench_probe;
mod bpf_perf;
mod cmd;
mod demo;
mod ebpf;
mod image;
#[cfg(test)]
mod module_graph;
mod precise_server;
mod soak;
mod system;
mod toolchain;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "xtask", about = "hopprobe's build, run and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Build the eBPF object, installing a missing toolchain piece when run as root.
    BuildEbpf,
    /// Build everything and run `hopprobe run` on this machine (needs root).
    Run {
        /// Arguments for `hopprobe run`, e.g. `-- --duration 30s --json out.json`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The lab: `lab up [--mesh none|sidecar] [--ingress] ...`, `lab status`, `lab down`
    /// (see `cargo xtask lab help`).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The lab with and without a sidecar mesh under loadgen, measured by hopprobe.
    Demo,
    /// The per-hop ground-truth matrix in the lab (needs root): sidecar delay × app service
    /// time, expected vs measured per hop; exits non-zero when a row is out of tolerance.
    Accuracy {
        /// Arguments for `hopaccuracy`, e.g. `-- --quick` or `-- --requests 200`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Everything CI checks: install what is missing, build, lint, run every test (root ones
    /// included when run as root, and then the VM matrix: every test inside Linux 6.1 and 6.12).
    Test,
    /// Benchmark loadgen against oha and wrk on a private loopback nginx (installs what is
    /// missing when run as root; takes a few minutes; not part of `test`).
    BenchLoadgen,
    /// What hopprobe costs the requests it watches, in the lab: latency and throughput with
    /// and without it, its CPU and memory, each program's kernel time (needs root; a few
    /// minutes; not part of `test`).
    BenchProbe,
    /// hopprobe as the DaemonSet runs it, in the lab under steady load until 10 M exchanges
    /// have gone through it: RSS, series and CPU per exchange sampled, their slopes printed
    /// (needs root; several minutes; not part of `test`).
    Soak,
    /// hopprobe's container image, built here with no registry: hopprobe and its libraries on
    /// scratch (the runtime stage of deploy/Containerfile), written as an OCI archive.
    Image(image::Args),
    /// Run the root integration tests inside Debian's 6.1 and 6.12 cloud kernels under qemu and
    /// print a per-kernel table (tests, verifier instruction counts, hooks).
    VmTest(vm::Args),
    /// (Runs inside a vm-test VM.) Load every program of these eBPF objects, print what the
    /// verifier said, fail if it rejected one.
    #[command(hide = true)]
    VmLoad { objects: Vec<std::path::PathBuf> },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf => {
            ebpf::build()?;
        }
        Task::Run { args } => {
            ebpf::build()?;
            cmd::cargo(&["build", "--release", "-p", "probe-user"])?;
            let bin = demo::measuring("hopprobe");
            let mut full = vec!["run".to_owned()];
            full.extend(args);
            cmd::exec(&bin, &full)?;
        }
        Task::Lab { args } => {
            if system::is_root() {
                system::ensure_packages(&system::LAB_PACKAGES)?;
            }
            cmd::cargo(&["build", "-p", "hopprobe-tests", "--bin", "hoplab"])?;
            cmd::exec(&demo::bin("hoplab"), &args)?;
        }
        Task::Demo => demo::demo()?,
        Task::Accuracy { args } => {
            demo::prepare_lab_run("the accuracy matrix", &["hopaccuracy"])?;
            // The release builds, unless the arguments name others.
            let mut full = Vec::new();
            for tool in ["hopprobe", "loadgen"] {
                let flag = format!("--{tool}");
                if !args
                    .iter()
                    .any(|a| a == &flag || a.starts_with(&format!("{flag}=")))
                {
                    full.push(flag);
                    full.push(demo::measuring(tool).display().to_string());
                }
            }
            full.extend(args);
            cmd::exec(&demo::bin("hopaccuracy"), &full)?;
        }
        Task::Test => test()?,
        Task::BenchLoadgen => bench_loadgen::bench()?,
        Task::BenchProbe => bench_probe::bench()?,
        Task::Soak => soak::soak()?,
        Task::Image(args) => image::image(&args)?,
        Task::VmTest(args) => vm::run(&args)?,
        Task::VmLoad { objects } => vm::load::run(&objects)?,
    }
    Ok(())
}

/// Disk a fresh `cargo xtask test` writes, rounded up from the figure measured in `test` (the
/// root Cargo.toml quotes that figure).
const FRESH_TEST_GIB: u64 = 5;

fn test() -> Result<()> {
    let root = system::is_root();
    if root {
        system::ensure_packages(&system::TEST_PACKAGES)?;
        system::ensure_packages(&system::LAB_PACKAGES)?;
        system::ensure_packages(&vm::PACKAGES)?;
        system::ensure_packages(&image::PACKAGES)?;
    } else {
        eprintln!(
            "xtask: not root: the root-only integration tests (eBPF, network namespaces) will be \
             skipped; run as root to include them"
        );
    }
    // Measured from a fresh clone: 4.2 GiB (debug builds 2.1, the VMs' kernels and images 1.2,
    // the release builds of hopprobe and loadgen 0.8).
    system::ensure_free_space(&cmd::target_dir(), FRESH_TEST_GIB, "cargo xtask test")?;
    ebpf::build()?;
    cmd::cargo(&["fmt", "--all", "--check"])?;
    cmd::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Root tests share the kernel (tracepoints, cgroups): one test thread, as aya's own do.
    let mut test = cmd::cargo_command(&[
        "test",
        "--workspace",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ]);
    // The hopprobe the tests run (testkit::probe::binary): this `cargo test` builds it for
    // probe-user's integration tests before any test runs. Named here, the tests do not each
    // start a cargo to build it with probe-user's features alone, which differ from the
    // workspace's and would rebuild half the dependencies a second time.
    test.env("HOPPROBE_BIN", demo::bin("hopprobe"));
    if root {
        // The accuracy matrix measures with the tools as users run them (see
        // `demo::measuring`); the demo below uses the same builds.
        demo::build_measuring()?;
        test.env("HOPPROBE_RELEASE_DIR", demo::release_dir());
        // The container tests run the image as the DaemonSet runs it.
        image::image(&image::Args { rootfs_only: None })?;
        test.env("HOPPROBE_IMAGE", image::archive()?)
            .env("HOPPROBE_CONTAINER_TESTS", "require");
        test.env("HOPPROBE_ROOT_TESTS", "require")
            .env("HOPPROBE_LAB_TESTS", "require")
            .env("HOPPROBE_BROWSER_TESTS", "require");
    }
    let totals = cmd::run_counting_tests(&mut test)?;
    // cargo ends with the (empty) doc-test results of the last crate; one closing line says
    // what the whole run did.
    println!("{} passed, {} failed", totals.passed, totals.failed);
    if totals.passed == 0 {
        anyhow::bail!("no test ran");
    }
    if root {
        // The README's first command, as a fresh machine runs it, and what its report must say.
        demo::demo()?;
        demo::check_report()?;
        // The kernels EKS nodes run: the same tests, and hooks this machine lacks (kprobe,
        // fentry).
        vm::run(&vm::Args {
            kernel: vm::KernelChoice::All,
            extra_objects: Vec::new(),
            load_only: false,
            timeout_secs: vm::DEFAULT_TIMEOUT_SECS,
            write_results: false,
            only: Vec::new(),
            // The lab's tests too: the hooks they exercise (TC through NAT, cgroup_skb on the
            // pods, the read hooks) are what differs between kernels.
            lab: true,
        })?;
    } else {
        eprintln!("xtask: not root: the VM test matrix (cargo xtask vm-test) is skipped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_args(args: &[&str]) -> vm::Args {
        let cli = Cli::try_parse_from(["xtask", "vm-test"].iter().chain(args))
            .unwrap_or_else(|e| panic!("{e}"));
        match cli.task {
            Task::VmTest(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn vm_test_writes_the_results_page_on_request() {
        assert!(vm_args(&["--write-results"]).write_results);
        // The flag's old name, which the page's marker still quotes.
        assert!(vm_args(&["--write-readme"]).write_results);
        assert!(!vm_args(&[]).write_results);
    }

    /// `.rs` files below `dir`, recursively.
    fn rust_sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                rust_sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The repository has no numbered issues a reader could look up: the sources name the
    /// thing (the per-hop ground-truth matrix, its tolerance) instead.
    #[test]
    fn sources_name_things_not_issue_numbers() {
        let root = cmd::workspace_root();
        let mut files = Vec::new();
        for dir in ["xtask/src", "xtask/tests", "tests/src", "tests/tests"] {
            rust_sources(&root.join(dir), &mut files);
        }
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for (n, line) in text.lines().enumerate() {
                let lower = line.to_lowercase();
                let numbered = lower.match_indices("issue").any(|(at, word)| {
                    let rest = lower[at + word.len()..].trim_start_matches([' ', '#', '-', '_']);
                    rest.starts_with(|c: char| c.is_ascii_digit()) || rest.starts_with("'s ")
                });
                if numbered {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(found.is_empty(), "{}", found.join("\n"));
    }

    /// The tests run probe-user's own `hopprobe` (`testkit::probe::binary`), not a second
    /// binary of the tests package built from a copy of its `main.rs`.
    #[test]
    fn the_tests_run_the_hopprobe_users_run() {
        let root = cmd::workspace_root();
        let copy = concat!("hopprobe", "-test");
        // Named, not as the start of the package's name, `hopprobe-tests`.
        let names = |text: &str| {
            text.match_indices(copy)
                .any(|(at, _)| !text[at + copy.len()..].starts_with('s'))
        };
        let manifest = std::fs::read_to_string(root.join("tests/Cargo.toml")).expect("manifest");
        assert!(!names(&manifest), "tests/Cargo.toml builds {copy}");
        let mut files = Vec::new();
        for dir in ["tests/src", "tests/tests", "xtask/src"] {
            rust_sources(&root.join(dir), &mut files);
        }
        let found: Vec<String> = files
            .iter()
            .filter(|f| {
                f.file_stem().is_some_and(|s| s == copy)
                    || std::fs::read_to_string(f).is_ok_and(|t| names(&t))
            })
            .map(|f| f.display().to_string())
            .collect();
        assert!(found.is_empty(), "{copy} in {found:?}");
    }

    #[test]
    fn the_disk_figures_agree() {
        let measured: f64 = include_str!("main.rs")
            .split_once(concat!("Measured from a fresh clone", ": "))
            .and_then(|(_, rest)| rest.split_once(" GiB"))
            .and_then(|(n, _)| n.parse().ok())
            .expect("test() names the measured figure");
        assert!(FRESH_TEST_GIB as f64 >= measured);
        // The profile's comment says what line-tables-only debug info brought it down to.
        let quoted = format!("a fresh run writes {measured} GiB");
        assert!(
            include_str!("../../Cargo.toml")
                .replace("\n# ", " ")
                .contains(&quoted),
            "the root Cargo.toml does not say \"{quoted}\""
        );
    }
}
