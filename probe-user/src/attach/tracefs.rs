//! Finding (or mounting) tracefs, reading tracepoint formats from it and comparing them with
//! the fields the programs read (`probe_common::layout`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use probe_common::layout::{Offsets, SetStateLayout, Tracepoint};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
    Mount(nix::Error),
    #[error("tracefs is not mounted (mount it with `mount -t tracefs nodev /sys/kernel/tracing`)")]
    NotMounted,
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

/// A tracepoint's fields as its `format` file gives them: name → (offset, size).
pub type Format = HashMap<String, (usize, usize)>;

/// `category:name`, as formats are keyed and targets printed.
pub fn id(tp: &Tracepoint) -> String {
    format!("{}:{}", tp.category, tp.name)
}

/// The format of `tp` on this kernel; `None` when the kernel has no such tracepoint.
pub fn read_format(root: &Path, tp: &Tracepoint) -> Option<Format> {
    let path = root.join(format!("events/{}/{}/format", tp.category, tp.name));
    std::fs::read_to_string(path)
        .ok()
        .map(|text| parse_format(&text))
}

/// Why a program that reads `tp`'s fields as the table says would misread this kernel's
/// records (`format`; `None`: the kernel has no such tracepoint), or `None` when it fits.
pub fn misfit(tp: &Tracepoint, format: Option<&Format>) -> Option<String> {
    let Some(format) = format else {
        return Some(format!("this kernel has no {}", id(tp)));
    };
    for f in tp.fields {
        let (want_offset, want_size) = (usize::from(f.offset), usize::from(f.size));
        let Some(&(offset, size)) = format.get(f.name) else {
            return Some(format!("{} has no field {}", id(tp), f.name));
        };
        let fits = match tp.offsets {
            Offsets::Fixed => (offset, size) == (want_offset, want_size),
            Offsets::FromTracefs => size == want_size,
        };
        if !fits {
            let read = match tp.offsets {
                Offsets::Fixed => format!("offset {want_offset}, {want_size} bytes"),
                Offsets::FromTracefs => format!("{want_size} bytes"),
            };
            return Some(format!(
                "{}'s field {} is at offset {offset}, {size} bytes; the program reads {read}",
                id(tp),
                f.name
            ));
        }
    }
    None
}

/// Field name → (offset, size) from a tracepoint `format` file.
pub fn parse_format(text: &str) -> Format {
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

/// The offsets of `sock:inet_sock_set_state`'s fields in `format`; `Err` names a field it
/// lacks.
pub fn set_state_layout(format: &Format) -> Result<SetStateLayout, &'static str> {
    SetStateLayout::follow(|f| {
        format
            .get(f.name)
            .and_then(|&(offset, _)| u16::try_from(offset).ok())
    })
}

#[cfg(test)]
mod tests {
    use probe_common::layout::sock::{inet_sock_set_state, sock_recv_length};

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

    fn layout_from_format(text: &str) -> Result<SetStateLayout, &'static str> {
        set_state_layout(&parse_format(text))
    }

    const SET_STATE: Tracepoint = inet_sock_set_state::TRACEPOINT;

    #[test]
    fn known_kernel_layout_matches_default() {
        assert_eq!(layout_from_format(FORMAT_6_18), Ok(SetStateLayout::DEFAULT));
        assert_eq!(misfit(&SET_STATE, Some(&parse_format(FORMAT_6_18))), None);
    }

    #[test]
    fn shifted_layout_is_followed() {
        let shifted = FORMAT_6_18.replace("offset:24;", "offset:96;");
        assert_eq!(layout_from_format(&shifted).map(|l| l.sport), Ok(96));
        // Followed offsets may move; the size read may not.
        assert_eq!(misfit(&SET_STATE, Some(&parse_format(&shifted))), None);
        let wider = FORMAT_6_18.replace("offset:24;\tsize:2;", "offset:24;\tsize:4;");
        assert_eq!(
            misfit(&SET_STATE, Some(&parse_format(&wider))).as_deref(),
            Some(
                "sock:inet_sock_set_state's field sport is at offset 24, 4 bytes; the program reads 2 bytes"
            )
        );
    }

    #[test]
    fn missing_field_is_named() {
        let without = FORMAT_6_18.replace("protocol", "proto");
        assert_eq!(layout_from_format(&without), Err("protocol"));
        assert_eq!(
            misfit(&SET_STATE, Some(&parse_format(&without))).as_deref(),
            Some("sock:inet_sock_set_state has no field protocol")
        );
        assert_eq!(
            misfit(&SET_STATE, None).as_deref(),
            Some("this kernel has no sock:inet_sock_set_state")
        );
    }

    #[test]
    fn fixed_offsets_must_match() {
        let tp = sock_recv_length::TRACEPOINT;
        let format = |ret: &str| {
            parse_format(&format!(
                "\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;
\tfield:int ret;\t{ret};\tsigned:1;
\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;"
            ))
        };
        assert_eq!(misfit(&tp, Some(&format("offset:20;\tsize:4"))), None);
        assert_eq!(
            misfit(&tp, Some(&format("offset:28;\tsize:4"))).as_deref(),
            Some(
                "sock:sock_recv_length's field ret is at offset 28, 4 bytes; the program reads offset 20, 4 bytes"
            )
        );
    }
}
