//! Just enough HTTP/1.1 for the lab: requests and responses with `Content-Length` bodies.
//!
//! The lab's apps and proxies only ever exchange such messages, and a real proxy put in the
//! sidecar's place (haproxy, Envoy) forwards them unchanged.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::TcpStream,
};

/// A request or response head plus body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `GET /path HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

const MAX_HEAD: usize = 64 * 1024;

impl Message {
    pub fn request(method: &str, path: &str, host: &str) -> Self {
        Self {
            start: format!("{method} {path} HTTP/1.1"),
            headers: vec![("Host".into(), host.into())],
            body: Vec::new(),
        }
    }

    pub fn response(status: u16, reason: &str, body: Vec<u8>) -> Self {
        Self {
            start: format!("HTTP/1.1 {status} {reason}"),
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.into(), value.into()));
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        self.start.split_whitespace().nth(1)?.parse().ok()
    }

    /// The path of a request.
    pub fn path(&self) -> Option<&str> {
        self.start.split_whitespace().nth(1)
    }

    /// Whether the peer asked to close the connection after this message.
    pub fn wants_close(&self) -> bool {
        self.header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut head = String::with_capacity(256);
        head.push_str(&self.start);
        head.push_str("\r\n");
        for (k, v) in &self.headers {
            if k.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        // One write: the head and body leave in the same segment where they fit.
        let mut buf = head.into_bytes();
        buf.extend_from_slice(&self.body);
        w.write_all(&buf)?;
        w.flush()
    }
}

/// One GET on a connection of its own, closed after the response.
pub fn get(addr: std::net::SocketAddr, path: &str) -> io::Result<Message> {
    let stream = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    let mut req = Message::request("GET", path, &addr.to_string());
    req.set_header("Connection", "close");
    let mut w = stream.try_clone()?;
    req.write_to(&mut w)?;
    read_message(&mut BufReader::new(stream))?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{addr} closed the connection without answering"),
        )
    })
}

/// One GET over TLS, verifying the server as `name`, on a connection of its own closed after
/// the response; also how the handshake went (full or resumed).
pub fn get_tls(
    addr: std::net::SocketAddr,
    path: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
) -> io::Result<(Message, Option<rustls::HandshakeKind>)> {
    let stream = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    let conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut req = Message::request("GET", path, &addr.to_string());
    req.set_header("Connection", "close");
    req.write_to(&mut tls)?;
    let kind = tls.conn.handshake_kind();
    let mut reader = BufReader::new(tls);
    let resp = read_message(&mut reader)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{addr} closed the TLS connection without answering"),
        )
    })?;
    let tls = reader.get_mut();
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok((resp, kind))
}

/// Reads one message; `Ok(None)` on a clean end of stream before any byte of it.
pub fn read_message(r: &mut impl BufRead) -> io::Result<Option<Message>> {
    let mut head = Vec::with_capacity(512);
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a message head",
            ));
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            if head == b"\r\n" {
                head.clear();
                continue;
            }
            break;
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message head too large",
            ));
        }
    }
    let text = std::str::from_utf8(&head)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed header line"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut msg = Message {
        start,
        headers,
        body: Vec::new(),
    };
    if msg
        .header("Transfer-Encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "chunked bodies are not supported by the lab",
        ));
    }
    let len: usize = match msg.header("Content-Length") {
        Some(v) => v
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?,
        None => 0,
    };
    msg.body.resize(len, 0);
    r.read_exact(&mut msg.body)?;
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn round_trips_over_a_socket() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let req = read_message(&mut r).expect("read").expect("some");
            let mut w = s;
            Message::response(
                200,
                "OK",
                format!("got {}", req.path().unwrap_or("")).into_bytes(),
            )
            .write_to(&mut w)
            .expect("write");
            read_message(&mut r).expect("eof is clean")
        });
        let mut s = TcpStream::connect(addr).expect("connect");
        Message::request("GET", "/x", "h")
            .write_to(&mut s)
            .expect("write");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let resp = read_message(&mut r).expect("read").expect("some");
        assert_eq!(resp.status(), Some(200));
        assert_eq!(resp.body, b"got /x");
        drop(r);
        drop(s);
        assert_eq!(t.join().expect("server"), None);
    }

    #[test]
    fn headers_are_case_insensitive_and_replaceable() {
        let mut m = Message::request("GET", "/", "h");
        m.set_header("connection", "close");
        assert!(m.wants_close());
        m.set_header("Connection", "keep-alive");
        assert!(!m.wants_close());
        assert_eq!(m.headers.len(), 2);
    }
}
