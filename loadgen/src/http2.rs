//! HTTP/2 with the `h2` crate: prior knowledge (h2c) on `http://`, ALPN `h2` on `https://`.
//! One connection carries `-p` streams at once; each stream is one request, timed and recorded
//! like an HTTP/1.1 request.

use std::{cell::Cell, net::SocketAddr, rc::Rc};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    clock::mono_ns,
    conn::{Connection, Stream},
    error::ErrorKind,
    http1::{Progress, Response},
};

/// The request of a target in the form h2 sends: built once, copied per request.
#[derive(Debug)]
pub struct H2Request {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
    head: bool,
}

impl H2Request {
    /// `authority` becomes `:authority` (HTTP/2 has no Host header); `headers` are sent as
    /// given, lowercased, except those HTTP/2 forbids.
    pub fn new(
        method: &str,
        scheme: &str,
        authority: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<H2Request, String> {
        let method = http::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| e.to_string())?;
        let mut map = http::HeaderMap::new();
        for (n, v) in headers {
            let n = n.to_ascii_lowercase();
            if matches!(
                n.as_str(),
                "host"
                    | "connection"
                    | "keep-alive"
                    | "proxy-connection"
                    | "transfer-encoding"
                    | "upgrade"
            ) {
                continue;
            }
            let name = http::HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string())?;
            let value = http::HeaderValue::from_str(v).map_err(|e| format!("{n}: {e}"))?;
            map.append(name, value);
        }
        Ok(H2Request {
            head: method == http::Method::HEAD,
            method,
            uri,
            headers: map,
            body: Bytes::copy_from_slice(body),
        })
    }

    pub fn build(&self) -> http::Request<()> {
        let mut r = http::Request::new(());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        *r.version_mut() = http::Version::HTTP_2;
        r
    }
}

/// An HTTP/2 connection: cheap to clone, one clone per stream in flight. The connection task
/// that drives h2 runs on the worker's `LocalSet` and marks the connection closed when it ends.
#[derive(Clone)]
pub struct H2Conn {
    send: SendRequest<Bytes>,
    pub id: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    closed: Rc<Cell<bool>>,
}

impl H2Conn {
    /// Starts HTTP/2 on an established connection. On TLS the server must have chosen `h2`
    /// by ALPN; on plain TCP the client speaks HTTP/2 at once (prior knowledge).
    pub async fn start(c: Connection) -> Result<H2Conn, ErrorKind> {
        let closed = Rc::new(Cell::new(false));
        let send = match c.stream {
            Stream::Tcp(s) => drive(s, closed.clone()).await?,
            Stream::Tls(s) => {
                if s.get_ref().1.alpn_protocol() != Some(b"h2") {
                    tracing::debug!("server did not choose h2 by ALPN");
                    return Err(ErrorKind::Http2);
                }
                drive(s, closed.clone()).await?
            }
        };
        Ok(H2Conn {
            send,
            id: c.id,
            local: c.local,
            remote: c.remote,
            closed,
        })
    }

    pub fn is_open(&self) -> bool {
        !self.closed.get()
    }
}

async fn drive<T>(io: T, closed: Rc<Cell<bool>>) -> Result<SendRequest<Bytes>, ErrorKind>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .handshake::<T, Bytes>(io)
        .await
        .map_err(|e| from_h2(&e))?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!("http/2 connection ended: {e}");
        }
        closed.set(true);
    });
    Ok(send)
}

/// One request on its own stream. `written_ns` is when h2 accepted the request (its connection
/// task writes it out at its next turn); `first_byte_ns` is when the response headers arrived.
pub async fn exchange(
    conn: &H2Conn,
    req: &H2Request,
    progress: &mut Progress,
) -> Result<Response, ErrorKind> {
    // Waits while the server's stream limit is reached.
    let mut send = conn.send.clone().ready().await.map_err(|e| from_h2(&e))?;
    let end_of_stream = req.body.is_empty();
    let (response, mut body_tx) = send
        .send_request(req.build(), end_of_stream)
        .map_err(|e| from_h2(&e))?;
    if !end_of_stream {
        body_tx
            .send_data(req.body.clone(), true)
            .map_err(|e| from_h2(&e))?;
    }
    progress.written_ns = Some(mono_ns());
    let response = response.await.map_err(|e| from_h2(&e))?;
    progress.first_byte_ns = Some(mono_ns());
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = 0u64;
    if !req.head {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| from_h2(&e))?;
            bytes += chunk.len() as u64;
            // Hand the window back at once: the body is counted, not kept.
            let _ = body.flow_control().release_capacity(chunk.len());
        }
    }
    Ok(Response {
        status,
        body_bytes: bytes,
        end_ns: mono_ns(),
        reusable: true,
    })
}

/// I/O errors keep their HTTP/1.1 names; resets, GOAWAY and protocol errors are "http/2 error".
pub fn from_h2(e: &h2::Error) -> ErrorKind {
    match e.get_io() {
        Some(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ErrorKind::ClosedBeforeResponse
        }
        Some(io) => ErrorKind::from_io(io),
        None => {
            tracing::debug!("http/2: {e}");
            ErrorKind::Http2
        }
    }
}
