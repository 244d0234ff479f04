//! CPU used by each container during a run: `cpu.stat`'s `usage_usec` of every container
//! cgroup, sampled on CLOCK_MONOTONIC (the records' clock) so the report can draw it.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

/// One container's CPU over the run, as the summary holds it.
pub use hopprobe_formats::summary::CpuSeries;

use crate::names::{Metadata, parse_cgroup_path};

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
    pub fn sample(&mut self) {
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
            let series = self.series.entry(rel.clone()).or_insert_with(|| CpuSeries {
                cgroup: rel,
                namespace: None,
                pod: None,
                container: None,
                samples: Vec::new(),
            });
            series.samples.push((now, usage));
        }
    }

    /// The series, named at the end of the run: a container first sampled before the
    /// Kubernetes API named it is named all the same.
    pub fn finish(self, metadata: &Metadata) -> Vec<CpuSeries> {
        self.series
            .into_values()
            .map(|mut s| {
                if let Some(m) = metadata.lookup(&s.cgroup) {
                    s.namespace = Some(m.namespace);
                    s.pod = Some(m.pod);
                    s.container = m.container;
                }
                s
            })
            .collect()
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
        s.sample();
        fs::write(scope.join("cpu.stat"), "usage_usec 50\n").expect("write");
        s.sample();
        let series = s.finish(&Metadata::default());
        assert_eq!(series.len(), 1, "{series:?}");
        let usages: Vec<u64> = series[0].samples.iter().map(|s| s.1).collect();
        assert_eq!(usages, vec![42, 50]);
        assert!(series[0].samples[0].0 <= series[0].samples[1].0);
    }

    /// With `--kube`, names arrive from the API server after hopprobe starts: a series must
    /// be named by the names known at the end, not by those known at its first sample.
    #[test]
    fn series_are_named_by_the_names_known_at_the_end() {
        let root = tempfile::tempdir().expect("temp dir");
        let uid = "82c0a928_1df8_41d3_8c76_d2323d47e853";
        let rel = format!("kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-ac39119b.scope");
        let dir = root.path().join(&rel);
        fs::create_dir_all(&dir).expect("container cgroup");
        fs::write(dir.join("cpu.stat"), "usage_usec 10\n").expect("cpu.stat");
        let mut sampler = CpuSampler::new(root.path().to_owned());
        sampler.sample();
        fs::write(dir.join("cpu.stat"), "usage_usec 25\n").expect("cpu.stat");
        sampler.sample();
        let known_at_end = Metadata::from_file(crate::names::MetadataFile {
            containers: vec![crate::names::ContainerMeta {
                container_id: "ac39119b".into(),
                namespace: "default".into(),
                pod: "reviews-v1".into(),
                container: "reviews".into(),
            }],
            interfaces: vec![],
        });
        let series = sampler.finish(&known_at_end);
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].cgroup, format!("/{rel}"));
        assert_eq!(series[0].pod.as_deref(), Some("reviews-v1"));
        assert_eq!(series[0].container.as_deref(), Some("reviews"));
        assert_eq!(
            series[0].samples.iter().map(|s| s.1).collect::<Vec<_>>(),
            [10, 25]
        );
    }
}
