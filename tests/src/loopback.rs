//! Short-lived TCP connections on loopback, for tests that count what the probe sees of them.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

/// Opens `n` connections one after another to a server that accepts each and closes it at
/// once; the client reads to the end, so both sides close. Each connection makes 4 connection
/// events: a handshake and a lifetime per side.
pub fn connections(n: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        for _ in 0..n {
            drop(listener.accept().expect("accept"));
        }
    });
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.read_to_end(&mut Vec::new());
    }
    server.join().expect("server");
}

/// `n` request/response round trips ("ping", "pong") on one connection to `listener`, served
/// by a thread, then both sides close: each round trip makes one exchange record at the
/// client's socket and one at the server's.
pub fn round_trips(listener: TcpListener, n: u64) {
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(b"pong").expect("write");
        }
    });
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 4];
    for _ in 0..n {
        c.write_all(b"ping").expect("write");
        c.read_exact(&mut buf).expect("read");
    }
    drop(c);
    server.join().expect("server");
}
