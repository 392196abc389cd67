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
    /// A request to a forward proxy: `CONNECT host:port`, or an absolute URI
    /// (`GET http://host/...`). `host` may be a name or an address.
    Proxy { host: String, port: u16 },
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
    if let Some(target) = proxy_target(req.method.unwrap_or(""), &path) {
        return target;
    }
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

/// `CONNECT host:port` (authority form) or an absolute URI: a proxy request.
fn proxy_target(method: &str, target: &str) -> Option<Request> {
    let (authority, default_port) = if method.eq_ignore_ascii_case("CONNECT") {
        (target, 443)
    } else if let Some(rest) = target.strip_prefix("http://") {
        (rest.split('/').next().unwrap_or(""), 80)
    } else {
        return None;
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if is_ip_literal(host) { host.to_string() } else { super::clean_name(host.as_bytes())? };
    Some(Request::Proxy { host, port })
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

    #[test]
    fn proxy_requests_say_their_target() {
        let r = request(b"CONNECT Upload.Example.NET:8443 HTTP/1.1\r\nHost: upload.example.net:8443\r\n\r\n");
        assert_eq!(r, Request::Proxy { host: "upload.example.net".into(), port: 8443 });
        let r = request(b"CONNECT 10.0.0.9:443 HTTP/1.1\r\n\r\n");
        assert_eq!(r, Request::Proxy { host: "10.0.0.9".into(), port: 443 });
        let r = request(b"POST http://drop.example.org/up HTTP/1.1\r\nHost: drop.example.org\r\n\r\n");
        assert_eq!(r, Request::Proxy { host: "drop.example.org".into(), port: 80 });
        assert_eq!(request(b"CONNECT evil\n.example:443 HTTP/1.1\r\n\r\n"), Request::Malformed);
    }
}
