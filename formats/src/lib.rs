//! The files hopprobe and loadgen write and read, each defined once: the writer serialises
//! these types and the reader deserialises them, so the two cannot drift apart.
//!
//! | file | module | written by | read by | schema |
//! | --- | --- | --- | --- | --- |
//! | hopprobe's records (JSON Lines) | [`records`] | `hopprobe run --records` | `hopprobe report --probe` | `schemas/hopprobe-records.schema.json` |
//! | hopprobe's summary (JSON) | [`summary`] | `hopprobe run --json` | `hopprobe report --summary` | `schemas/summary.schema.json` |
//! | loadgen's records (JSON Lines) | [`loadgen_records`] | `loadgen --records` | `hopprobe report --requests` | `schemas/loadgen-records.schema.json` |
//! | loadgen's JSON output (oha's) | [`loadgen_output`] | `loadgen --output-format json` | `hopprobe report --loadgen` | `schemas/loadgen-output.schema.json` |
//! | oha's text output | [`oha_text`] | `oha URL` (text, the default) | `hopprobe report --loadgen` | none (text; read only) |
//!
//! A writer of loadgen's records compresses a file named `*.zst` and every reader reads both
//! ([`compressed`]).
//!
//! String fields that a writer holds borrowed are a type parameter `S`: the writers use
//! `&str` (no allocation per line on loadgen's hot path), the readers the default `String`.
//!
//! The readers accept more than the writers write: a field that an older writer did not have
//! or that the reader does not need is optional when read (`#[serde(default)]`), so files that
//! `hopprobe report` read before still read. The schemas say what the writers write.

pub mod compressed;
pub mod loadgen_output;
pub mod loadgen_records;
pub mod oha_text;
pub mod records;
pub mod summary;
#[cfg(feature = "testing")]
pub mod testing;

use std::io::Write;

use serde::Serialize;

/// Why a file could not be read. The caller adds the file's name.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A line of a JSON Lines file is not JSON.
    #[error("line {line}: {source}")]
    LineSyntax {
        line: usize,
        source: serde_json::Error,
    },
    /// A line is JSON but not a line of this format.
    #[error("line {line}: not {what}: {source}")]
    Line {
        line: usize,
        what: &'static str,
        source: serde_json::Error,
    },
    /// A JSON document is not JSON.
    #[error("{0}")]
    Syntax(serde_json::Error),
    /// A JSON document is JSON but not of this format.
    #[error("not {what}: {source}")]
    Document {
        what: &'static str,
        source: serde_json::Error,
    },
    /// A line of a text report does not read (oha's text output).
    #[error("line {line}: {what}")]
    Text { line: usize, what: String },
    /// A JSON document lacks the key that tells its format.
    #[error("no `{key}`: not {what}")]
    Missing {
        key: &'static str,
        what: &'static str,
    },
}

impl ReadError {
    fn line(line: usize, what: &'static str, source: serde_json::Error) -> Self {
        if source.is_data() {
            Self::Line { line, what, source }
        } else {
            Self::LineSyntax { line, source }
        }
    }

    fn document(what: &'static str, source: serde_json::Error) -> Self {
        if source.is_data() {
            Self::Document { what, source }
        } else {
            Self::Syntax(source)
        }
    }
}

/// Writes `value` as one line of a JSON Lines file: compact JSON and a newline.
pub fn write_line<W: Write + ?Sized, T: Serialize + ?Sized>(
    w: &mut W,
    value: &T,
) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, value)?;
    w.write_all(b"\n")
}

/// A JSON document as the writers write it: indented by two spaces, ending with a newline.
pub fn to_pretty<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(value).map(|s| s + "\n")
}

/// The non-blank lines of a JSON Lines text, numbered from 1.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
}
