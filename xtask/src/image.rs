//! `cargo xtask image`: hopprobe's container image, built on this machine with no registry.
//!
//! The image holds the `hopprobe` users run on a host (the release build) and the shared
//! libraries `ldd` names for it, copied from this machine's Debian packages (libc6,
//! libgcc-s1): no shell, no package manager, nothing else, on `FROM scratch`. A static build
//! would need a second build of the whole dependency tree (glibc's `crt-static` with
//! `--target`: 5.5 min of CI's two cores, measured) for a few MiB less. The image is the
//! runtime stage of `deploy/Containerfile` — the file users with a registry build from — with
//! the root filesystem assembled here in place of its build stage's, built by buildah and
//! written as an OCI archive (`ctr images import`, `kind load image-archive`, `docker load`,
//! `podman load`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, demo, system, vm::initramfs::shared_libraries};

/// buildah builds; podman and runc run the container tests (Debian 12's crun refuses hosts
/// with both cgroup versions' controllers mounted).
pub const PACKAGES: [system::Package; 3] = [
    ("/usr/bin/podman", "podman"),
    ("/usr/bin/buildah", "buildah"),
    ("/usr/sbin/runc", "runc"),
];

const CONTAINERFILE: &str = "deploy/Containerfile";
const VALUES: &str = "deploy/helm/hopprobe/values.yaml";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only assemble the image's root filesystem in this directory (the Containerfile's build
    /// stage): `/hopprobe` and its libraries.
    #[arg(long, value_name = "DIR")]
    pub rootfs_only: Option<PathBuf>,
}

/// `dir` as the image's root: the release hopprobe at `/hopprobe` (built with the eBPF object
/// in it) and each library at the path the loader looks for it.
pub fn rootfs(dir: &Path) -> Result<PathBuf> {
    crate::ebpf::build()?;
    demo::build_measuring()?;
    let bin = demo::measuring("hopprobe");
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    fs::copy(&bin, dir.join("hopprobe"))?;
    for lib in shared_libraries(&bin)? {
        let at = dir.join(lib.strip_prefix("/").context("ldd names absolute paths")?);
        fs::create_dir_all(at.parent().context("a file in a directory")?)?;
        // Follows the host's symlinks (ld-linux, merged /usr): the file itself goes in.
        fs::copy(&lib, &at).with_context(|| format!("copying {}", lib.display()))?;
    }
    Ok(bin)
}

/// The image's name as the chart names it (`image.repository`, `image.tag` in values.yaml),
/// qualified as containerd and the kubelet qualify a short name.
pub fn name() -> Result<String> {
    let values = fs::read_to_string(cmd::workspace_root().join(VALUES))?;
    let field = |key: &str| -> Result<String> {
        let mut in_image = false;
        for line in values.lines() {
            if line == "image:" {
                in_image = true;
            } else if in_image && !line.starts_with(' ') {
                break;
            } else if in_image && let Some(v) = line.trim().strip_prefix(&format!("{key}:")) {
                return Ok(v.trim().trim_matches('"').to_owned());
            }
        }
        bail!("{VALUES} has no image.{key}")
    };
    Ok(qualify(&field("repository")?, &field("tag")?))
}

fn qualify(repository: &str, tag: &str) -> String {
    let first = repository.split('/').next().unwrap_or_default();
    let registry = first.contains('.') || first.contains(':') || first == "localhost";
    match (registry, repository.contains('/')) {
        (true, _) => format!("{repository}:{tag}"),
        (false, true) => format!("docker.io/{repository}:{tag}"),
        (false, false) => format!("docker.io/library/{repository}:{tag}"),
    }
}

/// Where the archive goes.
pub fn archive() -> Result<PathBuf> {
    let name = name()?;
    let tag = name.rsplit(':').next().unwrap_or("latest");
    Ok(cmd::target_dir()
        .join("image")
        .join(format!("hopprobe-{tag}.oci.tar")))
}

/// The Containerfile's last stage, `FROM scratch` on, with `COPY --from=<stage> <src> <dst>`
/// taking `<src>`'s last component from the build context instead.
fn runtime_stage(containerfile: &str) -> Result<String> {
    let lines: Vec<&str> = containerfile.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.trim().eq_ignore_ascii_case("FROM scratch"))
        .context("the Containerfile's last stage is FROM scratch")?;
    let mut out = Vec::new();
    for line in &lines[start..] {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["COPY", from, src, dst] if from.starts_with("--from=") => {
                let file = Path::new(src)
                    .file_name()
                    .context("COPY --from names a file or directory")?;
                let slash = if src.ends_with('/') { "/" } else { "" };
                out.push(format!("COPY {}{slash} {dst}", file.to_string_lossy()));
            }
            ["COPY", ..] | ["ADD", ..] | ["RUN", ..] => {
                bail!("the runtime stage may only COPY --from the build stage: {line}")
            }
            _ => out.push((*line).to_owned()),
        }
    }
    Ok(out.join("\n") + "\n")
}

pub fn image(args: &Args) -> Result<()> {
    if let Some(dir) = &args.rootfs_only {
        rootfs(dir)?;
        return Ok(());
    }
    if system::is_root() {
        system::ensure_packages(&PACKAGES)?;
    }
    let root = cmd::workspace_root();
    let stage = runtime_stage(&fs::read_to_string(root.join(CONTAINERFILE))?)?;
    let context = cmd::target_dir().join("image/context");
    let bin = rootfs(&context.join("rootfs"))?;
    fs::write(context.join("Containerfile"), &stage)?;
    let name = name()?;
    cmd::run(
        Command::new("buildah")
            .args(["build", "--quiet", "--pull=never", "-f"])
            .arg(context.join("Containerfile"))
            .args(["-t", &name])
            .arg(&context),
    )?;
    let archive = archive()?;
    let _ = fs::remove_file(&archive);
    cmd::run(Command::new("buildah").args([
        "push",
        "--quiet",
        &name,
        &format!("oci-archive:{}:{name}", archive.display()),
    ]))?;
    let mib = |p: &Path| -> Result<f64> { Ok(fs::metadata(p)?.len() as f64 / (1024.0 * 1024.0)) };
    println!(
        "image {name}: {} ({:.1} MiB; hopprobe {:.1} MiB and its libraries, on scratch)",
        archive.display(),
        mib(&archive)?,
        mib(&bin)?
    );
    println!(
        "load it: podman load -i {0} | ctr -n k8s.io images import {0} | kind load image-archive {0} | docker load -i {0}",
        archive.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_qualified_as_the_kubelet_does() {
        assert_eq!(
            qualify("hopprobe", "0.1.0"),
            "docker.io/library/hopprobe:0.1.0"
        );
        assert_eq!(qualify("me/hopprobe", "1"), "docker.io/me/hopprobe:1");
        assert_eq!(
            qualify("123.dkr.ecr.us-east-1.amazonaws.com/hopprobe", "1"),
            "123.dkr.ecr.us-east-1.amazonaws.com/hopprobe:1"
        );
        assert_eq!(qualify("localhost:5000/h", "1"), "localhost:5000/h:1");
    }

    #[test]
    fn the_runtime_stage_takes_the_binary_from_the_context() {
        let file = std::fs::read_to_string(cmd::workspace_root().join(CONTAINERFILE)).unwrap();
        let stage = runtime_stage(&file).unwrap();
        assert!(stage.starts_with("FROM scratch"), "{stage}");
        assert!(stage.contains("COPY rootfs/ /"), "{stage}");
        assert!(!stage.contains("--from"), "{stage}");
        assert!(runtime_stage("FROM scratch\nRUN true\n").is_err());
        assert_eq!(name().unwrap(), "docker.io/library/hopprobe:0.1.0");
    }
}
