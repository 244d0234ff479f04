//! A proxy's connection: plain TCP, or TLS as either side, read and written the same way.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    sync::Arc,
};

use rustls::{
    ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned,
    pki_types::ServerName,
};

use super::tls::HandshakeStats;

pub enum Conn {
    Plain(TcpStream),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Conn {
    /// Accepts TLS on `tcp`, the handshake completed here (and the server's session tickets
    /// sent, as servers send them before any response) so that it is counted by kind.
    pub fn accept(
        mut tcp: TcpStream,
        config: Arc<ServerConfig>,
        stats: &HandshakeStats,
    ) -> io::Result<Self> {
        let mut conn = ServerConnection::new(config).map_err(invalid)?;
        if let Err(e) = handshake(&mut *conn, &mut tcp) {
            stats.failed();
            return Err(e);
        }
        stats.done(true, conn.handshake_kind());
        Ok(Conn::Server(Box::new(StreamOwned::new(conn, tcp))))
    }

    /// Opens TLS over `tcp` to `name`, the handshake completed here.
    pub fn connect(
        mut tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        stats: &HandshakeStats,
    ) -> io::Result<Self> {
        let mut conn = ClientConnection::new(config, name).map_err(invalid)?;
        if let Err(e) = handshake(&mut *conn, &mut tcp) {
            stats.failed();
            return Err(e);
        }
        stats.done(false, conn.handshake_kind());
        Ok(Conn::Client(Box::new(StreamOwned::new(conn, tcp))))
    }

    /// Ends the connection as TLS peers expect (close_notify); plain TCP needs nothing.
    pub fn close(&mut self) {
        match self {
            Conn::Plain(_) => {}
            Conn::Server(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
            Conn::Client(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
        }
    }
}

fn handshake(
    conn: &mut rustls::ConnectionCommon<impl rustls::SideData>,
    tcp: &mut TcpStream,
) -> io::Result<()> {
    while conn.is_handshaking() {
        conn.complete_io(tcp)?;
    }
    // What the handshake left to send: TLS 1.3 session tickets on the server side.
    while conn.wants_write() {
        conn.write_tls(tcp)?;
    }
    Ok(())
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Server(s) => s.read(buf),
            Conn::Client(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Server(s) => s.write(buf),
            Conn::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Server(s) => s.flush(),
            Conn::Client(s) => s.flush(),
        }
    }
}
