//! Removing a lab, whatever state it is in: fully up, half built, or orphaned by a creator
//! that was killed. Everything is found again from the lab's name, not from memory.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    LabError,
    names::{Names, STATE_DIR},
    state,
};
use crate::netns::ip;

/// Processes whose command line carries this lab's marker (`--lab <name>` or `--lab=<name>`).
pub fn processes(lab: &str) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.windows(2)
                    .any(|w| w[0] == b"--lab" && w[1] == lab.as_bytes())
                    || args.iter().any(|a| *a == format!("--lab={lab}").as_bytes())
            })
        })
        .collect()
}

/// Network namespaces of this lab.
pub fn namespaces(lab: &str) -> Vec<String> {
    let prefix = format!("{lab}-");
    ip(&["netns", "list"])
        .map(|l| {
            l.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(&prefix))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn cgroup_root(lab: &str) -> Option<PathBuf> {
    probe_user::names::cgroup::v2_mount().map(|v2| Names::new(lab).cgroup_root(&v2))
}

/// Everything of the lab still on the machine, for tests to assert is empty.
pub fn leftovers(lab: &str) -> Vec<String> {
    let mut found: Vec<String> = namespaces(lab)
        .into_iter()
        .map(|n| format!("netns {n}"))
        .collect();
    found.extend(processes(lab).into_iter().map(|p| format!("process {p}")));
    if let Some(root) = cgroup_root(lab).filter(|r| r.exists()) {
        found.push(format!("cgroup {}", root.display()));
    }
    let names = Names::new(lab);
    for path in [names.state_file(), names.state_dir()] {
        if path.exists() {
            found.push(format!("state {}", path.display()));
        }
    }
    found
}

fn kill_all(lab: &str, root: Option<&Path>) {
    // cgroup.kill (Linux 5.14) kills the whole subtree atomically, forks in flight included.
    if let Some(root) = root {
        let _ = fs::write(root.join("cgroup.kill"), "1");
        for procs in cgroup_dirs(root) {
            if let Ok(pids) = fs::read_to_string(procs.join("cgroup.procs")) {
                for pid in pids.lines().filter_map(|p| p.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
    for pid in processes(lab) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The cgroup directories under `root`, deepest first, root last.
fn cgroup_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        out.push(dir);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Deletes one pod of a running lab as kubelet and the CNI would: its containers killed,
/// their cgroups and the pod's removed, its network namespace deleted (and with it both
/// ends of its veth). The rest of the lab runs on; `down` removes it as before.
pub fn delete_pod(state: &super::state::LabState, service: &str) -> Result<(), LabError> {
    let pod = state
        .pods
        .iter()
        .find(|p| p.service == service)
        .ok_or_else(|| LabError::NotReady(format!("no pod of {service} in the lab")))?;
    let pod_cgroup = pod
        .containers
        .first()
        .and_then(|c| c.cgroup.parent())
        .ok_or_else(|| LabError::NotReady(format!("{service} has no container")))?
        .to_path_buf();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = fs::write(pod_cgroup.join("cgroup.kill"), "1");
        // The lab's creator started them: reap them, or they stay zombies.
        for c in &pod.containers {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(c.pid as i32),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        let empty = fs::read_to_string(pod_cgroup.join("cgroup.events"))
            .map_or(true, |e| e.lines().any(|l| l == "populated 0"));
        if empty {
            break;
        }
        if Instant::now() > until {
            return Err(LabError::NotReady(format!(
                "{service}'s processes survived SIGKILL for 10 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for dir in cgroup_dirs(&pod_cgroup) {
        fs::remove_dir(&dir)
            .map_err(|e| LabError::NotReady(format!("removing {}: {e}", dir.display())))?;
    }
    ip(&["netns", "del", &pod.netns])
        .map(drop)
        .map_err(|e| LabError::NotReady(e.to_string()))
}

/// Removes the lab `lab`; succeeds when there is nothing to remove.
pub fn down(lab: &str) -> Result<(), LabError> {
    let names = Names::new(lab);
    let root = cgroup_root(lab);
    let spawned: Vec<u32> = state::load(&names)
        .map(|s| s.containers().map(|(_, c)| c.pid).collect())
        .unwrap_or_default();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        kill_all(lab, root.as_deref());
        // Reap the ones this process started; others are reaped by their parent or init.
        for pid in &spawned {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(*pid as i32),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        // `populated 0` rather than empty cgroup.procs: a killed multi-threaded process (the
        // delay line) can be gone from cgroup.procs while its other threads still exit,
        // and rmdir fails until the last one has.
        let cgroups_empty = root.as_deref().is_none_or(|r| {
            fs::read_to_string(r.join("cgroup.events"))
                .map_or(true, |e| e.lines().any(|l| l == "populated 0"))
        });
        if cgroups_empty && processes(lab).is_empty() {
            break;
        }
        if Instant::now() > until {
            return Err(LabError::NotReady(format!(
                "processes of lab {lab} survived SIGKILL for 10 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut failures = Vec::new();
    // Deleting a namespace removes its veths (and their peers) and its iptables rules.
    for ns in namespaces(lab) {
        if let Err(e) = ip(&["netns", "del", &ns]) {
            failures.push(e.to_string());
        }
    }
    if let Some(root) = root.filter(|r| r.exists()) {
        for dir in cgroup_dirs(&root) {
            if let Err(e) = fs::remove_dir(&dir) {
                failures.push(format!("removing {}: {e}", dir.display()));
            }
        }
    }
    let _ = fs::remove_file(names.state_file());
    let _ = fs::remove_dir_all(names.state_dir());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(LabError::NotReady(failures.join("; ")))
    }
}

/// Names of all labs that left a state file or a cgroup behind.
pub fn all_labs() -> Vec<String> {
    let mut labs = Vec::new();
    if let Ok(dir) = fs::read_dir(STATE_DIR) {
        for e in dir.flatten() {
            if let Some(name) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                labs.push(name.to_owned());
            }
        }
    }
    if let Some(dir) = probe_user::names::cgroup::v2_mount().and_then(|v2| fs::read_dir(v2).ok()) {
        for e in dir.flatten() {
            if let Some(name) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("hopprobe-lab-"))
            {
                labs.push(name.to_owned());
            }
        }
    }
    labs.sort();
    labs.dedup();
    labs
}
