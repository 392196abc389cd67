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

    /// A minimal, well-formed TLS 1.2-style ClientHello with an SNI extension
    /// and `pad` bytes of padding extension (to make it span segments).
    pub fn hello(sni: Option<&str>, pad: usize) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = sni {
            let n = name.as_bytes();
            let list_len = 3 + n.len();
            ext.extend_from_slice(&[0x00, 0x00]);
            ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(list_len as u16).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
            ext.extend_from_slice(n);
        }
        if pad > 0 {
            ext.extend_from_slice(&[0x00, 0x15]);
            ext.extend_from_slice(&(pad as u16).to_be_bytes());
            ext.extend(std::iter::repeat_n(0u8, pad));
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

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
