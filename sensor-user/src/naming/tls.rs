//! The server name in a TLS ClientHello (SNI), parsed with tls-parser from
//! the first bytes of a connection, which may arrive in several pieces.

use tls_parser::{parse_tls_extensions, parse_tls_plaintext, SNIType, TlsExtension, TlsMessage, TlsMessageHandshake};

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello has started but is not complete yet.
    Incomplete,
    /// A complete ClientHello naming this server.
    Sni(String),
    /// A complete ClientHello without a server name (IP literal, ESNI/ECH
    /// outer name absent, or a deliberately nameless client).
    NoSni,
    /// Not a parseable ClientHello: counted and dropped.
    Malformed,
}

/// Handshake records joined at most (a ClientHello fits in one normally;
/// splitting it over many tiny records is an evasion, bounded here).
const MAX_RECORDS: usize = 32;

/// How the start of a stream's handshake records stand.
enum Records {
    /// One record holds the whole first handshake message: parse as is.
    Whole,
    /// The message spans several records: here it is, in one record.
    Joined(Vec<u8>),
    Incomplete,
    Malformed,
}

/// A ClientHello fragmented over several handshake records (RFC 8446 §5.1
/// allows it; some clients do it, and so do evaders), joined into one record
/// so the parser sees the whole message.
fn join_records(bytes: &[u8]) -> Records {
    let header = |at: usize| bytes.get(at..at + 5).map(|h| (h[0], [h[1], h[2]], u16::from_be_bytes([h[3], h[4]]) as usize));
    let version = match header(0) {
        Some((0x16, version, _)) => version,
        Some(_) => return Records::Malformed,
        None => return Records::Incomplete,
    };
    let mut msg: Vec<u8> = Vec::new();
    let mut at = 0;
    for record in 0..MAX_RECORDS {
        let Some((kind, _, len)) = header(at) else { return Records::Incomplete };
        if kind != 0x16 || len == 0 {
            return Records::Malformed;
        }
        let Some(fragment) = bytes.get(at + 5..at + 5 + len) else { return Records::Incomplete };
        msg.extend_from_slice(fragment);
        at += 5 + len;
        // The handshake header (type, 24-bit length) may itself be split.
        let Some(h) = msg.get(..4) else { continue };
        let want = 4 + ((h[1] as usize) << 16 | (h[2] as usize) << 8 | h[3] as usize);
        if msg.len() < want {
            if want > u16::MAX as usize {
                return Records::Malformed;
            }
            continue;
        }
        if record == 0 {
            return Records::Whole;
        }
        msg.truncate(want);
        let mut joined = vec![0x16, version[0], version[1]];
        joined.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        joined.extend_from_slice(&msg);
        return Records::Joined(joined);
    }
    Records::Malformed
}

/// Parse the start of a TLS stream.
pub fn client_hello(bytes: &[u8]) -> Hello {
    match join_records(bytes) {
        Records::Whole => parse_record(bytes),
        Records::Joined(record) => parse_record(&record),
        Records::Incomplete => Hello::Incomplete,
        Records::Malformed => Hello::Malformed,
    }
}

fn parse_record(bytes: &[u8]) -> Hello {
    let record = match parse_tls_plaintext(bytes) {
        Ok((_, r)) => r,
        Err(tls_parser::Err::Incomplete(_)) => return Hello::Incomplete,
        Err(_) => return Hello::Malformed,
    };
    for msg in &record.msg {
        let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) = msg else { continue };
        let Some(ext) = ch.ext else { return Hello::NoSni };
        let Ok((_, exts)) = parse_tls_extensions(ext) else { return Hello::Malformed };
        for e in exts {
            if let TlsExtension::SNI(names) = e {
                for (kind, name) in names {
                    if kind == SNIType::HostName {
                        return match super::clean_name(name) {
                            Some(n) => Hello::Sni(n),
                            None => Hello::Malformed,
                        };
                    }
                }
            }
        }
        return Hello::NoSni;
    }
    Hello::Malformed
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub use sluice_tests::client_hello as hello;

    #[test]
    fn sni_from_a_whole_hello_and_none_until_it_is_whole() {
        let h = hello(Some("gfs270n122.userstorage.mega.co.nz"), 0);
        assert_eq!(client_hello(&h), Hello::Sni("gfs270n122.userstorage.mega.co.nz".into()));
        for cut in [1, 5, 20, h.len() - 1] {
            assert_eq!(client_hello(&h[..cut]), Hello::Incomplete, "cut at {cut}");
        }
        assert_eq!(client_hello(&hello(None, 0)), Hello::NoSni);
    }

    /// `hello` re-cut into records of the sizes in `cuts` (the rest in the last).
    fn split(hello: &[u8], cuts: &[usize]) -> Vec<u8> {
        let hs = &hello[5..];
        let mut out = Vec::new();
        let mut at = 0usize;
        for &n in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let end = at.saturating_add(n).min(hs.len());
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&((end - at) as u16).to_be_bytes());
            out.extend_from_slice(&hs[at..end]);
            at = end;
            if at == hs.len() {
                break;
            }
        }
        out
    }

    #[test]
    fn a_hello_split_across_records_is_joined() {
        let h = hello(Some("content.dropboxapi.com"), 300);
        for cuts in [vec![2], vec![4], vec![40], vec![100, 7, 1], vec![1, 1, 1]] {
            let s = split(&h, &cuts);
            assert_eq!(client_hello(&s), Hello::Sni("content.dropboxapi.com".into()), "records {cuts:?}");
            // Until the last record is in, it is incomplete, never malformed.
            for cut in [3, 6, 12, s.len() - 1] {
                assert_eq!(client_hello(&s[..cut]), Hello::Incomplete, "{cuts:?} cut at {cut}");
            }
        }
        // Bounded: a hello in a hundred one-byte records is not followed.
        let many: Vec<usize> = vec![1; 100];
        assert_eq!(client_hello(&split(&h, &many)), Hello::Malformed);
        // A non-handshake record in the middle is not a hello.
        let mut s = split(&h, &[40]);
        s[45] = 0x17;
        assert_eq!(client_hello(&s), Hello::Malformed);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert_eq!(client_hello(b"\x16\x03\x01\x00\x05hello"), Hello::Malformed);
        assert_eq!(client_hello(b"\x17\x03\x03\x00\x01x"), Hello::Malformed);
        let mut h = hello(Some("x.example"), 0);
        let n = h.len();
        h[n - 12] = 0xff; // SNI list length now lies
        assert_ne!(client_hello(&h), Hello::Sni("x.example".into()));
        // A name with control characters is not a name.
        assert_eq!(client_hello(&hello(Some("evil\n.example"), 0)), Hello::Malformed);
    }
}
