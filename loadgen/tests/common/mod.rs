//! Local test servers (127.0.0.1 only) that behave well or badly on purpose, and a runner
//! for the loadgen binary.

#![allow(
    dead_code,
    reason = "each test file uses its own subset of these helpers"
)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::Duration,
};

pub struct Server {
    pub addr: SocketAddr,
    /// The client address of every request the server read, in order.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// Reads one request head; false at EOF or error.
pub fn read_head(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
    }
}

/// Accepts connections forever; `handle` runs on its own thread per connection and gets the
/// request log to push to.
pub fn serve<F>(handle: F) -> Server
where
    F: Fn(TcpStream, SocketAddr, &Mutex<Vec<SocketAddr>>) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let handle = Arc::new(handle);
    let log = peers.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let peer = s.peer_addr().unwrap();
            let (handle, log) = (handle.clone(), log.clone());
            std::thread::spawn(move || handle(s, peer, &log));
        }
    });
    Server { addr, peers }
}

/// A well-behaved keep-alive server answering `body` after `delay`.
pub fn ok_server(delay: Duration, body: &'static str) -> Server {
    serve(move |mut s, peer, log| {
        while read_head(&mut s) {
            log.lock().unwrap().push(peer);
            std::thread::sleep(delay);
            let r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// A server that answers every request with `raw` and then closes the connection.
pub fn raw_server(raw: &'static [u8]) -> Server {
    serve(move |mut s, peer, log| {
        if read_head(&mut s) {
            log.lock().unwrap().push(peer);
            let _ = s.write_all(raw);
        }
    })
}

/// Resets the connection (RST) right after reading the request.
pub fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("loadgen runs")
}

pub fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "loadgen failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

pub fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A server that keeps every request head it reads, byte for byte, and answers as HTTP/1.1
/// servers do: it closes right after the response when the request said `connection: close`,
/// else it waits for the next request or the client's close.
pub struct Capture {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Capture {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn heads(&self) -> Vec<Vec<u8>> {
        self.heads.lock().unwrap().clone()
    }
}

/// The whole request: head, and as many body bytes as its content-length says.
fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + body {
                return Some(buf);
            }
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
}

pub fn capture_server() -> Capture {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let log = heads.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                while let Some(req) = read_request(&mut s) {
                    let close = String::from_utf8_lossy(&req)
                        .to_ascii_lowercase()
                        .contains("\r\nconnection: close\r\n");
                    log.lock().unwrap().push(req);
                    let r: &[u8] = if close {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if s.write_all(r).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    Capture { addr, heads }
}
