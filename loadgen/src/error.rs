//! The names a failed request is counted under in the error distribution.

use std::io;

/// Every way a request can fail. The names are what users see, so they say what happened
/// rather than which call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    Dns,
    ConnectionRefused,
    ConnectTimeout,
    Connect,
    TlsCertificate,
    TlsHandshake,
    NeverAnswered,
    Timeout,
    ConnectionReset,
    ClosedBeforeResponse,
    MalformedResponse,
    TruncatedResponse,
    AbortedDeadline,
    InFlightLimit,
    Http2,
    Io,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::Dns,
        ErrorKind::ConnectionRefused,
        ErrorKind::ConnectTimeout,
        ErrorKind::Connect,
        ErrorKind::TlsCertificate,
        ErrorKind::TlsHandshake,
        ErrorKind::NeverAnswered,
        ErrorKind::Timeout,
        ErrorKind::ConnectionReset,
        ErrorKind::ClosedBeforeResponse,
        ErrorKind::MalformedResponse,
        ErrorKind::TruncatedResponse,
        ErrorKind::AbortedDeadline,
        ErrorKind::InFlightLimit,
        ErrorKind::Http2,
        ErrorKind::Io,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Dns => "dns lookup failed",
            ErrorKind::ConnectionRefused => "connection refused",
            ErrorKind::ConnectTimeout => "connect timeout",
            ErrorKind::Connect => "connect failed",
            ErrorKind::TlsCertificate => "tls certificate rejected",
            ErrorKind::TlsHandshake => "tls handshake failed",
            ErrorKind::NeverAnswered => "timeout: server never answered",
            ErrorKind::Timeout => "timeout: response incomplete",
            ErrorKind::ConnectionReset => "connection reset",
            ErrorKind::ClosedBeforeResponse => "connection closed before response",
            ErrorKind::MalformedResponse => "malformed response",
            ErrorKind::TruncatedResponse => "truncated response",
            ErrorKind::AbortedDeadline => "aborted due to deadline",
            ErrorKind::InFlightLimit => "in-flight limit reached",
            ErrorKind::Http2 => "http/2 error",
            ErrorKind::Io => "i/o error",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// An I/O error while reading or writing an established connection.
    pub fn from_io(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => ErrorKind::ConnectionReset,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Io,
        }
    }

    pub fn from_connect(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::ConnectionRefused,
            io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
            io::ErrorKind::ConnectionReset => ErrorKind::ConnectionReset,
            _ => ErrorKind::Connect,
        }
    }

    pub fn from_tls(e: &io::Error) -> ErrorKind {
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        match inner {
            Some(rustls::Error::InvalidCertificate(_)) => ErrorKind::TlsCertificate,
            _ if e.kind() == io::ErrorKind::ConnectionReset => ErrorKind::ConnectionReset,
            _ => ErrorKind::TlsHandshake,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_indices_dense() {
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
