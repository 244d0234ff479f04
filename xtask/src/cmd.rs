//! Running commands with their command line echoed and their failure explained.

use std::{
    ffi::OsStr,
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

/// The cargo that runs this xtask (rustup's proxy honours `+toolchain` through it).
pub fn cargo_command(args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(args).current_dir(workspace_root());
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
