//! Starting a container's process the way a container runtime would: in its pod's network
//! namespace and its own cgroup, in a session of its own so it outlives whoever started it.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Command, Stdio},
};

pub struct Placement<'a> {
    pub netns: &'a str,
    /// Absolute path of the container's cgroup directory.
    pub cgroup: &'a Path,
    pub uid: Option<u32>,
    pub log: &'a Path,
}

/// Spawns `program args` into `place`; returns its pid. The child is not waited for: the lab
/// reaps nothing and finds its processes again through their cgroups.
pub fn spawn(program: &Path, args: &[String], place: &Placement<'_>) -> io::Result<u32> {
    let netns = File::open(format!("/run/netns/{}", place.netns))?;
    let procs = OpenOptions::new()
        .write(true)
        .open(place.cgroup.join("cgroup.procs"))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(place.log)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let (ns_fd, procs_fd, uid) = (netns.as_raw_fd(), procs.as_raw_fd(), place.uid);
    let zero = CString::new("0").expect("no NUL");
    // SAFETY: only async-signal-safe calls on descriptors opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Writing 0 moves the writer itself; membership survives exec.
            if libc::write(procs_fd, zero.as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(uid) = uid
                && (libc::setgid(uid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    // Dropping a Child neither kills nor waits; the process is reaped by init once we exit,
    // and `down` kills it through its cgroup.
    drop(child);
    drop((netns, procs));
    Ok(pid)
}
