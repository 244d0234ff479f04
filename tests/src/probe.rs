//! A `hopprobe` process under test: which binary, started, waited for, signalled, and killed
//! on drop.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

/// probe-user's `hopprobe`, the binary users run. Cargo hands integration tests only their own
/// package's binaries (`CARGO_BIN_EXE_*`), so it is found here: `HOPPROBE_BIN` when set
/// (`cargo xtask test` and the test VMs set it to the one they built), else the one in this
/// test's target directory and profile, built first when cargo runs the tests:
/// `cargo test -p hopprobe-tests` builds none of probe-user's binaries, and one left by an
/// earlier build may be stale. Panics when there is none.
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(find_binary)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_binary() -> Result<PathBuf, String> {
    let (bin, whence) = match std::env::var_os("HOPPROBE_BIN") {
        Some(bin) => (PathBuf::from(bin), "named by HOPPROBE_BIN"),
        None => {
            let test = std::env::current_exe().map_err(|e| format!("locating this test: {e}"))?;
            let (target, profile) = target_and_profile(&test)
                .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", test.display()))?;
            if let Some(cargo) = std::env::var_os("CARGO") {
                build(&cargo, target, profile)?;
            }
            let hint = "`cargo build -p probe-user --bin hopprobe` builds it";
            (target.join(profile).join("hopprobe"), hint)
        }
    };
    if !bin.exists() {
        return Err(format!("{} does not exist ({whence})", bin.display()));
    }
    Ok(bin)
}

/// The target directory and profile directory (`debug`, `release`) of a test executable, which
/// cargo writes to `<target>/<profile>/deps/`.
fn target_and_profile(test: &Path) -> Option<(&Path, &str)> {
    let profile_dir = test.parent()?.parent()?;
    Some((profile_dir.parent()?, profile_dir.file_name()?.to_str()?))
}

/// The `--profile` that writes to `profile_dir`: cargo names the dev profile's directory `debug`.
fn profile_for(profile_dir: &str) -> &str {
    match profile_dir {
        "debug" => "dev",
        other => other,
    }
}

fn build(cargo: &OsStr, target: &Path, profile: &str) -> Result<(), String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives in the workspace");
    let mut c = Command::new(cargo);
    c.args([
        "build",
        "-p",
        "probe-user",
        "--bin",
        "hopprobe",
        "--profile",
    ])
    .arg(profile_for(profile))
    // The directory this test was built in, whatever chose it.
    .arg("--target-dir")
    .arg(target)
    .current_dir(workspace)
    // Its progress goes to the terminal: a first build takes minutes.
    .stdout(Stdio::null());
    let status = c.status().map_err(|e| format!("starting {c:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{c:?} failed ({status})"));
    }
    Ok(())
}

pub struct Hopprobe {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Hopprobe {
    /// Starts `bin args...` and waits until it logs that it has attached.
    pub fn start(bin: &Path, args: &[&str]) -> Self {
        Self::try_start(bin, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`], with what went wrong as an error instead of a panic.
    pub fn try_start(bin: &Path, args: &[&str]) -> Result<Self, String> {
        Self::try_start_logging(bin, args, "info")
    }

    /// [`Self::try_start`] with `RUST_LOG=rust_log` (which must keep hopprobe's `info`).
    pub fn try_start_logging(bin: &Path, args: &[&str], rust_log: &str) -> Result<Self, String> {
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("piped");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                // The last line of attaching; interfaces may be logged before it.
                if line.contains(" attached hooks=") {
                    let _ = tx.send(());
                }
                let mut log = log.lock().expect("not poisoned");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut probe = Self { child, stderr };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = probe.child.try_wait().ok().flatten();
            return Err(format!(
                "hopprobe did not attach within 30 s (exit: {status:?}); stderr:\n{}",
                probe.stderr()
            ));
        }
        Ok(probe)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("not poisoned").clone()
    }

    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), sig).expect("kill");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.try_wait(timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::wait`], with an error instead of a panic.
    pub fn try_wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let until = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // Let the reader thread take the last lines.
                    std::thread::sleep(Duration::from_millis(50));
                    return Ok(status);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for hopprobe: {e}")),
            }
            if Instant::now() > until {
                return Err(format!(
                    "hopprobe still running {timeout:?} later; stderr:\n{}",
                    self.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Hopprobe {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A finished `hopprobe run`: its JSON summary, its log, and where its records are.
pub struct Measured {
    pub summary: serde_json::Value,
    pub stderr: String,
    pub records: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs `hopprobe run --json … --records … ARGS` around `load`: waits until it has attached,
/// runs `load`, leaves the last packets of the load a moment to be seen, stops it with
/// SIGINT and reads its summary. Panics (with its log) when it does not exit cleanly.
pub fn measure(bin: &Path, args: &[&str], load: impl FnOnce()) -> Measured {
    try_measure(bin, args, || {
        load();
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// [`measure`] for callers that report errors instead of panicking; `load`'s error ends the
/// run (hopprobe is stopped all the same).
pub fn try_measure(
    bin: &Path,
    args: &[&str],
    load: impl FnOnce() -> Result<(), String>,
) -> Result<Measured, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let json = dir.path().join("summary.json");
    let records = dir.path().join("records.jsonl");
    let (json_arg, records_arg) = (json.display().to_string(), records.display().to_string());
    let mut full = vec!["run", "--json", &json_arg, "--records", &records_arg];
    full.extend_from_slice(args);
    let mut probe = Hopprobe::try_start(bin, &full)?;
    load()?;
    // The last closes complete within a round trip on a veth; leave ample room (more on an
    // emulated CPU, where the apps take longer to close).
    std::thread::sleep(crate::emulation::slack(Duration::from_millis(300)));
    probe.signal(Signal::SIGINT);
    let status = probe.try_wait(Duration::from_secs(15))?;
    let stderr = probe.stderr();
    if !status.success() {
        return Err(format!("hopprobe exited {status}; stderr:\n{stderr}"));
    }
    let text = std::fs::read_to_string(&json).map_err(|e| format!("reading the summary: {e}"))?;
    Ok(Measured {
        summary: serde_json::from_str(&text).map_err(|e| format!("summary is not JSON: {e}"))?,
        stderr,
        records,
        _dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_found_in_the_tests_target_directory_and_profile() {
        let test = Path::new("/w/target/debug/deps/cli-0123abcd");
        assert_eq!(
            target_and_profile(test),
            Some((Path::new("/w/target"), "debug"))
        );
        assert_eq!(profile_for("debug"), "dev");
        let test = Path::new("/t/release/deps/cli-0123abcd");
        assert_eq!(target_and_profile(test), Some((Path::new("/t"), "release")));
        assert_eq!(profile_for("release"), "release");
        assert_eq!(target_and_profile(Path::new("cli")), None);
    }
}
