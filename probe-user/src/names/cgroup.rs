//! cgroup v2: where it is mounted and which directory a cgroup id names.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The cgroup v2 mount point listed in a `/proc/self/mounts` text.
pub fn v2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// `/proc/self/mounts` escapes blanks in paths as octal (`\040`).
fn unescape_mount_path(p: &str) -> String {
    p.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup v2 mount of this machine: pure v2 at `/sys/fs/cgroup`, or hybrid at
/// `/sys/fs/cgroup/unified`.
pub fn v2_mount() -> Option<PathBuf> {
    fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| v2_mount_in(&m))
}

/// Maps cgroup ids (the inode numbers of cgroup v2 directories) to paths under the root.
pub struct Resolver {
    root: PathBuf,
    names: HashMap<u64, String>,
    last_scan: Option<Instant>,
}

/// Rescanning walks the whole hierarchy: do it at most this often for unknown ids.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

impl Resolver {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            names: HashMap::new(),
            last_scan: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cgroup's path relative to the root (`/` for the root itself).
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if !self.names.contains_key(&id)
            && self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY)
        {
            self.scan();
        }
        self.names.get(&id).cloned()
    }

    /// Whether a cgroup this resolver once found has been removed since (its directory is
    /// gone, or another took its path). An id never found is not known to be gone.
    pub fn gone(&self, id: u64) -> bool {
        self.names.get(&id).is_some_and(|rel| {
            fs::metadata(self.root.join(rel.trim_start_matches('/')))
                .map_or(true, |m| m.ino() != id)
        })
    }

    /// Forgets a removed cgroup, so that the cache follows the node's cgroups.
    pub fn forget(&mut self, id: u64) {
        self.names.remove(&id);
    }

    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let rel = dir
                .strip_prefix(&self.root)
                .map(|r| format!("/{}", r.display()))
                .unwrap_or_default();
            self.names.insert(meta.ino(), rel);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_unified_mount() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            v2_mount_in(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_pure_v2_mount_and_unescapes() {
        assert_eq!(
            v2_mount_in("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            v2_mount_in("none /a\\040b cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/a b"))
        );
        assert_eq!(v2_mount_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn resolves_directory_inodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = dir.path().join("kubepods.slice/pod1");
        fs::create_dir_all(&pod).expect("mkdir");
        let id = fs::metadata(&pod).expect("stat").ino();
        let mut r = Resolver::new(dir.path().to_path_buf());
        assert_eq!(r.resolve(id).as_deref(), Some("/kubepods.slice/pod1"));
        assert_eq!(r.resolve(0), None);
        assert!(!r.gone(id));
        fs::remove_dir(&pod).expect("rmdir");
        assert!(r.gone(id));
        r.forget(id);
        assert!(!r.gone(id), "forgotten, so not known");
    }
}
