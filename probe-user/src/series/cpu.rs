//! CPU used by each container during a run: `cpu.stat`'s `usage_usec` of every container
//! cgroup, sampled on CLOCK_MONOTONIC (the records' clock) so the report can draw it.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::names::{Metadata, parse_cgroup_path};

/// One container's CPU over the run: `(monotonic ns, cumulative usage µs)` pairs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuSeries {
    /// Path under the cgroup v2 root.
    pub cgroup: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub samples: Vec<(u64, u64)>,
}

/// `usage_usec` from a `cpu.stat` text.
pub fn usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "usage_usec").then(|| v.trim().parse().ok())?
    })
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Container cgroups (those whose path names a container, as kubelet lays them out) below
/// `dir`, as paths relative to `root`.
fn containers_below(root: &Path, dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    // kubelet's layout is five levels deep at most; stop well before a pathological tree.
    if depth > 8 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let rel_str = format!("/{}", rel.display());
        if parse_cgroup_path(&rel_str).is_some_and(|ids| ids.container_id.is_some()) {
            out.push(path.clone());
        } else {
            containers_below(root, &path, depth + 1, out);
        }
    }
}

/// Samples every container cgroup under the root.
pub struct CpuSampler {
    root: PathBuf,
    series: BTreeMap<String, CpuSeries>,
}

impl CpuSampler {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            series: BTreeMap::new(),
        }
    }

    /// Takes one sample of every container cgroup present now.
    pub fn sample(&mut self, metadata: &Metadata) {
        let mut dirs = Vec::new();
        containers_below(&self.root, &self.root, 0, &mut dirs);
        let now = monotonic_ns();
        for dir in dirs {
            let Some(usage) = fs::read_to_string(dir.join("cpu.stat"))
                .ok()
                .and_then(|t| usage_usec(&t))
            else {
                continue;
            };
            let rel = format!(
                "/{}",
                dir.strip_prefix(&self.root).unwrap_or(&dir).display()
            );
            let series = self.series.entry(rel.clone()).or_insert_with(|| {
                let meta = metadata.lookup(&rel);
                CpuSeries {
                    cgroup: rel.clone(),
                    namespace: meta.as_ref().map(|m| m.namespace.clone()),
                    pod: meta.as_ref().map(|m| m.pod.clone()),
                    container: meta.and_then(|m| m.container),
                    samples: Vec::new(),
                }
            });
            series.samples.push((now, usage));
        }
    }

    pub fn finish(self) -> Vec<CpuSeries> {
        self.series.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_cpu_stat() {
        let text = "usage_usec 12345\nuser_usec 10000\nsystem_usec 2345\n";
        assert_eq!(usage_usec(text), Some(12345));
        assert_eq!(usage_usec("user_usec 1\n"), None);
    }

    #[test]
    fn container_cgroups_are_found_and_sampled() {
        let root = tempfile::tempdir().expect("tmp");
        let id = "a".repeat(64);
        let scope = root.path().join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12345678_1234_1234_1234_123456789012.slice/cri-containerd-{id}.scope"
        ));
        fs::create_dir_all(&scope).expect("mkdir");
        fs::write(scope.join("cpu.stat"), "usage_usec 42\n").expect("write");
        fs::create_dir_all(root.path().join("system.slice")).expect("mkdir");
        let mut s = CpuSampler::new(root.path().to_path_buf());
        s.sample(&Metadata::default());
        fs::write(scope.join("cpu.stat"), "usage_usec 50\n").expect("write");
        s.sample(&Metadata::default());
        let series = s.finish();
        assert_eq!(series.len(), 1, "{series:?}");
        let usages: Vec<u64> = series[0].samples.iter().map(|s| s.1).collect();
        assert_eq!(usages, vec![42, 50]);
        assert!(series[0].samples[0].0 <= series[0].samples[1].0);
    }
}
