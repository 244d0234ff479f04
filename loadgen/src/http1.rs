//! One HTTP/1.1 request/response on an established stream: the request is pre-built bytes, the
//! response head is parsed by `head` and the body is counted, not kept.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    clock::mono_ns,
    error::ErrorKind,
    head::{self, BodyKind, MAX_HEAD},
};

/// When each step happened; filled as the exchange goes, so that a timed-out or failed
/// exchange still tells how far it got.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    pub written_ns: Option<u64>,
    pub first_byte_ns: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct Response {
    pub status: u16,
    pub body_bytes: u64,
    pub end_ns: u64,
    /// The connection can carry another request.
    pub reusable: bool,
}

pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &[u8],
    head_request: bool,
    buf: &mut Vec<u8>,
    progress: &mut Progress,
) -> Result<Response, ErrorKind> {
    s.write_all(request)
        .await
        .map_err(|e| ErrorKind::from_io(&e))?;
    progress.written_ns = Some(mono_ns());

    if buf.len() < 8 * 1024 {
        buf.resize(8 * 1024, 0);
    }
    let mut filled = 0usize;
    loop {
        // Head: read until it is complete (skipping 1xx interim responses).
        let head::Head {
            status,
            len: head_len,
            body,
            mut reusable,
        } = loop {
            if filled == buf.len() {
                if buf.len() >= MAX_HEAD {
                    return Err(ErrorKind::MalformedResponse);
                }
                buf.resize(buf.len() * 2, 0);
            }
            let n = read(s, &mut buf[filled..]).await?;
            if n == 0 {
                return Err(if progress.first_byte_ns.is_none() {
                    ErrorKind::ClosedBeforeResponse
                } else {
                    ErrorKind::TruncatedResponse
                });
            }
            if progress.first_byte_ns.is_none() {
                progress.first_byte_ns = Some(mono_ns());
            }
            filled += n;
            if let Some(parsed) = head::parse(&buf[..filled], head_request)? {
                break parsed;
            }
        };
        if (100..200).contains(&status) && status != 101 {
            buf.copy_within(head_len..filled, 0);
            filled -= head_len;
            continue;
        }
        let already = &buf[head_len..filled];
        let body_bytes = match body {
            BodyKind::None => {
                reusable &= already.is_empty();
                0
            }
            BodyKind::Length(len) => {
                let mut got = already.len() as u64;
                while got < len {
                    let n = read(s, buf).await?;
                    if n == 0 {
                        return Err(ErrorKind::TruncatedResponse);
                    }
                    got += n as u64;
                }
                // Bytes beyond the body mean the server is out of step with us.
                reusable &= got == len;
                len
            }
            BodyKind::Chunked => {
                let mut dec = Chunked::default();
                let mut consumed = dec.feed(already)?;
                let mut leftover = already.len() - consumed;
                while !dec.done() {
                    let n = read(s, buf).await?;
                    if n == 0 {
                        return Err(ErrorKind::TruncatedResponse);
                    }
                    consumed = dec.feed(&buf[..n])?;
                    leftover = n - consumed;
                }
                reusable &= leftover == 0;
                dec.body_bytes
            }
            BodyKind::UntilClose => {
                let mut got = already.len() as u64;
                loop {
                    let n = read(s, buf).await?;
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                }
                reusable = false;
                got
            }
        };
        return Ok(Response {
            status,
            body_bytes,
            end_ns: mono_ns(),
            reusable,
        });
    }
}

async fn read<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Result<usize, ErrorKind> {
    match s.read(buf).await {
        Ok(n) => Ok(n),
        // rustls reports a close without close_notify this way; for HTTP framing it is an EOF.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(ErrorKind::from_io(&e)),
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    FinalLf,
    Done,
}

/// Incremental chunked-transfer decoder that only counts the payload bytes.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u32,
    body_bytes: u64,
}

impl Chunked {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes up to the end of the body; returns how many were consumed.
    fn feed(&mut self, input: &[u8]) -> Result<usize, ErrorKind> {
        use ChunkState::*;
        let bad = ErrorKind::MalformedResponse;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let b = input[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(bad);
                        }
                        self.size = self.size * 16 + d;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Ext,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err(bad),
                },
                Ext => {
                    if b == b'\r' {
                        self.state = SizeLf;
                    }
                }
                SizeLf => {
                    if b != b'\n' {
                        return Err(bad);
                    }
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let take = (self.size as usize).min(input.len() - i);
                    self.size -= take as u64;
                    self.body_bytes += take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(bad);
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(bad);
                    }
                    self.state = Size;
                    self.digits = 0;
                }
                TrailerStart => self.state = if b == b'\r' { FinalLf } else { TrailerLine },
                TrailerLine => {
                    if b == b'\n' {
                        self.state = TrailerStart;
                    }
                }
                FinalLf => {
                    if b != b'\n' {
                        return Err(bad);
                    }
                    self.state = Done;
                }
                Done => {}
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(response: &[u8]) -> Result<Response, ErrorKind> {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let response = response.to_vec();
        let srv = tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let _ = server.read(&mut req).await;
            // Dribble the response in small pieces to exercise the incremental paths.
            for piece in response.chunks(3) {
                server.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut buf = Vec::new();
        let mut p = Progress::default();
        let r = exchange(
            &mut client,
            b"GET / HTTP/1.1\r\n\r\n",
            false,
            &mut buf,
            &mut p,
        )
        .await;
        srv.await.unwrap();
        r
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn content_length_chunked_and_until_close_bodies() {
        rt().block_on(async {
            let r = run(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await
                .unwrap();
            assert_eq!((r.status, r.body_bytes, r.reusable), (200, 5, true));
            let r = run(b"HTTP/1.1 404 NF\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: 1\r\n\r\n").await.unwrap();
            assert_eq!((r.status, r.body_bytes, r.reusable), (404, 19, true));
            let r = run(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nabcdef")
                .await
                .unwrap();
            assert_eq!((r.status, r.body_bytes, r.reusable), (200, 6, false));
            let r = run(b"HTTP/1.1 204 No\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            assert_eq!((r.status, r.body_bytes, r.reusable), (204, 0, false));
        });
    }

    #[test]
    fn bad_responses_are_classified() {
        rt().block_on(async {
            assert_eq!(
                run(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
                    .await
                    .unwrap_err(),
                ErrorKind::TruncatedResponse
            );
            assert_eq!(
                run(b"HTTP/1.1 200 OK\r\nContent-").await.unwrap_err(),
                ErrorKind::TruncatedResponse
            );
            assert_eq!(run(b"").await.unwrap_err(), ErrorKind::ClosedBeforeResponse);
            assert_eq!(
                run(b"HTPP/1.1 200 OK\r\n\r\n").await.unwrap_err(),
                ErrorKind::MalformedResponse
            );
            assert_eq!(
                run(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
                    .await
                    .unwrap_err(),
                ErrorKind::MalformedResponse
            );
            assert_eq!(
                run(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                    .await
                    .unwrap_err(),
                ErrorKind::MalformedResponse
            );
            assert_eq!(
                run(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                    .await
                    .unwrap_err(),
                ErrorKind::TruncatedResponse
            );
        });
    }
}
