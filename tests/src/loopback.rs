//! Short-lived TCP connections on loopback, for tests that count what the probe sees of them.

use std::{
    io::Read,
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
