//! The target a client asks a SOCKS proxy for, parsed from the client's side
//! of the stream (all the kernel copies): SOCKS4 and 4a (RFC-less, the NEC
//! draft) in one message; SOCKS5 (RFC 1928) as greeting, optional
//! username/password sub-negotiation (RFC 1929), then the request.
//!
//! Only CONNECT names a destination: BIND and UDP ASSOCIATE carry the
//! client's own address, so they are no target.

/// What the client's bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Incomplete,
    /// CONNECT to `host` (a name, or an address as text) on `port`.
    Connect {
        host: String,
        port: u16,
    },
    /// A well-formed request that names no destination (BIND, UDP ASSOCIATE).
    NoTarget,
    Malformed,
}

/// Longest user id or host name taken in SOCKS4/4a (both NUL-terminated).
const MAX_FIELD: usize = 255;

pub fn request(b: &[u8]) -> Request {
    match b.first() {
        Some(4) => socks4(b),
        Some(5) => socks5(b),
        _ => Request::Malformed,
    }
}

/// `04 cmd port(2) ip(4) userid NUL [host NUL]` (4a: ip is 0.0.0.x, x != 0).
fn socks4(b: &[u8]) -> Request {
    let Some(head) = b.get(..8) else {
        return Request::Incomplete;
    };
    let cmd = head[1];
    let port = u16::from_be_bytes([head[2], head[3]]);
    let ip = std::net::Ipv4Addr::new(head[4], head[5], head[6], head[7]);
    let Some((_user, rest)) = nul_field(&b[8..]) else {
        return short_or_bad(&b[8..]);
    };
    if !matches!(cmd, 1 | 2) {
        return Request::Malformed;
    }
    let is_4a = head[4..7] == [0, 0, 0] && head[7] != 0;
    let host = if is_4a {
        let Some((name, _)) = nul_field(rest) else {
            return short_or_bad(rest);
        };
        match super::clean_name(name) {
            Some(n) => n,
            None => return Request::Malformed,
        }
    } else {
        ip.to_string()
    };
    if cmd == 1 {
        Request::Connect { host, port }
    } else {
        Request::NoTarget
    }
}

/// A NUL-terminated field of at most `MAX_FIELD` bytes and what follows it.
fn nul_field(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().take(MAX_FIELD + 1).position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

fn short_or_bad(b: &[u8]) -> Request {
    if b.len() > MAX_FIELD {
        Request::Malformed
    } else {
        Request::Incomplete
    }
}

/// Greeting `05 n methods[n]`, then `01 ulen user plen pass` if the client
/// offered username/password and sent it, then `05 cmd 00 atyp addr port`.
fn socks5(b: &[u8]) -> Request {
    let Some(&n) = b.get(1) else {
        return Request::Incomplete;
    };
    if n == 0 {
        return Request::Malformed;
    }
    let Some(methods) = b.get(2..2 + n as usize) else {
        return Request::Incomplete;
    };
    let mut at = 2 + n as usize;
    match b.get(at) {
        None => return Request::Incomplete,
        // RFC 1929 sub-negotiation: version 1, then two length-prefixed fields.
        Some(1) if methods.contains(&2) => {
            for _ in 0..2 {
                let Some(&len) = b.get(at + 1) else {
                    return Request::Incomplete;
                };
                at += 1 + len as usize;
            }
            at += 1;
        }
        Some(_) => {}
    }
    let Some(req) = b.get(at..at + 4) else {
        return Request::Incomplete;
    };
    if req[0] != 5 || req[2] != 0 || !matches!(req[1], 1..=3) {
        return Request::Malformed;
    }
    let addr = at + 4;
    let (host, after) = match req[3] {
        1 => match b.get(addr..addr + 4) {
            Some(a) => (
                std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string(),
                addr + 4,
            ),
            None => return Request::Incomplete,
        },
        4 => match b
            .get(addr..addr + 16)
            .and_then(|a| <[u8; 16]>::try_from(a).ok())
        {
            Some(a) => (std::net::Ipv6Addr::from(a).to_string(), addr + 16),
            None => return Request::Incomplete,
        },
        3 => {
            let Some(&len) = b.get(addr) else {
                return Request::Incomplete;
            };
            let Some(name) = b.get(addr + 1..addr + 1 + len as usize) else {
                return Request::Incomplete;
            };
            // socks5h clients may send an address as text.
            let host = match std::str::from_utf8(name)
                .ok()
                .and_then(|s| s.parse::<std::net::IpAddr>().ok())
            {
                Some(ip) => ip.to_string(),
                None => match super::clean_name(name) {
                    Some(n) => n,
                    None => return Request::Malformed,
                },
            };
            (host, addr + 1 + len as usize)
        }
        _ => return Request::Malformed,
    };
    let Some(p) = b.get(after..after + 2) else {
        return Request::Incomplete;
    };
    let port = u16::from_be_bytes([p[0], p[1]]);
    if req[1] == 1 {
        Request::Connect { host, port }
    } else {
        Request::NoTarget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(host: &str, port: u16) -> Request {
        Request::Connect {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn socks5_by_name_address_and_with_a_password() {
        // curl --socks5-hostname: greeting, then CONNECT by name.
        let mut b = vec![5, 1, 0, 5, 1, 0, 3, 18];
        b.extend_from_slice(b"Upload.Example.NET");
        b.extend_from_slice(&8443u16.to_be_bytes());
        assert_eq!(request(&b), connect("upload.example.net", 8443));
        for cut in 0..b.len() {
            assert_eq!(
                request(&b[..cut]),
                if cut == 0 {
                    Request::Malformed
                } else {
                    Request::Incomplete
                },
                "cut {cut}"
            );
        }
        // By IPv4 and IPv6 address.
        assert_eq!(
            request(&[5, 1, 0, 5, 1, 0, 1, 203, 0, 113, 5, 1, 187]),
            connect("203.0.113.5", 443)
        );
        let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
        v6.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6.extend_from_slice(&[0, 80]);
        assert_eq!(request(&v6), connect("2001:db8::7", 80));
        // Offering no-auth and username/password, then authenticating.
        let mut auth = vec![5, 2, 0, 2, 1, 4];
        auth.extend_from_slice(b"user");
        auth.push(6);
        auth.extend_from_slice(b"secret");
        auth.extend_from_slice(&[5, 1, 0, 3, 9]);
        auth.extend_from_slice(b"x.example");
        auth.extend_from_slice(&[0, 22]);
        assert_eq!(request(&auth), connect("x.example", 22));
        // socks5h with an address written as text is an address.
        let mut lit = vec![5, 1, 0, 5, 1, 0, 3, 8];
        lit.extend_from_slice(b"10.0.0.9");
        lit.extend_from_slice(&[0, 80]);
        assert_eq!(request(&lit), connect("10.0.0.9", 80));
    }

    #[test]
    fn socks4_and_4a() {
        let mut b = vec![4, 1, 0x20, 0xfb, 198, 51, 100, 7];
        b.extend_from_slice(b"bob\0");
        assert_eq!(request(&b), connect("198.51.100.7", 8443));
        let mut a = vec![4, 1, 0, 80, 0, 0, 0, 1, 0];
        a.extend_from_slice(b"drop.example.org\0");
        assert_eq!(request(&a), connect("drop.example.org", 80));
        assert_eq!(request(&a[..a.len() - 1]), Request::Incomplete);
        assert_eq!(request(&[4, 1, 0, 80, 1, 2, 3, 4]), Request::Incomplete);
    }

    #[test]
    fn what_names_no_destination_or_is_not_socks() {
        assert_eq!(
            request(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]),
            Request::NoTarget
        ); // UDP ASSOCIATE
        assert_eq!(request(&[4, 2, 0, 80, 1, 2, 3, 4, 0]), Request::NoTarget); // BIND
        assert_eq!(request(&[5, 0]), Request::Malformed);
        assert_eq!(
            request(&[5, 1, 0, 4, 1, 0, 1, 1, 2, 3, 4, 0, 80]),
            Request::Malformed
        );
        assert_eq!(request(&[5, 1, 0, 5, 1, 0, 9, 1, 2]), Request::Malformed);
        let mut hostile = vec![5, 1, 0, 5, 1, 0, 3, 12];
        hostile.extend_from_slice(b"evil\n{\"x\":1}");
        assert_eq!(request(&hostile), Request::Malformed);
        // An endless user id is not waited for.
        let mut long = vec![4, 1, 0, 80, 1, 2, 3, 4];
        long.extend(std::iter::repeat_n(b'a', 400));
        assert_eq!(request(&long), Request::Malformed);
        assert_eq!(request(b"SSH-2.0"), Request::Malformed);
    }
}
