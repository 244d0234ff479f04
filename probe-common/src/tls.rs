//! TLS handshakes told apart from requests by the plaintext record headers alone.
//!
//! Every TLS record starts with five plaintext bytes: content type, version, length. Following
//! them through each direction of a stream tells handshake records from application data
//! without decrypting anything and without hooking the TLS library (proxies link BoringSSL,
//! rustls or OpenSSL statically). What the headers cannot say, the shape of the handshake does:
//! - TLS 1.2 sends its whole handshake as content types 20 and 22; 23 is application data.
//! - TLS 1.3 encrypts everything after the ServerHello under the outer type 23. The client's
//!   handshake ends with its Finished record, whose length is fixed by the cipher suite the
//!   (plaintext) ServerHello chose: 32 or 48 bytes of MAC, the 4-byte message header, the
//!   inner content type and a 16-byte AEAD tag, so 53 or 69 bytes. A client with a certificate
//!   (mutual TLS) sends its Certificate and CertificateVerify records before it.
//! - TLS 1.3 servers send NewSessionTicket records right after the client's Finished, before
//!   any response: the server's first transmission after the handshake is its tickets, not a
//!   response.
//!
//! What this cannot follow (a stream seen from its middle whose records do not start a
//! segment, a gap in the sequence numbers, a record header that is not TLS, a HelloRetryRequest,
//! a client that packs Certificate, CertificateVerify and Finished into one record) marks the
//! connection lost: counted, and none of its exchanges are reported.

use core::mem::size_of;

pub const TYPE_CHANGE_CIPHER_SPEC: u8 = 20;
pub const TYPE_ALERT: u8 = 21;
pub const TYPE_HANDSHAKE: u8 = 22;
pub const TYPE_APPLICATION_DATA: u8 = 23;

/// Handshake message types read from plaintext records.
pub const HANDSHAKE_CLIENT_HELLO: u8 = 1;
pub const HANDSHAKE_SERVER_HELLO: u8 = 2;

pub const RECORD_HEADER: u32 = 5;
/// A TLS 1.3 alert's record body: alert (2), inner content type (1), AEAD tag (16).
pub const ENCRYPTED_ALERT_LEN: u32 = 19;
/// The largest record body any version allows (TLS 1.2's ciphertext bound, 2^14 + 2048).
pub const MAX_RECORD: u32 = 16384 + 2048;

/// Client to server (the requests' direction) and server to client: indexes of
/// [`TlsConn::dir`].
pub const C2S: usize = 0;
pub const S2C: usize = 1;

/// What a record carries, as far as the exchanges are concerned.
pub const CLASS_NONE: u8 = 0;
pub const CLASS_HANDSHAKE: u8 = 1;
pub const CLASS_APP: u8 = 2;
/// TLS 1.3 NewSessionTicket records (and anything else the server sends in the same
/// transmission right after the handshake).
pub const CLASS_TICKET: u8 = 3;
/// Alerts, and change-cipher-spec after the handshake.
pub const CLASS_OTHER: u8 = 4;

/// Where the handshake is.
pub const HS_CLIENT_HELLO: u8 = 1;
pub const HS_SERVER_FLIGHT: u8 = 2;
pub const HS_CLIENT_FINISH: u8 = 3;
/// TLS 1.2 full handshake: the server's change-cipher-spec and Finished.
pub const HS_SERVER_FINISH: u8 = 4;
/// TLS 1.3: handshake done; the server's next transmission is its tickets.
pub const HS_TICKETS: u8 = 5;
pub const HS_DONE: u8 = 6;
pub const HS_LOST: u8 = 7;

/// Bits of [`TlsConn::flags`] and of `Exchange::tls`.
pub const TLS_ON: u8 = 1;
pub const TLS_13: u8 = 2;
pub const TLS_RESUMED: u8 = 4;
/// The client sent handshake records besides its Finished (TLS 1.3 client certificate).
pub const TLS_CLIENT_AUTH: u8 = 8;
/// First seen after its handshake (the probe attached to a running connection).
pub const TLS_MIDSTREAM: u8 = 16;
/// The stream could not be followed: its exchanges are not reported.
pub const TLS_LOST: u8 = 32;

/// One direction of a TLS stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Stream {
    /// TCP sequence number of the next byte expected.
    pub next_seq: u32,
    /// Bytes of the current record's body still to come.
    pub left: u32,
    /// The first bytes of a record header split across segments, big-endian in the low bytes.
    pub partial: u32,
    /// How many header bytes `partial` holds (0..=4).
    pub have: u8,
    /// The current record's `CLASS_*`.
    pub class: u8,
    /// 1 once the first segment of this direction was seen.
    pub started: u8,
    /// Explicit so the struct has no implicit padding.
    pub _pad: u8,
}
const _: () = assert!(size_of::<Stream>() == 16);

/// What the ServerHello says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerHello {
    /// `supported_versions` selected TLS 1.3.
    pub tls13: bool,
    /// `pre_shared_key` present: a TLS 1.3 resumption.
    pub psk: bool,
    /// The cipher suite chosen.
    pub suite: u16,
}

impl ServerHello {
    /// Length of a TLS 1.3 Finished record under this suite: MAC, message header, inner
    /// content type, AEAD tag.
    pub const fn finished_len(&self) -> u32 {
        let mac = if self.suite == 0x1302 { 48 } else { 32 };
        mac + 4 + 1 + 16
    }
}

/// Per-connection TLS state, kept by socket cookie beside the socket's exchange.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsConn {
    pub dir: [Stream; 2],
    /// First ClientHello byte; last handshake byte of the client's.
    pub client_first_ns: u64,
    pub client_last_ns: u64,
    /// First and last byte of the server's handshake records.
    pub server_first_ns: u64,
    pub server_last_ns: u64,
    /// Handshake bytes (record headers included) each way.
    pub client_bytes: u32,
    pub server_bytes: u32,
    /// Sequence number of the server segment that carried the tickets.
    pub ticket_seg: u32,
    /// `TLS 1.3` Finished record length (from the suite), 0 before the ServerHello.
    pub finished_len: u32,
    /// TLS 1.3: sequence number just past the client's first record after the server's
    /// flight, when that record was not a Finished (see `client_finish`).
    pub first_end: u32,
    pub state: u8,
    pub flags: u8,
    /// TLS 1.3 client records after the server's flight, Finished included.
    pub client_records: u8,
    pub tickets: u8,
    /// 1 when the handshake has just completed and is to be reported.
    pub complete: u8,
    /// Explicit so the struct has no implicit padding.
    pub _pad: [u8; 7],
}
const _: () = assert!(size_of::<TlsConn>() == 96);

/// Where a record is: the first sequence number of the segment it starts in, and of its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    pub seg: u32,
    pub body: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), plain data without implicit padding (asserted above).
    unsafe impl aya::Pod for super::Stream {}
    unsafe impl aya::Pod for super::TlsConn {}
}

/// Whether the first bytes of a connection's first payload are a ClientHello record.
pub fn is_client_hello(b: &[u8; 6]) -> bool {
    b[0] == TYPE_HANDSHAKE
        && b[1] == 3
        && b[2] <= 4
        && b[5] == HANDSHAKE_CLIENT_HELLO
        && (u16::from_be_bytes([b[3], b[4]]) as u32) <= MAX_RECORD
}

/// Whether a first payload seen in the middle of a connection starts with a TLS application
/// data record.
pub fn is_app_record(b: &[u8; 6]) -> bool {
    b[0] == TYPE_APPLICATION_DATA
        && b[1] == 3
        && (1..=4).contains(&b[2])
        && (u16::from_be_bytes([b[3], b[4]]) as u32) <= MAX_RECORD
}

/// A record header's type and body length, if it is one.
pub fn header(h: u64) -> Option<(u8, u32)> {
    let ty = (h >> 32) as u8;
    let major = (h >> 24) as u8;
    let len = (h & 0xffff) as u32;
    if (TYPE_CHANGE_CIPHER_SPEC..=TYPE_APPLICATION_DATA).contains(&ty)
        && major == 3
        && len <= MAX_RECORD
    {
        Some((ty, len))
    } else {
        None
    }
}

impl TlsConn {
    /// A connection whose first payload was a ClientHello (`C2S`'s first segment at `seq`).
    pub fn at_client_hello() -> Self {
        Self {
            state: HS_CLIENT_HELLO,
            flags: TLS_ON,
            ..Self::default()
        }
    }

    /// A connection first seen after its handshake, at an application data record.
    pub fn midstream() -> Self {
        Self {
            state: HS_DONE,
            flags: TLS_ON | TLS_MIDSTREAM,
            ..Self::default()
        }
    }

    pub fn lost(&mut self) {
        self.state = HS_LOST;
        self.flags |= TLS_LOST;
    }

    pub fn is_lost(&self) -> bool {
        self.state == HS_LOST
    }

    /// A record header in direction `dir`, at `at`, at time `t`; `hello` is the ServerHello
    /// when the record is the server's first.
    /// Returns the record's `CLASS_*` (`CLASS_NONE` when the stream is now lost).
    pub fn on_record(
        &mut self,
        dir: usize,
        ty: u8,
        len: u32,
        at: At,
        t: u64,
        hello: Option<ServerHello>,
    ) -> u8 {
        let class = self.classify(dir, ty, len, at, hello);
        if class == CLASS_NONE {
            self.lost();
        } else if class == CLASS_HANDSHAKE {
            self.on_handshake_bytes(dir, RECORD_HEADER, t);
        }
        class
    }

    /// Handshake bytes passing in direction `dir` at `t`.
    pub fn on_handshake_bytes(&mut self, dir: usize, n: u32, t: u64) {
        if dir == C2S {
            if self.client_first_ns == 0 {
                self.client_first_ns = t;
            }
            self.client_last_ns = t;
            self.client_bytes = self.client_bytes.saturating_add(n);
        } else {
            if self.server_first_ns == 0 {
                self.server_first_ns = t;
            }
            self.server_last_ns = t;
            self.server_bytes = self.server_bytes.saturating_add(n);
        }
    }

    fn tls13(&self) -> bool {
        self.flags & TLS_13 != 0
    }

    fn done(&mut self, next: u8) {
        self.state = next;
        self.complete = 1;
    }

    fn classify(&mut self, dir: usize, ty: u8, len: u32, at: At, hello: Option<ServerHello>) -> u8 {
        let seg = at.seg;
        // TLS 1.3 encrypts alerts too: a close_notify is an application data record of 19
        // bytes (the 2-byte alert, the inner type, a 16-byte AEAD tag), sent after the last
        // response. Counted, it would stretch the response to the connection's close.
        if self.tls13()
            && ty == TYPE_APPLICATION_DATA
            && len == ENCRYPTED_ALERT_LEN
            && (self.state == HS_DONE || self.state == HS_TICKETS)
        {
            return CLASS_OTHER;
        }
        if ty == TYPE_ALERT {
            // A failed handshake's alert or a close_notify: never a request.
            return if self.state == HS_DONE || self.state == HS_TICKETS {
                CLASS_OTHER
            } else {
                CLASS_NONE
            };
        }
        match self.state {
            HS_CLIENT_HELLO => match (dir, ty, hello) {
                (C2S, TYPE_HANDSHAKE, _) => CLASS_HANDSHAKE,
                (S2C, TYPE_HANDSHAKE, Some(h)) => {
                    if h.tls13 {
                        self.flags |= TLS_13;
                        self.finished_len = h.finished_len();
                        if h.psk {
                            self.flags |= TLS_RESUMED;
                        }
                    }
                    self.state = HS_SERVER_FLIGHT;
                    CLASS_HANDSHAKE
                }
                _ => CLASS_NONE,
            },
            HS_SERVER_FLIGHT if dir == S2C => {
                if self.tls13() || ty != TYPE_APPLICATION_DATA {
                    // TLS 1.2 resumes with change-cipher-spec and Finished in the server's first
                    // flight; a full handshake sends them in its second.
                    if !self.tls13() && ty == TYPE_CHANGE_CIPHER_SPEC {
                        self.flags |= TLS_RESUMED;
                    }
                    CLASS_HANDSHAKE
                } else {
                    CLASS_NONE
                }
            }
            // TLS 1.3: the server answering the client's flight (its tickets) ends that flight.
            HS_CLIENT_FINISH if dir == S2C && self.tls13() && self.client_records > 0 => {
                self.done(HS_TICKETS);
                self.after_handshake(dir, ty, seg)
            }
            HS_SERVER_FLIGHT | HS_CLIENT_FINISH => {
                self.state = HS_CLIENT_FINISH;
                self.client_finish(dir, ty, len, at)
            }
            HS_SERVER_FINISH => match (dir, ty) {
                (S2C, TYPE_HANDSHAKE | TYPE_CHANGE_CIPHER_SPEC) => CLASS_HANDSHAKE,
                (_, TYPE_APPLICATION_DATA) => {
                    self.done(HS_DONE);
                    CLASS_APP
                }
                _ => CLASS_NONE,
            },
            HS_TICKETS => self.after_handshake(dir, ty, seg),
            HS_DONE => match ty {
                TYPE_APPLICATION_DATA => CLASS_APP,
                // TLS 1.2 renegotiation: handshake, not a request.
                TYPE_HANDSHAKE => CLASS_HANDSHAKE,
                _ => CLASS_OTHER,
            },
            _ => CLASS_NONE,
        }
    }

    /// The client's flight after the server's first one, and (TLS 1.2) what follows it.
    /// TLS 1.3 after the client's flight: the server's first transmission is its tickets.
    fn after_handshake(&mut self, dir: usize, ty: u8, seg: u32) -> u8 {
        match (dir, ty) {
            (C2S, TYPE_APPLICATION_DATA) => CLASS_APP,
            (S2C, TYPE_APPLICATION_DATA) if self.tickets == 0 || seg == self.ticket_seg => {
                self.tickets = self.tickets.saturating_add(1);
                self.ticket_seg = seg;
                CLASS_TICKET
            }
            (S2C, TYPE_APPLICATION_DATA) => {
                self.state = HS_DONE;
                CLASS_APP
            }
            (_, TYPE_CHANGE_CIPHER_SPEC) => CLASS_OTHER,
            _ => CLASS_NONE,
        }
    }

    /// TLS 1.3's client flight ends with its Finished record, whose length the suite fixes. A
    /// client with a certificate sends Certificate and CertificateVerify first: as records of
    /// their own in the same write (OpenSSL), or packed with the Finished into one record
    /// (rustls 0.23, BoringSSL). So after a first record that is not a Finished, the records
    /// that start in the segment where it ends belong to the flight, and the first record of
    /// a later segment is a request: the packed flight was the whole of it.
    fn client_finish(&mut self, dir: usize, ty: u8, len: u32, at: At) -> u8 {
        if self.tls13() {
            match (dir, ty) {
                (C2S, TYPE_CHANGE_CIPHER_SPEC) => CLASS_HANDSHAKE,
                (C2S, TYPE_APPLICATION_DATA) => {
                    self.client_records = self.client_records.saturating_add(1);
                    if len == self.finished_len {
                        self.done(HS_TICKETS);
                        CLASS_HANDSHAKE
                    } else if self.client_records == 1 {
                        self.flags |= TLS_CLIENT_AUTH;
                        self.first_end = at.body.wrapping_add(len);
                        CLASS_HANDSHAKE
                    } else if self.client_records <= 3
                        && (self.first_end.wrapping_sub(at.seg) as i32) > 0
                    {
                        CLASS_HANDSHAKE
                    } else {
                        self.done(HS_TICKETS);
                        CLASS_APP
                    }
                }
                _ => CLASS_NONE,
            }
        } else {
            match (dir, ty) {
                (_, TYPE_HANDSHAKE | TYPE_CHANGE_CIPHER_SPEC) => {
                    if dir == S2C {
                        self.state = HS_SERVER_FINISH;
                    }
                    CLASS_HANDSHAKE
                }
                // A resumed TLS 1.2 handshake ends with the client's Finished: its next record
                // is a request.
                (C2S, TYPE_APPLICATION_DATA) if self.flags & TLS_RESUMED != 0 => {
                    self.done(HS_DONE);
                    CLASS_APP
                }
                _ => CLASS_NONE,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO13: ServerHello = ServerHello {
        tls13: true,
        psk: false,
        suite: 0x1301,
    };

    struct Flow {
        c: TlsConn,
        t: u64,
        seg: u32,
    }

    impl Flow {
        fn new() -> Self {
            let mut c = TlsConn::at_client_hello();
            let at = At { seg: 1, body: 6 };
            assert_eq!(
                c.on_record(C2S, TYPE_HANDSHAKE, 300, at, 1, None),
                CLASS_HANDSHAKE
            );
            Self { c, t: 1, seg: 1 }
        }

        /// One transmission: records `(type, len)` in one segment.
        fn send(
            &mut self,
            dir: usize,
            records: &[(u8, u32)],
            hello: Option<ServerHello>,
        ) -> [u8; 8] {
            self.t += 10;
            self.seg += 1000;
            let mut out = [CLASS_NONE; 8];
            let mut body = self.seg;
            for (i, &(ty, len)) in records.iter().enumerate() {
                let h = if i == 0 { hello } else { None };
                body += RECORD_HEADER;
                let at = At {
                    seg: self.seg,
                    body,
                };
                out[i] = self.c.on_record(dir, ty, len, at, self.t, h);
                body += len;
            }
            out
        }
    }

    const H: u8 = CLASS_HANDSHAKE;
    const A: u8 = CLASS_APP;
    const T: u8 = CLASS_TICKET;
    const N: u8 = CLASS_NONE;

    #[test]
    fn tls13_full_handshake_then_tickets_then_requests() {
        let mut f = Flow::new();
        let sf = f.send(
            S2C,
            &[(22, 90), (20, 1), (23, 25), (23, 1200), (23, 100), (23, 53)],
            Some(HELLO13),
        );
        assert_eq!(sf[..6], [H, H, H, H, H, H]);
        assert_eq!(f.c.complete, 0);
        let cf = f.send(C2S, &[(20, 1), (23, 53)], None);
        assert_eq!(cf[..2], [H, H]);
        assert_eq!(f.c.complete, 1);
        assert_eq!(f.c.state, HS_TICKETS);
        // The request arrives before the server has sent its tickets.
        assert_eq!(f.send(C2S, &[(23, 120)], None)[0], A);
        assert_eq!(f.send(S2C, &[(23, 200), (23, 200)], None)[..2], [T, T]);
        assert_eq!(f.send(S2C, &[(23, 400)], None)[0], A);
        assert_eq!(f.send(C2S, &[(23, 120)], None)[0], A);
        assert_eq!(f.send(S2C, &[(23, 400)], None)[0], A);
        assert_eq!(f.send(C2S, &[(21, 19)], None)[0], CLASS_OTHER);
        // close_notify, encrypted: the outer type says application data.
        assert_eq!(
            f.send(S2C, &[(23, 400), (23, 19)], None)[..2],
            [A, CLASS_OTHER]
        );
        assert_eq!(f.send(C2S, &[(23, 19)], None)[0], CLASS_OTHER);
        assert_eq!(f.c.flags & (TLS_13 | TLS_RESUMED | TLS_LOST), TLS_13);
        assert_eq!(f.c.tickets, 2);
    }

    #[test]
    fn tls13_client_certificate_and_resumption() {
        let mut f = Flow::new();
        let hello = ServerHello {
            tls13: true,
            psk: true,
            suite: 0x1302,
        };
        f.send(S2C, &[(22, 120), (23, 30), (23, 69)], Some(hello));
        let cf = f.send(C2S, &[(23, 800), (23, 96), (23, 69), (23, 150)], None);
        assert_eq!(cf[..4], [H, H, H, A]);
        assert_eq!(
            f.c.flags & (TLS_13 | TLS_RESUMED | TLS_CLIENT_AUTH),
            TLS_13 | TLS_RESUMED | TLS_CLIENT_AUTH
        );
    }

    #[test]
    fn a_packed_client_flight_ends_at_its_segment() {
        // rustls 0.23 packs Certificate, CertificateVerify and Finished into one record; the
        // request follows in a segment of its own.
        let mut f = Flow::new();
        f.send(S2C, &[(22, 120), (23, 1500)], Some(HELLO13));
        assert_eq!(f.send(C2S, &[(23, 900)], None)[0], H);
        assert_eq!(f.send(C2S, &[(23, 150)], None)[0], A);
        assert_eq!(f.c.complete, 1);
        assert_eq!(f.send(S2C, &[(23, 200)], None)[0], T);
        assert_eq!(f.send(S2C, &[(23, 400)], None)[0], A);
        assert_eq!(f.c.flags & TLS_CLIENT_AUTH, TLS_CLIENT_AUTH);

        // The server's tickets can come before the request: they end the client's flight.
        let mut f = Flow::new();
        f.send(S2C, &[(22, 120), (23, 1500)], Some(HELLO13));
        assert_eq!(f.send(C2S, &[(23, 900)], None)[0], H);
        assert_eq!(f.send(S2C, &[(23, 200), (23, 200)], None)[..2], [T, T]);
        assert_eq!(f.send(C2S, &[(23, 150)], None)[0], A);
        assert_eq!(f.send(S2C, &[(23, 400)], None)[0], A);
        assert!(!f.c.is_lost());
    }

    #[test]
    fn a_client_flight_in_separate_records_may_span_segments() {
        let mut f = Flow::new();
        f.send(S2C, &[(22, 120), (23, 1500)], Some(HELLO13));
        // The certificate's record ends in the next segment, with CertificateVerify and
        // Finished after it.
        assert_eq!(f.send(C2S, &[(23, 2000)], None)[0], H);
        f.seg += 1000;
        let end_first = f.c.first_end;
        let at = |body| At {
            seg: end_first - 100,
            body,
        };
        assert_eq!(f.c.on_record(C2S, 23, 96, at(end_first + 5), 9, None), H);
        assert_eq!(f.c.on_record(C2S, 23, 53, at(end_first + 106), 9, None), H);
        assert_eq!(f.c.complete, 1);
    }

    #[test]
    fn tls12_full_and_resumed() {
        let hello12 = ServerHello {
            tls13: false,
            psk: false,
            suite: 0xc02f,
        };
        let mut f = Flow::new();
        f.send(
            S2C,
            &[(22, 80), (22, 1800), (22, 300), (22, 4)],
            Some(hello12),
        );
        f.send(C2S, &[(22, 70), (20, 1), (22, 40)], None);
        assert_eq!(f.c.state, HS_CLIENT_FINISH);
        f.send(S2C, &[(22, 200), (20, 1), (22, 40)], None);
        assert_eq!(f.c.state, HS_SERVER_FINISH);
        assert_eq!(f.send(C2S, &[(23, 120)], None)[0], A);
        assert_eq!(f.c.complete, 1);
        assert_eq!(f.c.flags & TLS_RESUMED, 0);

        let mut r = Flow::new();
        r.send(S2C, &[(22, 80), (20, 1), (22, 40)], Some(hello12));
        assert_eq!(
            r.send(C2S, &[(20, 1), (22, 40), (23, 120)], None)[..3],
            [H, H, A]
        );
        assert_eq!(r.c.flags & TLS_RESUMED, TLS_RESUMED);
        assert_eq!(r.send(S2C, &[(23, 400)], None)[0], A);
    }

    #[test]
    fn what_is_not_tls_is_lost() {
        let mut f = Flow::new();
        // The server answers with something else than a ServerHello.
        assert_eq!(f.send(S2C, &[(23, 10)], None)[0], N);
        assert!(f.c.is_lost());
        assert_eq!(
            header(0x48_54_54_50_2f),
            None,
            "\"HTTP/\" is not a record header"
        );
        assert_eq!(header(0x17_03_03_00_35), Some((23, 53)));
        assert!(is_client_hello(&[22, 3, 1, 1, 0, 1]));
        assert!(!is_client_hello(b"GET / "));
        assert!(is_app_record(&[23, 3, 3, 0, 53, 0]));
    }
}
