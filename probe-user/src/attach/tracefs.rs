//! Finding (or mounting) tracefs and reading tracepoint formats from it.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use probe_common::layout::SetStateLayout;

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
    Mount(nix::Error),
    #[error("tracefs is not mounted (mount it with `mount -t tracefs nodev /sys/kernel/tracing`)")]
    NotMounted,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: field `{field}` missing from the tracepoint format")]
    MissingField { path: PathBuf, field: &'static str },
}

/// How tracefs was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracefs {
    pub root: PathBuf,
    /// True when this call mounted it.
    pub mounted_now: bool,
}

/// Returns the tracefs root, mounting tracefs at `/sys/kernel/tracing` when `may_mount`.
pub fn ensure(may_mount: bool) -> Result<Tracefs, TracefsError> {
    if let Some(root) = find() {
        return Ok(Tracefs {
            root,
            mounted_now: false,
        });
    }
    if !may_mount {
        return Err(TracefsError::NotMounted);
    }
    nix::mount::mount(
        Some("nodev"),
        CANDIDATES[0],
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(TracefsError::Mount)?;
    find()
        .map(|root| Tracefs {
            root,
            mounted_now: true,
        })
        .ok_or(TracefsError::NotMounted)
}

fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Field name → (offset, size) from a tracepoint `format` file.
pub fn parse_format(text: &str) -> HashMap<String, (usize, usize)> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            } else if decl.is_none() && !part.is_empty() {
                decl = Some(part);
            }
        }
        // The name is the declaration's last word, without an array suffix: `__u8 saddr[4]`.
        let name = decl
            .and_then(|d| d.split_whitespace().last())
            .map(|n| n.split('[').next().unwrap_or(n).trim_start_matches('*'));
        if let (Some(name), Some(offset), Some(size)) = (name, offset, size) {
            fields.insert(name.to_owned(), (offset, size));
        }
    }
    fields
}

/// The layout of `sock:inet_sock_set_state` on this kernel.
pub fn set_state_layout(root: &Path) -> Result<SetStateLayout, TracefsError> {
    let path = root.join("events/sock/inet_sock_set_state/format");
    let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: path.clone(),
        source,
    })?;
    layout_from_format(&text).map_err(|field| TracefsError::MissingField { path, field })
}

fn layout_from_format(text: &str) -> Result<SetStateLayout, &'static str> {
    let fields = parse_format(text);
    let off = |name: &'static str| -> Result<u16, &'static str> {
        fields
            .get(name)
            .and_then(|(o, _)| u16::try_from(*o).ok())
            .ok_or(name)
    };
    Ok(SetStateLayout {
        skaddr: off("skaddr")?,
        oldstate: off("oldstate")?,
        newstate: off("newstate")?,
        sport: off("sport")?,
        dport: off("dport")?,
        family: off("family")?,
        protocol: off("protocol")?,
        saddr: off("saddr")?,
        daddr: off("daddr")?,
        saddr_v6: off("saddr_v6")?,
        daddr_v6: off("daddr_v6")?,
        _pad: [0; 5],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_18: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"";

    #[test]
    fn parses_fields_with_pointers_and_arrays() {
        let f = parse_format(FORMAT_6_18);
        assert_eq!(f["skaddr"], (8, 8));
        assert_eq!(f["saddr"], (32, 4));
        assert_eq!(f["daddr_v6"], (56, 16));
        assert_eq!(f["common_pid"], (4, 4));
    }

    #[test]
    fn known_kernel_layout_matches_default() {
        assert_eq!(layout_from_format(FORMAT_6_18), Ok(SetStateLayout::DEFAULT));
    }

    #[test]
    fn shifted_layout_is_followed() {
        let shifted = FORMAT_6_18.replace("offset:24;", "offset:96;");
        assert_eq!(layout_from_format(&shifted).map(|l| l.sport), Ok(96));
    }

    #[test]
    fn missing_field_is_named() {
        let without = FORMAT_6_18.replace("protocol", "proto");
        assert_eq!(layout_from_format(&without), Err("protocol"));
    }
}
