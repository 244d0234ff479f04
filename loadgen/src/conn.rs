//! Opening a connection to a target: cached DNS, TCP connect, TLS handshake, each timed on
//! CLOCK_MONOTONIC.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{clock::mono_ns, error::ErrorKind};

/// Which address family a target's name may resolve to (`-4`, `-6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Any,
    V4,
    V6,
}

pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct Connection {
    pub stream: Stream,
    pub id: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// How a new connection came about (all absolute CLOCK_MONOTONIC ns but `dns_ns`, a duration).
#[derive(Debug, Default, Clone, Copy)]
pub struct Dial {
    pub dns_ns: Option<u64>,
    pub connect_start_ns: Option<u64>,
    pub connect_end_ns: Option<u64>,
    pub tls_end_ns: Option<u64>,
    pub tls_resumed: Option<bool>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
}

/// Per target: where to connect and how. The DNS answer is cached after the first success (as
/// oha's pre-lookup does), so later connections pay only the cache lookup.
pub struct Dialer {
    host: String,
    port: u16,
    family: Family,
    literal: Option<IpAddr>,
    cache: Mutex<Option<SocketAddr>>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(
        host: &str,
        port: u16,
        family: Family,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        connect_timeout: Duration,
    ) -> Dialer {
        Dialer {
            host: host.to_owned(),
            port,
            family,
            literal: host.parse().ok(),
            cache: Mutex::new(None),
            tls: tls.map(|(c, n)| (TlsConnector::from(c), n)),
            connect_timeout,
        }
    }

    fn wanted(&self, a: &SocketAddr) -> bool {
        match self.family {
            Family::Any => true,
            Family::V4 => a.is_ipv4(),
            Family::V6 => a.is_ipv6(),
        }
    }

    /// The address of a target named by an IP literal (no DNS); `None` for a host name.
    pub fn literal(&self) -> Option<Result<SocketAddr, ErrorKind>> {
        let a = SocketAddr::new(self.literal?, self.port);
        Some(if self.wanted(&a) {
            Ok(a)
        } else {
            Err(ErrorKind::Dns)
        })
    }

    /// Plain TCP (no TLS) to an IP literal: what the epoll engine can dial on its own.
    pub fn is_plain_literal(&self) -> bool {
        self.tls.is_none() && self.literal.is_some()
    }

    async fn resolve(&self) -> Result<SocketAddr, ErrorKind> {
        if let Some(r) = self.literal() {
            return r;
        }
        if let Some(a) = *self.cache.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(a);
        }
        let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
        let addrs = tokio::time::timeout(self.connect_timeout, lookup)
            .await
            .map_err(|_| ErrorKind::Dns)?
            .map_err(|_| ErrorKind::Dns)?;
        let mut found = None;
        for a in addrs {
            if self.wanted(&a) {
                found = Some(a);
                break;
            }
        }
        let a = found.ok_or(ErrorKind::Dns)?;
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(a);
        Ok(a)
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Opens a connection within `--connect-timeout`, filling `dial` as it goes so that a
    /// failure still says how far it got.
    pub async fn dial(&self, id: u64, dial: &mut Dial) -> Result<Connection, ErrorKind> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        tokio::time::timeout_at(deadline, self.dial_untimed(id, dial))
            .await
            .unwrap_or(Err(ErrorKind::ConnectTimeout))
    }

    /// `dial` without its own timer (but DNS): the caller bounds it by the connect timeout.
    /// A timer of its own would be inserted into tokio's wheel before every earlier one, which
    /// wakes the runtime's driver through its eventfd: one more syscall per connection.
    pub async fn dial_untimed(&self, id: u64, dial: &mut Dial) -> Result<Connection, ErrorKind> {
        let t0 = mono_ns();
        let remote = self.resolve().await?;
        let t1 = mono_ns();
        dial.dns_ns = Some(t1 - t0);
        dial.connect_start_ns = Some(t1);
        dial.remote = Some(remote);
        let tcp = TcpStream::connect(remote)
            .await
            .map_err(|e| ErrorKind::from_connect(&e))?;
        dial.connect_end_ns = Some(mono_ns());
        // Requests are small and latency is what we measure: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(|e| ErrorKind::from_connect(&e))?;
        dial.local = Some(local);
        let stream = match &self.tls {
            None => Stream::Tcp(tcp),
            Some((connector, name)) => {
                let hs = connector.connect(name.clone(), tcp);
                let tls = hs.await.map_err(|e| ErrorKind::from_tls(&e))?;
                dial.tls_end_ns = Some(mono_ns());
                dial.tls_resumed = Some(matches!(
                    tls.get_ref().1.handshake_kind(),
                    Some(rustls::HandshakeKind::Resumed)
                ));
                Stream::Tls(Box::new(tls))
            }
        };
        Ok(Connection {
            stream,
            id,
            local,
            remote,
        })
    }
}
