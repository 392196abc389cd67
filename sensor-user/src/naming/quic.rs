//! QUIC (HTTP/3) recognition from the first datagrams of a UDP flow: the
//! long-header Initial packet's version and connection ids. The server name
//! inside the Initial is encrypted with keys derived from the destination
//! connection id (RFC 9001 5.2); sluice flags and counts QUIC flows but does
//! not decrypt them yet, so their names come from DNS.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initial {
    pub version: u32,
    pub dcid: Vec<u8>,
}

/// Parse a long-header packet's invariant fields (RFC 8999), or None.
pub fn initial(b: &[u8]) -> Option<Initial> {
    let first = *b.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let version = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
    let dcid_len = *b.get(5)? as usize;
    if dcid_len > 20 {
        return None;
    }
    let dcid = b.get(6..6 + dcid_len)?.to_vec();
    let scid_len = *b.get(6 + dcid_len)? as usize;
    if scid_len > 20 || b.len() < 7 + dcid_len + scid_len {
        return None;
    }
    // Initial packets are type 0 in v1 (bits 4-5), type 1 in v2.
    let ty = (first >> 4) & 0x03;
    let is_initial = match version {
        0x6b33_43cf => ty == 1,
        _ => ty == 0,
    };
    is_initial.then_some(Initial { version, dcid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_header_initials_and_nothing_else() {
        let mut p = vec![0xc3, 0, 0, 0, 1, 8];
        p.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        p.push(0);
        p.extend_from_slice(&[0u8; 1200]);
        assert_eq!(initial(&p), Some(Initial { version: 1, dcid: vec![1, 2, 3, 4, 5, 6, 7, 8] }));
        assert_eq!(initial(&p[..10]), None);
        assert_eq!(initial(&[0x43, 0, 0, 0, 1]), None);
        p[5] = 200;
        assert_eq!(initial(&p), None);
    }
}
