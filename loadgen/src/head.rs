//! HTTP/1.x response head parsing, reduced to what a load generator needs: the status, the body
//! framing and whether the connection can be reused. A general parser (httparse) validated and
//! stored every header on every response and cost more instructions than the rest of a
//! keep-alive request together; this one finds lines with `memchr`, looks only at the headers
//! that decide framing, and still rejects what is not HTTP (checked against httparse in tests).

use crate::error::ErrorKind;

/// A response head larger than this is treated as malformed.
pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub body: BodyKind,
    /// The connection can carry another request as far as the headers say.
    pub reusable: bool,
}

const PREFIX: &[u8] = b"HTTP/1.";

/// `Ok(None)` while the head is incomplete; an error as soon as the bytes cannot be HTTP.
pub fn parse(bytes: &[u8], head_request: bool) -> Result<Option<Head>, ErrorKind> {
    let bad = ErrorKind::MalformedResponse;
    let n = bytes.len().min(PREFIX.len());
    if bytes[..n] != PREFIX[..n] {
        return Err(bad);
    }
    let Some(eol) = memchr::memchr(b'\n', bytes) else {
        return Ok(None);
    };
    let (status, http11) = status_line(trim_cr(&bytes[..eol]))?;
    let mut reusable = http11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut at = eol + 1;
    let mut headers = 0usize;
    let len = loop {
        let Some(i) = memchr::memchr(b'\n', &bytes[at..]) else {
            return Ok(None);
        };
        let line = trim_cr(&bytes[at..at + i]);
        at += i + 1;
        if line.is_empty() {
            break at;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(bad);
        }
        // The name is a token up to the colon; one pass validates it and finds the colon.
        let colon = line.iter().position(|&b| !TOKEN[usize::from(b)]);
        let colon = match colon {
            Some(c) if c > 0 && line[c] == b':' => c,
            _ => return Err(bad),
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.trim_ascii();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let v = parse_u64(value).ok_or(bad)?;
                if length.is_some_and(|l| l != v) {
                    return Err(bad);
                }
                length = Some(v);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                chunked = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        reusable = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        reusable = true;
                    }
                }
            }
            _ => {}
        }
    };
    if !no_control_bytes(&bytes[..len]) {
        return Err(bad);
    }
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        BodyKind::None
    } else if chunked {
        BodyKind::Chunked
    } else if let Some(l) = length {
        BodyKind::Length(l)
    } else {
        BodyKind::UntilClose
    };
    Ok(Some(Head {
        status,
        len,
        body,
        reusable,
    }))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `HTTP/1.x NNN[ reason]`: the status and whether the version is 1.1.
fn status_line(line: &[u8]) -> Result<(u16, bool), ErrorKind> {
    let bad = ErrorKind::MalformedResponse;
    // "HTTP/1.1 200" is the shortest valid line.
    if line.len() < 12 || line[8] != b' ' {
        return Err(bad);
    }
    let http11 = match line[7] {
        b'1' => true,
        b'0' => false,
        _ => return Err(bad),
    };
    let code = &line[9..12];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    match line.get(12) {
        None => {}
        // The reason's bytes are checked with the rest of the head.
        Some(b' ') => {}
        Some(_) => return Err(bad),
    }
    Ok((status, http11))
}

/// Bytes allowed in a header name (RFC 9110 token).
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// No control byte but tab and line ends anywhere in the head. Branch-free so that it
/// vectorises: one pass over the head instead of a check per header value.
fn no_control_bytes(head: &[u8]) -> bool {
    let mut bad = 0u8;
    for &b in head {
        bad |= (u8::from(b < 0x20)
            & u8::from(b != b'\t')
            & u8::from(b != b'\r')
            & u8::from(b != b'\n'))
            | u8::from(b == 0x7f);
    }
    bad == 0
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        v.iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 17:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n";

    #[test]
    fn framing_and_reuse_follow_the_headers() {
        let h = parse(NGINX, false).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.body, BodyKind::Length(12));
        assert!(h.reusable);
        assert_eq!(&NGINX[h.len..], b"hello world\n");
        let h = parse(b"HTTP/1.0 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((h.body, h.reusable), (BodyKind::UntilClose, false));
        let h = parse(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.body, h.reusable), (BodyKind::Length(0), true));
        let h = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\nconnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.body, h.reusable), (BodyKind::Chunked, false));
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyKind::None);
        let h = parse(b"HTTP/1.1 204\nX: y\n\n", false).unwrap().unwrap();
        assert_eq!((h.status, h.body, h.len), (204, BodyKind::None, 19));
    }

    #[test]
    fn incomplete_heads_wait_and_garbage_fails_early() {
        for cut in 0..NGINX.len() - 12 {
            assert_eq!(parse(&NGINX[..cut], false), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse(b"HTPP", false),
            Err(ErrorKind::MalformedResponse),
            "wrong protocol is seen before the line ends"
        );
        assert_eq!(parse(b"<html>", false), Err(ErrorKind::MalformedResponse));
    }

    /// Every case agrees with httparse on "is this a complete, valid head, and what status".
    #[test]
    fn agrees_with_httparse() {
        let cases: &[&[u8]] = &[
            NGINX,
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: empty\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\x01c\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 20x OK\r\n\r\n",
            b"HTTP/1.2 200 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA:\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA:\tb\t\r\n\r\n",
            b"HTTP/1.1 200 OK\nA: b\n\n",
        ];
        for &case in cases {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            let theirs = match resp.parse(case) {
                Ok(httparse::Status::Complete(n)) => Some((resp.code, n)),
                Ok(httparse::Status::Partial) => panic!("partial: {case:?}"),
                Err(_) => None,
            };
            let ours = parse(case, false)
                .ok()
                .flatten()
                .map(|h| (Some(h.status), h.len));
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn too_many_headers_or_bad_lengths_are_malformed() {
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many, false), Err(ErrorKind::MalformedResponse));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(parse(bad, false), Err(ErrorKind::MalformedResponse));
        }
    }
}
