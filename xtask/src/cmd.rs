//! Running commands with their command line echoed and their failure explained.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The directory cargo builds into, decided as cargo does for the commands xtask runs (all of
/// them in the workspace root): `CARGO_TARGET_DIR`, absolute or relative to the workspace
/// root, else `<workspace>/target`. probe-user's build.rs looks for the eBPF object there.
pub fn target_dir() -> PathBuf {
    target_dir_in(&workspace_root(), std::env::var_os("CARGO_TARGET_DIR"))
}

fn target_dir_in(root: &Path, cargo_target_dir: Option<OsString>) -> PathBuf {
    match cargo_target_dir {
        // `join` keeps an absolute path as it is. Cargo refuses an empty one.
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Gives a cargo that xtask starts the absolute `target_dir()`: a build script runs in its
/// package's directory, where a relative `CARGO_TARGET_DIR` would name another place.
pub fn pin_target_dir(c: &mut Command) {
    if std::env::var_os("CARGO_TARGET_DIR").is_some() {
        c.env("CARGO_TARGET_DIR", target_dir());
    }
}

/// The cargo that runs this xtask (rustup's proxy honours `+toolchain` through it).
pub fn cargo_command(args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(args).current_dir(workspace_root());
    pin_target_dir(&mut c);
    c
}

pub fn cargo(args: &[&str]) -> Result<()> {
    run(&mut cargo_command(args))
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn run(c: &mut Command) -> Result<()> {
    let line = describe(c);
    eprintln!("xtask: $ {line}");
    let status = c.status().with_context(|| format!("starting `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
}

impl TestTotals {
    /// Adds a libtest summary line: `test result: ok. 5 passed; 0 failed; ...`.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

/// Runs a `cargo test`, passing its output through, and sums its result lines. Fails when the
/// command fails.
pub fn run_counting_tests(c: &mut Command) -> Result<TestTotals> {
    use std::io::{BufRead, BufReader, Write};
    let line = describe(c);
    eprintln!("xtask: $ {line}");
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}`"))?;
    let mut totals = TestTotals::default();
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut out = std::io::stdout().lock();
    for l in BufReader::new(stdout).lines() {
        let l = l.context("reading test output")?;
        totals.add_line(&l);
        writeln!(out, "{l}")?;
    }
    drop(out);
    let status = child.wait()?;
    if !status.success() {
        println!("{} passed, {} failed", totals.passed, totals.failed);
        bail!("`{line}` failed ({status})");
    }
    Ok(totals)
}

/// Runs and captures; `None` when the program does not exist.
pub fn output(program: impl AsRef<OsStr>, args: &[&str]) -> Option<Output> {
    Command::new(program).args(args).output().ok()
}

/// Stdout of a successful run, `None` otherwise.
pub fn stdout(program: impl AsRef<OsStr>, args: &[&str]) -> Option<String> {
    output(program, args)
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Replaces this process, so signals (Ctrl-C) go straight to the program.
pub fn exec(program: &Path, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let err = Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("running {}", program.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_dir_is_cargo_target_dir_else_target_in_the_workspace() {
        let root = Path::new("/w");
        assert_eq!(target_dir_in(root, None), Path::new("/w/target"));
        assert_eq!(target_dir_in(root, Some("".into())), Path::new("/w/target"));
        assert_eq!(
            target_dir_in(root, Some("/elsewhere/t".into())),
            Path::new("/elsewhere/t")
        );
        assert_eq!(
            target_dir_in(root, Some("build/t".into())),
            Path::new("/w/build/t")
        );
    }

    #[test]
    fn sums_libtest_result_lines() {
        let mut t = TestTotals::default();
        t.add_line("test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.70s");
        t.add_line(
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("test foo ... ok");
        assert_eq!(
            t,
            TestTotals {
                passed: 6,
                failed: 2
            }
        );
    }
}
