//! A cpio (newc) initramfs written directly from the host's files: no staging directory.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use cpio::newc::{Builder, ModeFileType, trailer};

pub struct Initramfs {
    out: BufWriter<File>,
    path: PathBuf,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
    ino: u32,
}

fn image_path(path: &str) -> String {
    path.trim_start_matches('/').to_owned()
}

impl Initramfs {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            out: BufWriter::new(file),
            path: path.to_owned(),
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
            ino: 1,
        })
    }

    fn entry(&mut self, name: &str, mode: u32, kind: ModeFileType) -> Builder {
        self.ino += 1;
        Builder::new(name)
            .ino(self.ino)
            .mode(mode)
            .set_mode_file_type(kind)
            .nlink(1)
    }

    fn write(&mut self, builder: Builder, data: &[u8]) -> Result<()> {
        let size = u32::try_from(data.len()).context("file larger than cpio allows")?;
        let mut w = builder.write(&mut self.out, size);
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    /// Creates `path` and its parents (mode 0755 unless already made).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let path = image_path(path);
        let mut so_far = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(part);
            if self.dirs.insert(so_far.clone()) {
                let m = if so_far == path { mode } else { 0o755 };
                let b = self.entry(&so_far.clone(), m, ModeFileType::Directory);
                self.write(b, &[])?;
            }
        }
        Ok(())
    }

    fn parent(&mut self, path: &str) -> Result<()> {
        if let Some((parent, _)) = image_path(path).rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        Ok(())
    }

    pub fn bytes(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.parent(path)?;
        let name = image_path(path);
        if !self.files.insert(name.clone()) {
            return Ok(());
        }
        let b = self.entry(&name, mode, ModeFileType::Regular);
        self.write(b, data)
    }

    /// Copies a host file (following symlinks) to `path` in the image.
    pub fn file(&mut self, path: &str, from: &Path, mode: u32) -> Result<()> {
        let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        self.bytes(path, mode, &data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parent(path)?;
        let name = image_path(path);
        if !self.files.insert(name.clone()) {
            return Ok(());
        }
        let b = self.entry(&name, 0o777, ModeFileType::Symlink);
        self.write(b, target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> Result<()> {
        self.parent(path)?;
        let name = image_path(path);
        let b = self
            .entry(&name, 0o600, ModeFileType::Char)
            .rdev_major(major)
            .rdev_minor(minor);
        self.write(b, &[])
    }

    /// A dynamically linked program at its own absolute path, with the libraries `ldd` names.
    pub fn program(&mut self, host: &Path, at: &str) -> Result<()> {
        self.file(at, host, 0o755)?;
        for lib in shared_libraries(host)? {
            let name = lib.to_string_lossy().into_owned();
            self.file(&name, &lib, 0o755)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<PathBuf> {
        trailer(&mut self.out)?;
        self.out.flush()?;
        Ok(self.path)
    }
}

/// The absolute paths in `ldd` output: the loader and every resolved library.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static program has nothing to copy.
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if text.contains("not found") {
        bail!("ldd {}: a library is missing:\n{text}", program.display());
    }
    Ok(parse_ldd(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_library_paths_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(ldd),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn writes_an_archive_the_cpio_reader_reads_back() {
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.cpio");
        let mut image = Initramfs::create(&path).expect("create");
        image
            .bytes("/a/b/init", 0o755, b"#!/bin/sh\n")
            .expect("file");
        image.symlink("/bin/sh", "busybox").expect("link");
        image.finish().expect("finish");
        let mut names = Vec::new();
        let mut f = File::open(&path).expect("open");
        loop {
            let r = cpio::newc::Reader::new(&mut f).expect("entry");
            if r.entry().is_trailer() {
                break;
            }
            names.push((r.entry().name().to_owned(), r.entry().file_size()));
            r.skip().expect("skip");
        }
        fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(
            names,
            vec![
                ("a".to_owned(), 0),
                ("a/b".to_owned(), 0),
                ("a/b/init".to_owned(), 10),
                ("bin".to_owned(), 0),
                ("bin/sh".to_owned(), 7)
            ]
        );
    }
}
