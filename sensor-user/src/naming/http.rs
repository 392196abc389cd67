//! The Host of a plain-HTTP/1 request, parsed with httparse from the first
//! bytes of a connection (and its path, for services whose upload endpoints
//! are known).

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Incomplete,
    /// Host header (without a port) and request path.
    Host { host: String, path: String },
    /// A complete request head without a usable Host (HTTP/1.0, an IP literal).
    NoHost { path: String },
    Malformed,
}

pub fn request(bytes: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Request::Incomplete,
        Err(_) => return Request::Malformed,
    }
    let path = req.path.unwrap_or("").chars().take(256).collect::<String>();
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(strip_port);
    match host.and_then(super::clean_name) {
        Some(host) if !is_ip_literal(&host) => Request::Host { host, path },
        _ => Request::NoHost { path },
    }
}

fn strip_port(h: &str) -> &[u8] {
    let h = h.trim();
    if h.starts_with('[') {
        return h.as_bytes(); // [v6]:port: an address, rejected by clean_name
    }
    h.rsplit_once(':').map(|(host, _)| host).unwrap_or(h).as_bytes()
}

fn is_ip_literal(h: &str) -> bool {
    h.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_path_of_a_put() {
        let r = request(b"PUT /ul/abc HTTP/1.1\r\nHost: GFS1N2.userstorage.mega.co.nz:8080\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(r, Request::Host { host: "gfs1n2.userstorage.mega.co.nz".into(), path: "/ul/abc".into() });
        assert_eq!(request(b"PUT /x HTTP/1.1\r\nHost: exa"), Request::Incomplete);
        assert_eq!(request(b"GET / HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n"), Request::NoHost { path: "/".into() });
        assert_eq!(request(b"GET / HTTP/1.0\r\n\r\n"), Request::NoHost { path: "/".into() });
        assert_eq!(request(b"PUT \x01\x02 HTTP/9\r\n\r\n"), Request::Malformed);
    }
}
