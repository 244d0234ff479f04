//! `cargo xtask image`: hopprobe's container image, built on this machine with no registry.
//!
//! hopprobe is linked statically (glibc's `crt-static`: the machine has no musl target, and
//! glibc 2.34+ resolves names without loading NSS modules) and is the image's only file, on
//! `FROM scratch`: nothing to patch, nothing to download, a few MiB. The image is the runtime
//! stage of `deploy/Containerfile` — the file users with a registry build from — with the
//! binary built here in place of its build stage's, built by buildah and written as an OCI
//! archive (`ctr images import`, `kind load image-archive`, `docker load`, `podman load`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, ebpf, system};

/// buildah builds; podman and runc run the container tests (Debian 12's crun refuses hosts
/// with both cgroup versions' controllers mounted).
pub const PACKAGES: [system::Package; 3] = [
    ("/usr/bin/podman", "podman"),
    ("/usr/bin/buildah", "buildah"),
    ("/usr/sbin/runc", "runc"),
];

const CONTAINERFILE: &str = "deploy/Containerfile";
const VALUES: &str = "deploy/helm/hopprobe/values.yaml";
const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only build the static hopprobe and copy it here (the Containerfile's build stage).
    #[arg(long, value_name = "PATH")]
    pub binary_only: Option<PathBuf>,
}

/// The static hopprobe, built with the eBPF object in it.
pub fn static_binary() -> Result<PathBuf> {
    ebpf::build()?;
    let mut build =
        cmd::cargo_command(&["build", "--release", "-p", "probe-user", "--target", TARGET]);
    // With `--target`, RUSTFLAGS reach the target's crates only, not build scripts.
    build.env("RUSTFLAGS", "-C target-feature=+crt-static");
    cmd::run(&mut build)?;
    let bin = cmd::target_dir().join(TARGET).join("release/hopprobe");
    let headers = cmd::stdout("readelf", &["-lW", bin.to_str().context("utf-8 path")?])
        .context("readelf (binutils) reads the binary's program headers")?;
    if headers.contains("INTERP") {
        bail!("{} is dynamically linked", bin.display());
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
/// taking `<src>`'s file name from the build context instead.
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
                    .context("COPY --from names a file")?;
                out.push(format!("COPY {} {dst}", file.to_string_lossy()));
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
    let bin = static_binary()?;
    if let Some(out) = &args.binary_only {
        fs::copy(&bin, out).with_context(|| format!("copying to {}", out.display()))?;
        return Ok(());
    }
    if system::is_root() {
        system::ensure_packages(&PACKAGES)?;
    }
    let root = cmd::workspace_root();
    let stage = runtime_stage(&fs::read_to_string(root.join(CONTAINERFILE))?)?;
    let context = cmd::target_dir().join("image/context");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context)?;
    fs::copy(&bin, context.join("hopprobe"))?;
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
        "image {name}: {} ({:.1} MiB; hopprobe {:.1} MiB, static, on scratch)",
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
        assert!(stage.contains("COPY hopprobe /hopprobe"), "{stage}");
        assert!(!stage.contains("--from"), "{stage}");
        assert!(runtime_stage("FROM scratch\nRUN true\n").is_err());
        assert_eq!(name().unwrap(), "docker.io/library/hopprobe:0.1.0");
    }
}
