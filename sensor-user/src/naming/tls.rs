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

/// Parse the start of a TLS stream.
pub fn client_hello(bytes: &[u8]) -> Hello {
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
