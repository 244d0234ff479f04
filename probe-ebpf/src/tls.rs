//! Following a TLS connection's records through its segments, so that the exchange rule counts
//! application data only (see `probe_common::tls` for what the records say and what cannot be
//! followed). Only connections whose first payload is TLS pay for this: one six-byte load
//! decides it at the connection's first payload, and plaintext connections never come here
//! again.

use aya_ebpf::{macros::map, maps::LruHashMap, programs::sk_buff::SkBuff};
use probe_common::{
    conn::FlowKey,
    stats,
    tls::{
        At, C2S, CLASS_APP, CLASS_HANDSHAKE, CLASS_NONE, HANDSHAKE_SERVER_HELLO, HS_CLIENT_HELLO,
        RECORD_HEADER, S2C, ServerHello, TYPE_HANDSHAKE, TlsConn, header, is_app_record,
        is_client_hello,
    },
};

use crate::{headers::Tcp, maps::count};

/// TLS state by socket cookie; sized by `--max-sockets`. An evicted entry loses its connection
/// (counted in `tls_lost`), never mislabels it.
#[map]
pub static TLS: LruHashMap<u64, TlsConn> = LruHashMap::with_max_entries(65536, 0);

/// TLS state of a ClientHello that reached a listener (see `cgroup_skb::park_early_request`),
/// by flow, until the connection's own packets carry it on.
#[map]
pub static TLS_EARLY: LruHashMap<FlowKey, TlsConn> = LruHashMap::with_max_entries(4096, 0);

/// Records followed in one segment at most: a 64 KiB TSO segment of full records holds four,
/// a TLS 1.3 server's first flight six.
const MAX_RECORDS: u32 = 8;

/// Non-zero: follow TLS connections (`hopprobe run --tls`). A read-only global the verifier
/// reads as a constant: when off it never walks the TLS code, whose bounded loops it would
/// otherwise unroll (see docs/tls.md, "Cost").
#[unsafe(no_mangle)]
pub static TLS_FOLLOW: u8 = 0;

/// Whether TLS connections are followed in this run.
#[inline(always)]
pub fn enabled() -> bool {
    // SAFETY: a plain read of a global.
    unsafe { core::ptr::read_volatile(&TLS_FOLLOW) != 0 }
}
/// ServerHello extensions read at most (TLS 1.3 sends two or three).
const MAX_EXTENSIONS: u32 = 8;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// The ServerHello random that marks a HelloRetryRequest starts with these bytes (RFC 8446
/// 4.1.3).
const HRR_RANDOM: u64 = 0xcf21_ad74_e59a_6111;

/// Whether a new connection's first payload (in the requests' direction) is TLS; if so its
/// state is written to `out`.
pub fn detect(skb: &SkBuff, tcp: &Tcp, out: &mut TlsConn) -> bool {
    if !enabled() || tcp.payload < 6 {
        return false;
    }
    let Ok(b) = skb.load::<[u8; 6]>(tcp.payload_off as usize) else {
        return false;
    };
    *out = if is_client_hello(&b) {
        TlsConn::at_client_hello()
    } else if is_app_record(&b) {
        TlsConn::midstream()
    } else {
        return false;
    };
    count(stats::TLS_CONNECTIONS);
    true
}

pub fn lose(c: &mut TlsConn) {
    if !c.is_lost() {
        c.lost();
        count(stats::TLS_LOST);
    }
}

/// Follows the records of one segment travelling in direction `dir` (`C2S`, `S2C`) at `t`.
/// Returns how many of its bytes belong to application data records: the bytes the exchange
/// rule counts. A stream that cannot be followed is marked lost and counts nothing more.
#[inline(never)]
pub fn walk(skb: &SkBuff, tcp: &Tcp, dir: usize, c: &mut TlsConn, t: u64) -> u32 {
    if !enabled() || c.is_lost() || tcp.payload == 0 {
        return 0;
    }
    let dir = dir & 1;
    let seq = u32::from_be(tcp.seq_be);
    let mut s = c.dir[dir];
    if s.started == 0 {
        s.started = 1;
        s.next_seq = seq;
    }
    let behind = s.next_seq.wrapping_sub(seq);
    if (behind as i32) < 0 {
        // Bytes are missing before this segment (reordered, or lost before this point).
        lose(c);
        return 0;
    }
    if behind >= tcp.payload {
        // A retransmission of bytes already followed.
        return 0;
    }
    s.next_seq = seq.wrapping_add(tcp.payload);
    let end = tcp.payload;
    let base = tcp.payload_off;
    let mut o = behind;
    let mut app = 0u32;
    for _ in 0..MAX_RECORDS {
        if o >= end {
            break;
        }
        if s.left > 0 {
            let n = if s.left < end - o { s.left } else { end - o };
            if s.class == CLASS_APP {
                app += n;
            } else if s.class == CLASS_HANDSHAKE {
                c.on_handshake_bytes(dir, n, t);
            }
            s.left -= n;
            o += n;
            continue;
        }
        let need = RECORD_HEADER - s.have as u32;
        let avail = end - o;
        if avail < need {
            // A record header split across segments: keep its first bytes.
            if s.have != 0 {
                lose(c);
                return 0;
            }
            match load_be(skb, base + o, avail) {
                Some(v) => {
                    s.partial = v;
                    s.have = avail as u8;
                }
                None => {
                    lose(c);
                    return 0;
                }
            }
            o = end;
            break;
        }
        let h = if s.have == 0 {
            skb.load::<[u8; 5]>((base + o) as usize)
                .ok()
                .map(|b| u64::from_be_bytes([0, 0, 0, b[0], b[1], b[2], b[3], b[4]]))
        } else {
            load_be(skb, base + o, need).map(|v| ((s.partial as u64) << (8 * need)) | v as u64)
        };
        o += need;
        s.have = 0;
        s.partial = 0;
        let Some((ty, len)) = h.and_then(header) else {
            lose(c);
            return 0;
        };
        let hello = if dir == S2C && c.state == HS_CLIENT_HELLO && ty == TYPE_HANDSHAKE {
            match server_hello(skb, base + o) {
                Some(h) => Some(h),
                None => {
                    lose(c);
                    return 0;
                }
            }
        } else {
            None
        };
        let at = At {
            seg: seq,
            body: seq.wrapping_add(o),
        };
        let class = c.on_record(dir, ty, len, at, t, hello);
        if class == CLASS_NONE {
            count(stats::TLS_LOST);
            return 0;
        }
        if class == CLASS_APP {
            // A request or response starts with its record's header.
            app += need;
        }
        s.class = class;
        s.left = len;
    }
    if o < end {
        // More records in one segment than followed.
        lose(c);
        return 0;
    }
    if let Some(slot) = c.dir.get_mut(dir) {
        *slot = s;
    }
    app
}

/// `n` (1..=4) bytes at `off`, big-endian.
fn load_be(skb: &SkBuff, off: u32, n: u32) -> Option<u32> {
    let mut v = 0u32;
    for i in 0..4 {
        if i < n {
            let b = skb.load::<u8>((off + i) as usize).ok()?;
            v = (v << 8) | b as u32;
        }
    }
    Some(v)
}

/// The ServerHello whose handshake message starts at `body`: the TLS version and cipher suite
/// it chose, and whether it resumed a session. None when it is something else (a
/// HelloRetryRequest included).
fn server_hello(skb: &SkBuff, body: u32) -> Option<ServerHello> {
    // Message type, length (3), legacy version (2), random (32), session id length: read in
    // small pieces, the programs' stack being nearly full.
    let ty = skb.load::<u8>(body as usize).ok()?;
    let random = u64::from_be(skb.load::<u64>((body + 6) as usize).ok()?);
    let session_id = skb.load::<u8>((body + 38) as usize).ok()?;
    if ty != HANDSHAKE_SERVER_HELLO || random == HRR_RANDOM || session_id > 32 {
        return None;
    }
    let at = body + 39 + session_id as u32;
    // Cipher suite (2), compression (1), extensions length (2).
    let suite = u16::from_be(skb.load::<u16>(at as usize).ok()?);
    let mut e = at + 5;
    let end = e + u16::from_be(skb.load::<u16>((at + 3) as usize).ok()?) as u32;
    let mut hello = ServerHello {
        tls13: false,
        psk: false,
        suite,
    };
    for _ in 0..MAX_EXTENSIONS {
        if e + 4 > end {
            break;
        }
        // Type (2), length (2).
        let x = u32::from_be(skb.load::<u32>(e as usize).ok()?);
        let ty = (x >> 16) as u16;
        if ty == EXT_SUPPORTED_VERSIONS {
            hello.tls13 = u16::from_be(skb.load::<u16>((e + 4) as usize).ok()?) == 0x0304;
        } else if ty == EXT_PRE_SHARED_KEY {
            hello.psk = true;
        }
        e += 4 + (x & 0xffff);
    }
    Some(hello)
}

/// The exchange-rule direction index of a segment: requests travel `C2S`.
pub fn index(request_dir: bool) -> usize {
    if request_dir { C2S } else { S2C }
}
