//! `cargo xtask vm-test`: hopprobe's root tests inside the kernels EKS nodes run (Debian's 6.1
//! and 6.12 cloud kernels), booted under qemu. See docs/kernels.md; the latest table is in
//! docs/results/kernels.md.

mod guest;
pub mod initramfs;
mod kernel;
pub mod load;
mod qemu;
mod report;
mod tools;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cmd, ebpf, system};
use guest::{Plan, TestBinary, TestRun};
use kernel::{Kernel, SERIES, Series};
use report::KernelResult;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChoice {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    All,
}

impl KernelChoice {
    fn series(self) -> Vec<Series> {
        match self {
            KernelChoice::V6_1 => vec![SERIES[0]],
            KernelChoice::V6_12 => vec![SERIES[1]],
            KernelChoice::All => SERIES.to_vec(),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Which kernel series to boot.
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,
    /// Also load every program of this eBPF object in each VM; a verifier rejection fails the
    /// run (shows whether an object loads on these kernels).
    #[arg(long = "extra-object", value_name = "FILE")]
    pub extra_objects: Vec<PathBuf>,
    /// Only load the --extra-object programs: no test binaries, no `hopprobe check`.
    #[arg(long, requires = "extra_objects")]
    pub load_only: bool,
    /// Hard limit for one VM from boot to power-off, in seconds; qemu is killed after it.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout_secs: u64,
    /// Replace the table in docs/results/kernels.md (between its vm-test markers) with this
    /// run's.
    // The hidden alias is the flag's name from when the table lived in the README; the page's
    // marker comment still quotes it.
    #[arg(long, alias = "write-readme")]
    pub write_results: bool,
    /// Run only the test binaries whose name (as in the table, `tests/test:lab`) contains this;
    /// repeatable. For working on one test: a partial run does not pass CI's matrix.
    #[arg(long = "only", value_name = "NAME", conflicts_with = "write_results")]
    pub only: Vec<String>,
    /// Also run the lab's tests (the image always carries the lab); without it they print
    /// LAB-OFF and the table counts them as skipped. CI's matrix (`cargo xtask test`) runs with
    /// it; under emulation the bounds that measure the machine are printed, not asserted (see
    /// docs/design/timing-under-emulation.md).
    #[arg(long)]
    pub lab: bool,
}

/// What the VMs need from the host, as (a file that proves it, the Debian package): qemu,
/// the tools that build the image, and the programs `tools` copies into it.
pub const PACKAGES: [system::Package; 9] = [
    ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
    ("/bin/busybox", "busybox-static"),
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/bin/xz", "xz-utils"),
    ("/usr/bin/objcopy", "binutils"),
    ("/usr/sbin/xtables-nft-multi", "iptables"),
    ("/usr/sbin/sysctl", "procps"),
    ("/usr/sbin/haproxy", "haproxy"),
    ("/usr/sbin/bpftool", "bpftool"),
];

/// Directories of the workspace that tests read at run time (through `CARGO_MANIFEST_DIR`),
/// copied to the same absolute paths in the image: the lab's haproxy config templates, the
/// file formats' schemas and golden files.
const TEST_DATA: [&str; 4] = [
    "tests/lab",
    "formats/schemas",
    "formats/tests/data",
    "loadgen/tests/data",
];

pub const DEFAULT_TIMEOUT_SECS: u64 = 1200;

/// Seconds one test binary may run inside a VM.
const TEST_TIMEOUT_SECS: u64 = 600;

#[derive(Debug, Clone)]
struct Executable {
    name: String,
    path: PathBuf,
    cwd: PathBuf,
    test: bool,
}

/// Builds the workspace's test binaries (and binaries, for `CARGO_BIN_EXE_*`) and lists them.
fn build_executables() -> Result<Vec<Executable>> {
    let mut c = cmd::cargo_command(&[
        "test",
        "--workspace",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    c.stdout(Stdio::piped());
    eprintln!("xtask: $ cargo test --workspace --no-run --message-format=json-render-diagnostics");
    let mut child = c.spawn().context("starting cargo")?;
    let mut found = Vec::new();
    for line in BufReader::new(child.stdout.take().context("piped")?).lines() {
        let msg: Value = match serde_json::from_str(&line?) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(path) = msg["executable"].as_str() else {
            continue;
        };
        let manifest = PathBuf::from(msg["manifest_path"].as_str().unwrap_or("/"));
        let kind = msg["target"]["kind"][0].as_str().unwrap_or("?");
        let target = msg["target"]["name"].as_str().unwrap_or("?");
        let test = msg["profile"]["test"] == true;
        found.push(Executable {
            // `tests/test:cli`, `probe-user/lib:probe_user`: unique, and one word for the
            // guest's markers.
            name: format!(
                "{}/{kind}:{target}",
                manifest
                    .parent()
                    .and_then(Path::file_name)
                    .map_or_else(|| "?".into(), |d| d.to_string_lossy())
            ),
            path: PathBuf::from(path),
            cwd: manifest.parent().unwrap_or(Path::new("/")).to_owned(),
            test,
        });
    }
    if !child.wait()?.success() {
        bail!("cargo test --no-run failed");
    }
    Ok(found)
}

/// A copy without debug information: it makes the initramfs ten times smaller, and panics
/// still name their functions.
fn stripped(bin: &Path, name: &std::ffi::OsStr) -> Result<PathBuf> {
    let dir = kernel::vm_dir().join("bin");
    fs::create_dir_all(&dir)?;
    let out = dir.join(name);
    let newer = |a: &Path, b: &Path| -> bool {
        let m = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((m(a), m(b)), (Some(x), Some(y)) if x >= y)
    };
    if !newer(&out, bin) {
        cmd::run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(bin)
                .arg(&out),
        )?;
    }
    Ok(out)
}

fn abs(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn initramfs(
    kernel: &Kernel,
    plan: &Plan,
    binaries: &[(PathBuf, PathBuf)],
    objects: &[(PathBuf, String)],
) -> Result<PathBuf> {
    let dir = kernel::vm_dir().join(&kernel.release);
    fs::create_dir_all(&dir)?;
    let mut image = initramfs::Initramfs::create(&dir.join("initramfs.cpio"))?;
    for d in ["/proc", "/sys", "/dev", "/run", "/root", "/etc"] {
        image.dir(d, 0o755)?;
    }
    image.dir("/tmp", 0o1777)?;
    // The kernel opens /dev/console for init before anything is mounted.
    image.char_device("/dev/console", 5, 1)?;
    image.program(Path::new("/bin/busybox"), "/bin/busybox")?;
    for applet in guest::APPLETS {
        image.symlink(&format!("/bin/{applet}"), "busybox")?;
    }
    tools::add(&mut image)?;
    image.bytes(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )?;
    image.bytes("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    // Tests name loopback `localhost` (TLS certificates are issued for it).
    image.bytes("/etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost\n")?;
    for (name, file) in &kernel.modules {
        image.file(&format!("/lib/vm-modules/{name}.ko"), file, 0o644)?;
    }
    for (host, at) in binaries {
        image.program(host, &abs(at))?;
    }
    for t in &plan.tests {
        image.dir(&t.cwd, 0o755)?;
    }
    // Folders and all below them: test data is grouped in sub-folders (oha's reports by
    // version, say), which a test reads at run time from where its source found them.
    let mut dirs: Vec<PathBuf> = TEST_DATA
        .iter()
        .map(|d| cmd::workspace_root().join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.is_file() {
                image.file(&abs(&path), &path, 0o644)?;
            }
        }
    }
    for (host, at) in objects {
        image.file(at, host, 0o644)?;
    }
    image.bytes("/init", 0o755, guest::init_script(plan).as_bytes())?;
    image.finish()
}

/// Why this kernel's run failed, if it did.
fn problems(
    kernel: &Kernel,
    boot: &qemu::Boot,
    o: &guest::Outcome,
    plan: &Plan,
) -> Result<Vec<String>> {
    let mut p = Vec::new();
    if boot.timed_out {
        p.push(format!(
            "timed out after {:.0} s",
            boot.elapsed.as_secs_f64()
        ));
    } else if !o.done {
        p.push(format!(
            "the VM stopped before the end of /init (qemu exit {:?})",
            boot.exit
        ));
    }
    if !o.insmod_failed.is_empty() {
        p.push(format!("insmod failed: {}", o.insmod_failed.join(", ")));
    }
    if plan.hopprobe.is_some() {
        match (&o.check, o.check_rc) {
            (Some(check), Some(0)) => {
                // The optional fast paths must be found wherever the kernel has them, or the
                // matrix would not exercise them.
                let available = |h: &str| {
                    check["hooks"]
                        .as_array()
                        .and_then(|hs| hs.iter().find(|x| x["hook"] == h))
                        .is_some_and(|x| x["available"] == true)
                };
                if available("kprobe") != kernel.config_enabled("KPROBES")? {
                    p.push("`hopprobe check` disagrees with CONFIG_KPROBES".into());
                }
                if available("fentry")
                    != kernel.config_enabled("DYNAMIC_FTRACE_WITH_DIRECT_CALLS")?
                {
                    p.push("`hopprobe check` disagrees with CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS (fentry)".into());
                }
            }
            (_, rc) => p.push(format!("`hopprobe check` exit {rc:?}")),
        }
    }
    for t in &plan.tests {
        match o.tests.iter().find(|r| r.name == t.name) {
            None => p.push(format!("{} did not run", t.name)),
            Some(r) if r.rc != Some(0) || r.totals.failed > 0 => {
                let mut why = format!("{} exit {:?}", r.name, r.rc);
                if !r.failed.is_empty() {
                    why.push_str(&format!(" ({})", r.failed.join(", ")));
                }
                p.push(why);
            }
            Some(r) if !r.skipped.is_empty() => {
                p.push(format!("{} skipped: {}", r.name, r.skipped.join(", ")));
            }
            Some(_) => {}
        }
    }
    if !plan.tests.is_empty() && o.tests.iter().map(TestRun::passed).sum::<u64>() == 0 {
        p.push("no test passed".into());
    }
    for i in 0..plan.objects.len() {
        match o.loads.iter().find(|(j, _)| *j == i) {
            Some((_, Some(0))) => {}
            Some((_, rc)) => p.push(format!(
                "{} did not load (vm-load exit {rc:?}): {}",
                plan.objects[i],
                o.load_verdicts.get(&i).map_or("", String::as_str)
            )),
            None => p.push(format!("{} was not loaded", plan.objects[i])),
        }
    }
    Ok(p)
}

/// The page with the latest table, relative to the workspace root.
const RESULTS_PAGE: &str = "docs/results/kernels.md";
/// The table's markers. The begin marker goes on to say what writes the table; that part of its
/// line is the page's, kept as it is.
const TABLE_BEGIN: &str = "<!-- vm-test table: begin";
const TABLE_END: &str = "<!-- vm-test table: end -->";

/// `text` with the lines between the markers replaced by `table`.
fn replace_table(text: &str, table: &str) -> Option<String> {
    let begin = text.find(TABLE_BEGIN)?;
    let after_begin = begin + text[begin..].find('\n')? + 1;
    let end = after_begin + text[after_begin..].find(TABLE_END)?;
    Some(format!("{}{table}{}", &text[..after_begin], &text[end..]))
}

fn write_results(page: &Path, table: &str) -> Result<()> {
    let text = fs::read_to_string(page).with_context(|| format!("reading {}", page.display()))?;
    let Some(new) = replace_table(&text, table) else {
        bail!(
            "{} has no {TABLE_BEGIN} ... --> {TABLE_END} block",
            page.display()
        );
    };
    fs::write(page, new).with_context(|| format!("writing {}", page.display()))?;
    eprintln!("xtask: wrote the table into {}", page.display());
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    system::ensure_packages(&PACKAGES)?;
    // `cargo test` may have rebuilt xtask while it runs (`cargo xtask test`): the running
    // binary is then only reachable through /proc, and its old path reads "... (deleted)".
    let exe = std::env::current_exe().context("locating xtask")?;
    let xtask = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
    let running = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
    let mut plan = Plan {
        xtask: abs(&xtask),
        test_timeout_secs: TEST_TIMEOUT_SECS,
        lab: args.lab,
        ..Plan::default()
    };
    let mut binaries: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    binaries.insert(stripped(&running, "xtask".as_ref())?, xtask.clone());
    if !args.load_only {
        ebpf::build()?;
        for e in build_executables()? {
            // xtask's own tests check this machinery on the host; inside a VM there is no cargo
            // or qemu for them to drive.
            if e.test && e.cwd.ends_with("xtask") {
                continue;
            }
            if e.test && !args.only.is_empty() && !args.only.iter().any(|o| e.name.contains(o)) {
                continue;
            }
            if e.test {
                plan.tests.push(TestBinary {
                    name: e.name.clone(),
                    path: abs(&e.path),
                    cwd: abs(&e.cwd),
                });
            } else if e.name.ends_with("probe-user/bin:hopprobe") {
                // Built for probe-user's integration tests; the tests package's run it too
                // (HOPPROBE_BIN, see guest::init_script).
                plan.hopprobe = Some(abs(&e.path));
            }
            let name = e.path.file_name().context("file name")?.to_owned();
            binaries.insert(stripped(&e.path, &name)?, e.path);
        }
        // cargo reports them in build order, which varies; the table should not.
        plan.tests.sort_by(|a, b| a.name.cmp(&b.name));
        if plan.hopprobe.is_none() {
            bail!("cargo built no hopprobe binary");
        }
    }
    let objects: Vec<(PathBuf, String)> = args
        .extra_objects
        .iter()
        .enumerate()
        .map(|(i, o)| (o.clone(), format!("/vm/objects/{i}.o")))
        .collect();
    plan.objects = objects.iter().map(|(_, at)| at.clone()).collect();
    let binaries: Vec<(PathBuf, PathBuf)> = binaries.into_iter().collect();

    // Kernels and images first, one after the other (downloads, cpio); then every VM at
    // once. A guest spends much of its time waiting (the lab's injected delays, timeouts, its
    // own idle vCPU), so two VMs side by side finish well before two in a row.
    let mut prepared = Vec::new();
    for series in args.kernel.series() {
        let kernel = kernel::prepare(series)?;
        let mut plan = plan.clone();
        plan.modules = kernel.modules.iter().map(|(n, _)| n.clone()).collect();
        let initrd = initramfs(&kernel, &plan, &binaries, &objects)?;
        let log = kernel::vm_dir().join(format!("{}.log", kernel.release));
        prepared.push((series, kernel, plan, initrd, log));
    }
    let limit = Duration::from_secs(args.timeout_secs);
    let boots: Vec<Result<qemu::Boot>> = std::thread::scope(|scope| {
        let running: Vec<_> = prepared
            .iter()
            .map(|(series, kernel, _, initrd, log)| {
                scope.spawn(move || qemu::boot(&kernel.vmlinuz, initrd, log, limit, series.name))
            })
            .collect();
        running
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the VM's thread panicked")))
            })
            .collect()
    });
    let mut results = Vec::new();
    for ((series, kernel, plan, _, log), boot) in prepared.iter().zip(boots) {
        let boot = boot?;
        let outcome = guest::parse(&boot.serial);
        let problems = problems(kernel, &boot, &outcome, plan)?;
        eprintln!(
            "xtask: [{}] {} in {:.0} s; serial log {}",
            series.name,
            if problems.is_empty() {
                "passed"
            } else {
                "FAILED"
            },
            boot.elapsed.as_secs_f64(),
            log.display()
        );
        results.push(KernelResult {
            series: series.name,
            package: kernel.package.clone(),
            elapsed: boot.elapsed,
            outcome,
            problems,
        });
    }
    let table = report::markdown(&results);
    println!("\n{table}");
    let md = kernel::vm_dir().join("kernels.md");
    fs::write(&md, &table)?;
    eprintln!("xtask: table written to {}", md.display());
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| r.series)
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed on kernel {}", failed.join(", "));
    }
    if args.write_results {
        write_results(&cmd::workspace_root().join(RESULTS_PAGE), &table)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# Results\n\ntext before\n\n\
        <!-- vm-test table: begin (written by `cargo xtask vm-test --write-results`) -->\n\
        | old | table |\n|---|---|\n\
        <!-- vm-test table: end -->\n\ntext after\n";

    #[test]
    fn the_table_between_the_markers_is_replaced_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let page = dir.path().join("kernels.md");
        fs::write(&page, PAGE).expect("write");
        write_results(&page, "| new |\n|---|\n").expect("markers are there");
        let text = fs::read_to_string(&page).expect("read");
        assert_eq!(
            text,
            "# Results\n\ntext before\n\n\
            <!-- vm-test table: begin (written by `cargo xtask vm-test --write-results`) -->\n\
            | new |\n|---|\n\
            <!-- vm-test table: end -->\n\ntext after\n"
        );
        // Twice is the same as once.
        write_results(&page, "| new |\n|---|\n").expect("markers are still there");
        assert_eq!(fs::read_to_string(&page).expect("read"), text);
    }

    #[test]
    fn a_page_without_markers_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let page = dir.path().join("kernels.md");
        fs::write(&page, "# Results\n").expect("write");
        let err = write_results(&page, "| new |\n").expect_err("no markers");
        assert!(
            err.to_string().contains("has no <!-- vm-test table: begin"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&page).expect("read"), "# Results\n");
        assert_eq!(
            replace_table("<!-- vm-test table: begin -->\nno end\n", "x"),
            None
        );
    }

    #[test]
    fn the_results_page_has_the_markers() {
        let page = cmd::workspace_root().join(RESULTS_PAGE);
        let text = fs::read_to_string(&page).expect("the results page exists");
        assert!(replace_table(&text, "").is_some(), "{}", page.display());
    }
}
