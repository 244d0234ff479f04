//! Text files that may be zstd-compressed: a writer picks compression by the file's name (ending
//! in [`ZSTD_SUFFIX`]), a reader by the file's first bytes (zstd's magic number), so every
//! reader of a format reads both, whatever the file is called.
//!
//! loadgen's records are the case this is for: about 390 bytes a request as JSON Lines, about
//! 30 compressed (docs/formats.md#size-plain-or-zstd).

use std::{
    fs::File,
    io::{self, BufWriter, Read, Write},
    path::Path,
};

/// A file name ending in this is written zstd-compressed.
pub const ZSTD_SUFFIX: &str = ".zst";

/// zstd's level for the records: level 1 is the fastest, and on loadgen's records it
/// compresses as well as level 3 (`docs/results/bench-loadgen.md`, 2026-12-04).
pub const ZSTD_LEVEL: i32 = 1;

/// The first four bytes of a zstd frame (little-endian 0xFD2FB528).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The name asks for compression: it ends in [`ZSTD_SUFFIX`].
pub fn wants_zstd(path: &Path) -> bool {
    path.as_os_str()
        .as_encoded_bytes()
        .ends_with(ZSTD_SUFFIX.as_bytes())
}

/// A text file being written, plain or zstd-compressed. Writes go through one buffer of the
/// size given, so the compressor sees large chunks, not one line at a time. Call
/// [`TextWriter::finish`] at the end: it flushes the buffer and ends the zstd frame, without
/// which the last lines are lost.
pub struct TextWriter {
    inner: BufWriter<Sink>,
}

enum Sink {
    Plain(File),
    Zstd(zstd::stream::write::Encoder<'static, File>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(f) => f.write(buf),
            Sink::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(f) => f.flush(),
            Sink::Zstd(z) => z.flush(),
        }
    }
}

impl TextWriter {
    /// Creates (truncates) `path`; zstd-compressed when [`wants_zstd`].
    pub fn create(path: &Path, buffer: usize) -> io::Result<TextWriter> {
        let file = File::create(path)?;
        let sink = if wants_zstd(path) {
            let mut z = zstd::stream::write::Encoder::new(file, ZSTD_LEVEL)?;
            // A frame ends with a checksum of its content: damage is an error when read, not
            // wrong records.
            z.include_checksum(true)?;
            Sink::Zstd(z)
        } else {
            Sink::Plain(file)
        };
        Ok(TextWriter {
            inner: BufWriter::with_capacity(buffer, sink),
        })
    }

    /// Writes what is buffered and, compressed, ends the frame. The file is complete after it.
    pub fn finish(self) -> io::Result<()> {
        match self.inner.into_inner().map_err(|e| e.into_error())? {
            Sink::Plain(mut f) => f.flush(),
            Sink::Zstd(z) => z.finish()?.flush(),
        }
    }
}

impl Write for TextWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    /// Hands the buffer to the file (to the compressor, which may keep up to a block of it
    /// until [`TextWriter::finish`]).
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A text file's contents, decompressed if it was compressed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Text {
    pub text: String,
    /// The compressed stream ends inside a frame (the writer was killed before it finished):
    /// `text` holds what was decompressed up to its last complete line.
    pub cut_short: bool,
}

/// Reads a text file, plain or zstd-compressed (told by its first bytes, not its name). A
/// compressed file cut short reads up to its last complete line and says so
/// ([`Text::cut_short`]); a damaged one is an error.
pub fn read_text(path: &Path) -> io::Result<Text> {
    let mut file = File::open(path)?;
    let mut head = [0u8; 4];
    let n = read_up_to(&mut file, &mut head)?;
    let mut bytes = head[..n].to_vec();
    if head[..n] != ZSTD_MAGIC {
        file.read_to_end(&mut bytes)?;
        return Ok(Text {
            text: utf8(bytes)?,
            cut_short: false,
        });
    }
    let mut z = zstd::stream::read::Decoder::new(io::Cursor::new(bytes).chain(file))?;
    let mut out = Vec::new();
    // read_to_end keeps what it read before an error.
    let cut_short = match z.read_to_end(&mut out) {
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            let complete = out.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            out.truncate(complete);
            true
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("not a readable zstd stream: {e}"),
            ));
        }
    };
    Ok(Text {
        text: utf8(out)?,
        cut_short,
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn utf8(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("formats-compressed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    fn lines(n: usize) -> String {
        (0..n)
            .map(|i| format!("{{\"seq\":{i},\"pad\":\"{}\"}}\n", i * 7919))
            .collect()
    }

    fn write(path: &Path, text: &str) {
        let mut w = TextWriter::create(path, 1024).expect("create");
        w.write_all(text.as_bytes()).expect("write");
        w.finish().expect("finish");
    }

    #[test]
    fn plain_and_zstd_read_back_the_same_text() {
        let text = lines(20_000);
        for name in ["a.jsonl", "a.jsonl.zst"] {
            let path = temp(name);
            write(&path, &text);
            let raw = std::fs::read(&path).expect("raw");
            assert_eq!(
                raw.starts_with(&ZSTD_MAGIC),
                name.ends_with(".zst"),
                "{name}"
            );
            if name.ends_with(".zst") {
                assert!(raw.len() * 5 < text.len(), "compressed: {}", raw.len());
            }
            let read = read_text(&path).expect("read");
            assert_eq!(read.text, text, "{name}");
            assert!(!read.cut_short);
        }
    }

    #[test]
    fn compression_is_told_by_the_bytes_not_the_name() {
        let text = lines(10);
        let path = temp("b.jsonl.zst");
        write(&path, &text);
        let renamed = temp("b.jsonl");
        std::fs::rename(&path, &renamed).expect("rename");
        assert_eq!(read_text(&renamed).expect("read").text, text);
        // Short files and empty ones are plain text.
        for short in ["", "{", "{}\n"] {
            let path = temp("short.jsonl");
            std::fs::write(&path, short).expect("write");
            assert_eq!(read_text(&path).expect("read").text, short);
        }
    }

    /// loadgen killed while writing: the file ends inside the frame. What was written reads,
    /// up to the last complete line, and the cut is reported.
    #[test]
    fn a_compressed_file_cut_short_reads_up_to_its_last_complete_line() {
        let text = lines(200_000);
        let path = temp("c.jsonl.zst");
        write(&path, &text);
        let full = std::fs::read(&path).expect("raw");
        let mut seen_some = false;
        for keep in [full.len() - 1, full.len() * 2 / 3, full.len() / 3, 5, 4] {
            let cut = temp("cut.jsonl.zst");
            std::fs::write(&cut, &full[..keep]).expect("write");
            let read = read_text(&cut).expect("a cut-short file reads");
            assert!(read.cut_short, "cut at {keep}");
            assert!(text.starts_with(&read.text), "a prefix, cut at {keep}");
            assert!(read.text.is_empty() || read.text.ends_with('\n'));
            seen_some |= read.text.len() > text.len() / 4;
        }
        assert!(seen_some, "the blocks before the cut are decompressed");
    }

    #[test]
    fn a_damaged_compressed_file_is_an_error() {
        let text = lines(1000);
        let path = temp("d.jsonl.zst");
        write(&path, &text);
        let mut raw = std::fs::read(&path).expect("raw");
        let n = raw.len();
        for b in &mut raw[n / 2..n / 2 + 16] {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &raw).expect("write");
        match read_text(&path) {
            Ok(t) => panic!("damaged, read {} bytes", t.text.len()),
            Err(e) => assert!(e.to_string().contains("zstd"), "{e}"),
        }
    }

    #[test]
    fn the_name_tells_the_writer() {
        assert!(wants_zstd(Path::new("r.jsonl.zst")));
        assert!(wants_zstd(Path::new("/x/y.zst")));
        assert!(!wants_zstd(Path::new("r.jsonl")));
        assert!(!wants_zstd(Path::new("r.zstd")));
    }
}
