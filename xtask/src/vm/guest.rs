//! What runs inside the VM (`/init`, a busybox shell script) and reading back what it printed
//! on the serial console.

use crate::cmd::TestTotals;

/// Every line the guest prints for the host starts with this.
pub const MARK: &str = "@@hopprobe-vm";

/// Tells the tests that they run under qemu's software emulation (TCG), where a CPU is many
/// times slower than the host's; testkit reads it (`testkit::emulation`) to widen upper timing
/// bounds, and only those.
pub const EMULATION_ENV: &str = "HOPPROBE_EMULATED_CPU";
pub const EMULATION_VALUE: &str = "qemu-tcg";

/// A test executable and the directory cargo would run it in (its package's).
#[derive(Debug, Clone)]
pub struct TestBinary {
    pub name: String,
    pub path: String,
    pub cwd: String,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub modules: Vec<String>,
    pub hopprobe: Option<String>,
    pub tests: Vec<TestBinary>,
    pub xtask: String,
    pub objects: Vec<String>,
    /// Seconds one test binary may run before `timeout` kills it.
    pub test_timeout_secs: u64,
    /// Run the lab's tests too (`vm-test --lab`); otherwise they say LAB-OFF (see `NOT_RUN_HERE`).
    pub lab: bool,
}

/// Busybox applets the script uses, linked into `/bin`. `ip` is not among them: the tests
/// need iproute2's, for `ip netns`.
pub const APPLETS: [&str; 16] = [
    "sh", "mount", "mkdir", "insmod", "poweroff", "cat", "echo", "cut", "timeout", "uname",
    "sleep", "dmesg", "tail", "sync", "ls", "env",
];

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn init_script(plan: &Plan) -> String {
    let lab = if plan.lab { "require" } else { "off" };
    // The hopprobe that `check` runs below is the one the tests run (testkit::probe::binary).
    let hopprobe_bin = plan
        .hopprobe
        .as_deref()
        .map(|h| format!("export HOPPROBE_BIN={}", quote(h)))
        .unwrap_or_default();
    let mut s = format!(
        r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1 NO_COLOR=1
# A root or lab test that cannot run fails instead of passing with SKIPPED; and the tests know
# that they run on a CPU that qemu emulates in software (see testkit::emulation).
export HOPPROBE_ROOT_TESTS=require HOPPROBE_LAB_TESTS={lab} {EMULATION_ENV}={EMULATION_VALUE}
# No browser in the image: the report's rendering test runs on the host.
export HOPPROBE_BROWSER_TESTS=off
{hopprobe_bin}
# A node's container runtime gives its containers far more than the kernel's default 1024
# descriptors (containerd: 1048576); haproxy refuses to start with fewer than it needs.
ulimit -n 1048576
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /tmp and /run stay on the initramfs (already in memory): a tmpfs there would hide binaries of a
# workspace that lives below them.
mkdir -p /run/netns /sys/fs/cgroup /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
ip link set lo up
# On a node every process lives in a cgroup below the root (systemd, kubelet); so do the tests.
mkdir /sys/fs/cgroup/vm-tests && echo $$ > /sys/fs/cgroup/vm-tests/cgroup.procs
mark() {{ echo "{MARK} $*"; }}
now() {{ cut -d' ' -f1 /proc/uptime; }}
mark kernel "$(uname -r)" uptime "$(now)"
"#
    );
    for m in &plan.modules {
        s.push_str(&format!(
            "insmod /lib/vm-modules/{m}.ko || mark insmod-failed {m}\n"
        ));
    }
    if let Some(hopprobe) = &plan.hopprobe {
        s.push_str(&format!(
            "mark begin check\n{} check --json; mark end check rc=$?\n",
            quote(hopprobe)
        ));
    }
    for t in &plan.tests {
        s.push_str(&format!(
            "mark begin test {name}; t0=$(now)\n\
             (cd {cwd} && timeout {limit} {path} --test-threads=1 --show-output)\n\
             mark end test {name} rc=$? start=$t0 stop=$(now)\n",
            name = quote(&t.name),
            cwd = quote(&t.cwd),
            limit = plan.test_timeout_secs,
            path = quote(&t.path),
        ));
    }
    for (i, o) in plan.objects.iter().enumerate() {
        s.push_str(&format!(
            "mark begin load {i}\n{} vm-load {}; mark end load {i} rc=$?\n",
            quote(&plan.xtask),
            quote(o)
        ));
    }
    s.push_str("mark done uptime \"$(now)\"\nsync\npoweroff -f\n");
    s
}

/// How a test that does not run in the VMs says so, and returns: libtest counts it as passed.
/// The lab's tests without `vm-test --lab` (`testkit::lab::available`), the browser's always
/// (`testkit::browser::chromium`).
pub const NOT_RUN_HERE: [&str; 2] = ["LAB-OFF ", "HOST-ONLY "];

#[derive(Debug, Clone, Default)]
pub struct TestRun {
    pub name: String,
    pub rc: Option<i32>,
    /// libtest's own counts, which call a test that returned early "passed".
    pub totals: TestTotals,
    pub failed: Vec<String>,
    /// Root tests that said SKIPPED (none should under HOPPROBE_ROOT_TESTS=require).
    pub skipped: Vec<String>,
    /// Tests that passed without running, having said one of `NOT_RUN_HERE`.
    pub not_run: Vec<String>,
    pub secs: Option<f64>,
}

impl TestRun {
    /// Tests that ran and passed.
    pub fn passed(&self) -> u64 {
        self.totals.passed.saturating_sub(self.not_run.len() as u64)
    }

    /// Reads one line of libtest's `--show-output` report: a passing test's output comes under
    /// `---- NAME stdout ----` after `successes:`, a failing one's after `failures:`.
    fn read_output_line(&mut self, line: &str, output: &mut Output) {
        match line {
            "successes:" => *output = Output::Successes(None),
            "failures:" => *output = Output::Failures,
            _ if line.starts_with("test result: ") => *output = Output::None,
            _ => {}
        }
        if let Output::Successes(test) = output
            && let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            *test = Some(name.to_owned());
        }
        // Uncaptured output can follow libtest's `test NAME ... ` on the same line.
        let Some(said) = NOT_RUN_HERE
            .iter()
            .find_map(|m| line.find(m).map(|at| &line[at + m.len()..]))
        else {
            return;
        };
        // A failure is a failure, whatever it said before.
        let name = match output {
            Output::Failures => return,
            Output::Successes(Some(test)) => test.clone(),
            // Output that was not captured (`--nocapture`): the name the test gave itself.
            Output::Successes(None) | Output::None => {
                said.split(':').next().unwrap_or(said).trim().to_owned()
            }
        };
        if !self.not_run.contains(&name) {
            self.not_run.push(name);
        }
    }
}

/// Where in libtest's report a test binary's output is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Output {
    #[default]
    None,
    /// The passing tests' output, under the name of the test whose section it is.
    Successes(Option<String>),
    Failures,
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub kernel: Option<String>,
    pub insmod_failed: Vec<String>,
    pub check: Option<serde_json::Value>,
    pub check_text: String,
    pub check_rc: Option<i32>,
    pub tests: Vec<TestRun>,
    pub loads: Vec<(usize, Option<i32>)>,
    /// Per loaded object, the verifier's verdict line of each rejected program (the line
    /// before "verification time" / "processed N insns").
    pub load_verdicts: std::collections::BTreeMap<usize, String>,
    pub done: bool,
}

fn field<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// `program: verdict` for each rejected program in `xtask vm-load` output.
fn verdicts(lines: &[String]) -> String {
    let mut out = Vec::new();
    let mut program = None;
    let mut previous = "";
    for l in lines {
        if let Some(rest) = l.strip_prefix("vm-load: ") {
            program = rest.split(':').next().map(str::to_owned);
        }
        if (l.starts_with("verification time") || l.starts_with("processed "))
            && !previous.is_empty()
            && let Some(p) = program.take()
        {
            out.push(format!("{p}: {previous}"));
        }
        previous = l;
    }
    out.join("; ")
}

/// Reads the serial console transcript.
pub fn parse(serial: &str) -> Outcome {
    let mut o = Outcome::default();
    let mut in_check = false;
    let mut current: Option<TestRun> = None;
    let mut output = Output::None;
    let mut load: Option<(usize, Vec<String>)> = None;
    for raw in serial.lines() {
        let line = raw.trim_end_matches('\r');
        let Some(rest) = line.strip_prefix(MARK) else {
            if let Some((_, lines)) = load.as_mut() {
                lines.push(line.to_owned());
            }
            if in_check {
                o.check_text.push_str(line);
                o.check_text.push('\n');
            }
            if let Some(t) = current.as_mut() {
                t.totals.add_line(line);
                if let Some(name) = line
                    .strip_prefix("test ")
                    .and_then(|l| l.strip_suffix(" ... FAILED"))
                {
                    t.failed.push(name.to_owned());
                }
                if let Some(at) = line.find("SKIPPED ") {
                    t.skipped.push(line[at + 8..].to_owned());
                }
                t.read_output_line(line, &mut output);
            }
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let rc = field(&words, "rc").and_then(|v| v.parse().ok());
        match words.as_slice() {
            ["kernel", release, ..] => o.kernel = Some(release.trim_matches('"').to_owned()),
            ["insmod-failed", m, ..] => o.insmod_failed.push((*m).to_owned()),
            ["begin", "check", ..] => in_check = true,
            ["end", "check", ..] => {
                in_check = false;
                o.check_rc = rc;
                o.check = serde_json::from_str(&o.check_text).ok();
            }
            ["begin", "test", name, ..] => {
                output = Output::None;
                current = Some(TestRun {
                    name: (*name).to_owned(),
                    ..TestRun::default()
                });
            }
            ["end", "test", ..] => {
                if let Some(mut t) = current.take() {
                    t.rc = rc;
                    let time = |k| field(&words, k).and_then(|v| v.parse::<f64>().ok());
                    t.secs = time("stop").zip(time("start")).map(|(b, a)| b - a);
                    o.tests.push(t);
                }
            }
            ["begin", "load", i, ..] => load = i.parse().ok().map(|i| (i, Vec::new())),
            ["end", "load", i, ..] => {
                if let Ok(i) = i.parse() {
                    o.loads.push((i, rc));
                }
                if let Some((i, lines)) = load.take() {
                    let verdict = verdicts(&lines);
                    if !verdict.is_empty() {
                        o.load_verdicts.insert(i, verdict);
                    }
                }
            }
            ["done", ..] => o.done = true,
            _ => {}
        }
    }
    // A binary that never reached its end marker (the VM died or timed out) still counts.
    if let Some(t) = current {
        o.tests.push(t);
    }
    o
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// One test binary on a VM's console without `--lab`, as libtest prints it with
    /// `--show-output`: two lab tests said LAB-OFF and the browser test HOST-ONLY, and libtest
    /// calls all three "ok"; two tests ran and passed, one failed.
    pub(in crate::vm) const SERIAL_WITHOUT_LAB: &str = "\
@@hopprobe-vm begin test tests/test:hops\r
\r
running 6 tests\r
test browser ... ok\r
test fails ... FAILED\r
test lab_one ... ok\r
test m::lab_two ... ok\r
test plain ... ok\r
test silent ... ok\r
\r
successes:\r
\r
---- browser stdout ----\r
HOST-ONLY browser_x: Chromium runs on the host (HOPPROBE_BROWSER_TESTS=off)\r
\r
---- lab_one stdout ----\r
LAB-OFF lab_one: not run here (HOPPROBE_LAB_TESTS=off; vm-test --lab runs it)\r
\r
---- m::lab_two stdout ----\r
LAB-OFF other_name: not run here (HOPPROBE_LAB_TESTS=off; vm-test --lab runs it)\r
\r
---- plain stdout ----\r
measured 3 ms\r
\r
\r
successes:\r
    browser\r
    lab_one\r
    m::lab_two\r
    plain\r
    silent\r
\r
failures:\r
\r
---- fails stdout ----\r
LAB-OFF fails: not run here (HOPPROBE_LAB_TESTS=off; vm-test --lab runs it)\r
\r
thread 'fails' (1768) panicked at t.rs:6:53:\r
boom\r
\r
failures:\r
    fails\r
\r
test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.12s\r
\r
@@hopprobe-vm end test tests/test:hops rc=101 start=1.0 stop=3.0\r
";

    #[test]
    fn tests_that_said_they_do_not_run_here_are_not_counted_as_passed() {
        let o = parse(SERIAL_WITHOUT_LAB);
        let t = &o.tests[0];
        assert_eq!(
            (t.totals.passed, t.totals.failed),
            (5, 1),
            "libtest's counts"
        );
        // By libtest's names, from their output sections; the failed one stays failed.
        assert_eq!(t.not_run, vec!["browser", "lab_one", "m::lab_two"]);
        assert_eq!(t.passed(), 2);
        assert_eq!(t.failed, vec!["fails"]);
        assert!(t.skipped.is_empty());
    }

    #[test]
    fn without_captured_output_the_name_on_the_line_counts() {
        let o = parse(
            "@@hopprobe-vm begin test t\n\
            running 2 tests\n\
            test a ... LAB-OFF lab_a: not run here\n\
            ok\n\
            test b ... ok\n\
            test result: ok. 2 passed; 0 failed\n\
            @@hopprobe-vm end test t rc=0\n",
        );
        assert_eq!(o.tests[0].not_run, vec!["lab_a"]);
        assert_eq!(o.tests[0].passed(), 1);
    }

    #[test]
    fn the_script_runs_every_test_with_one_thread_and_powers_off() {
        let plan = Plan {
            modules: vec!["veth".into()],
            hopprobe: Some("/w/target/debug/hopprobe".into()),
            tests: vec![TestBinary {
                name: "test:cli".into(),
                path: "/w/target/debug/deps/cli-1".into(),
                cwd: "/w/tests".into(),
            }],
            xtask: "/w/target/debug/xtask".into(),
            objects: vec![],
            test_timeout_secs: 60,
            lab: true,
        };
        let s = init_script(&plan);
        assert!(s.contains("insmod /lib/vm-modules/veth.ko"));
        assert!(s.contains("\nexport HOPPROBE_BIN='/w/target/debug/hopprobe'\n"));
        assert!(s.contains(
            "export HOPPROBE_ROOT_TESTS=require HOPPROBE_LAB_TESTS=require HOPPROBE_EMULATED_CPU=qemu-tcg\n"
        ));
        // --show-output prints what passing tests said: measurements, and any SKIPPED.
        assert!(
            s.contains("timeout 60 '/w/target/debug/deps/cli-1' --test-threads=1 --show-output")
        );
        assert!(s.ends_with("poweroff -f\n"));
        // A workspace below /tmp (CI's clone may be) must stay visible in the VM.
        assert!(!s.contains("tmpfs /tmp"), "{s}");
    }

    #[test]
    fn reads_markers_results_and_check_json() {
        let serial = "[    0.1] booting\r\n\
            @@hopprobe-vm kernel 6.1.0-56-cloud-amd64 uptime 1.20\r\n\
            @@hopprobe-vm begin check\r\n\
            {\"kernel\": \"6.1\",\r\n\"hooks\": []}\r\n\
            @@hopprobe-vm end check rc=0\r\n\
            @@hopprobe-vm begin test cli\r\n\
            test a ... ok\r\n\
            test b ... FAILED\r\n\
            test result: FAILED. 1 passed; 1 failed; 0 ignored\r\n\
            @@hopprobe-vm end test cli rc=101 start=2.5 stop=4.0\r\n\
            @@hopprobe-vm begin test handshake\r\n\
            running 1 test\r\n";
        let o = parse(serial);
        assert_eq!(o.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(o.check_rc, Some(0));
        assert_eq!(o.check.expect("json")["kernel"], "6.1");
        assert_eq!(o.tests.len(), 2);
        assert_eq!(o.tests[0].rc, Some(101));
        assert_eq!(o.tests[0].failed, vec!["b"]);
        assert_eq!(o.tests[0].totals.passed, 1);
        assert_eq!(o.tests[0].secs, Some(1.5));
        assert_eq!(o.tests[1].rc, None, "no end marker: unfinished");
        assert!(!o.done);
    }

    #[test]
    fn names_the_verifiers_reason_for_a_rejection() {
        let serial = "@@hopprobe-vm begin load 0\n\
            vm-load: hp_x: REJECTED: the BPF_PROG_LOAD syscall failed. Verifier output: a\n\
            4: (85) call unknown#210\n\
            invalid func unknown#210\n\
            verification time 598 usec\n\
            processed 5 insns (limit 1000000)\n\
            @@hopprobe-vm end load 0 rc=1\n";
        let o = parse(serial);
        assert_eq!(o.loads, vec![(0, Some(1))]);
        assert_eq!(o.load_verdicts[&0], "hp_x: invalid func unknown#210");
    }
}
