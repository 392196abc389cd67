//! Local forward proxies (squid, tinyproxy, cntlm, px, corporate agents): a
//! client's upload leaves as the proxy's upstream connection, so judged as
//! is it would be the proxy's, and the client's own flow goes to loopback,
//! which the rules leave out. This joins them: the client is the uploader
//! (its job, identity and tool rules), the proxy the carrier, the upstream the
//! destination.
//!
//! How a join is made, each tick (pure, over the tick's flow records):
//! 1. a client flow: to a loopback address, whose first bytes asked a proxy
//!    for a target (`CONNECT host:port`, an absolute URI, or a SOCKS4/4a/5
//!    CONNECT);
//! 2. the proxy: the process holding the accepted end of that connection
//!    (a loopback flow whose local port is the client's remote port, from the
//!    client's port if several processes accept there);
//! 3. the upstream: a flow of that proxy off this host, to the target's port,
//!    whose name is the target's (SNI the client sent through the tunnel, or
//!    a DNS answer the proxy got) or whose address is the target when it is an
//!    address, or unnamed;
//! 4. several clients of one proxy to one target: each upstream goes to the
//!    client whose bytes this tick are closest to its own (a tunnel relays
//!    what the client sends), each used once.
//!
//! Limits: a proxy chaining to another proxy is joined one hop; a SOCKS5
//! client that authenticates by GSSAPI is not parsed (its request follows
//! an exchange sluice does not read), so it is not joined.

use std::net::IpAddr;

use crate::{
    flows::{FlowRecord, Scope},
    naming::AppProtocol,
};

/// One upstream flow joined to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// Indexes into the records: the proxy's upstream flow and the client's flow.
    pub upstream: usize,
    pub client: usize,
    pub proxy_pid: u32,
    /// How it was joined, for the alert.
    pub how: String,
}

fn is_loopback(r: &FlowRecord) -> bool {
    r.scope() == Scope::Loopback
}

/// The process that accepted `client`'s connection to the proxy.
fn proxy_of(records: &[FlowRecord], client: &FlowRecord) -> Option<u32> {
    let accepted = |r: &&FlowRecord| is_loopback(r) && r.local_port == client.remote_port && r.owner.pid != 0 && r.owner.pid != client.owner.pid;
    let exact = records.iter().filter(accepted).find(|r| r.remote_port == client.local_port);
    exact.or_else(|| records.iter().find(accepted)).map(|r| r.owner.pid)
}

fn upstream_matches(r: &FlowRecord, proxy: u32, host: &str, port: u16) -> bool {
    if r.owner.pid != proxy || is_loopback(r) || r.remote_port != port || r.volume.bytes_out == 0 {
        return false;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => r.remote_ip == ip,
        Err(_) => r.destination.domain.as_deref().is_none_or(|d| d == host),
    }
}

fn request_kind(client: &FlowRecord) -> &'static str {
    match client.destination.protocol {
        Some(AppProtocol::Socks) => "a SOCKS request",
        _ => "an HTTP proxy request",
    }
}

/// Every join this tick's records support.
pub fn join(records: &[FlowRecord]) -> Vec<Join> {
    let mut joins = Vec::new();
    let mut taken = vec![false; records.len()];
    let mut clients: Vec<usize> = (0..records.len())
        .filter(|&i| is_loopback(&records[i]) && records[i].owner.pid != 0 && records[i].destination.proxy_target.is_some())
        .collect();
    // The biggest senders first: they are the ones that matter, and a
    // byte-closest pick is most reliable for them.
    clients.sort_by_key(|&i| std::cmp::Reverse(records[i].volume.bytes_out));
    for c in clients {
        let client = &records[c];
        let Some((host, port)) = client.destination.proxy_target.as_ref() else { continue };
        let Some(proxy) = proxy_of(records, client) else { continue };
        let best = (0..records.len())
            .filter(|&u| !taken[u] && upstream_matches(&records[u], proxy, host, *port))
            .min_by_key(|&u| records[u].volume.bytes_out.abs_diff(client.volume.bytes_out));
        if let Some(u) = best {
            taken[u] = true;
            joins.push(Join {
                upstream: u,
                client: c,
                proxy_pid: proxy,
                how: format!("asked the local proxy (pid {proxy}) for {host}:{port} ({}); joined by target and by bytes this tick", request_kind(client)),
            });
        }
    }
    joins
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        flows::{Attribution, Owner, Volume},
        naming::Destination,
    };

    fn rec(pid: u32, local: u16, remote: (IpAddr, u16), out: u64, target: Option<(&str, u16)>, domain: Option<&str>) -> FlowRecord {
        FlowRecord {
            owner: Owner { pid, uid: 0, cgroup_id: 0, direction: 1, attribution: Attribution::Kernel, start_ns: 0 },
            local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: local,
            remote_ip: remote.0,
            remote_port: remote.1,
            protocol: 6,
            volume: Volume { bytes_out: out, ..Volume::default() },
            sockets: 1,
            destination: Destination {
                proxy_target: target.map(|(h, p)| (h.to_string(), p)),
                domain: domain.map(str::to_string),
                ..Destination::default()
            },
        }
    }

    #[test]
    fn two_clients_of_one_proxy_are_told_apart_by_bytes() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let up = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
        let records = vec![
            rec(10, 40001, (lo, 3128), 50_000_000, Some(("upload.example.net", 443)), None), // uploader
            rec(11, 40002, (lo, 3128), 2_000, Some(("upload.example.net", 443)), None),      // idle client
            rec(20, 3128, (lo, 40001), 0, None, None),                                       // proxy's accepted ends
            rec(20, 3128, (lo, 40002), 0, None, None),
            rec(20, 50001, (up, 443), 2_100, None, Some("upload.example.net")),
            rec(20, 50002, (up, 443), 50_000_400, None, Some("upload.example.net")),
            rec(20, 50003, (up, 80), 9_000_000, None, None), // another target: not joined
        ];
        let mut j = join(&records);
        j.sort_by_key(|j| j.client);
        assert_eq!(
            j.iter()
                .map(|j| (j.client, j.upstream, j.proxy_pid))
                .collect::<Vec<_>>(),
            [(0, 5, 20), (1, 4, 20)]
        );
        assert!(
            j[0].how
                .contains("upload.example.net:443 (an HTTP proxy request)"),
            "{}",
            j[0].how
        );
    }

    #[test]
    fn no_proxy_request_or_no_proxy_means_no_join() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let up = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
        // A loopback client without a proxy request, and one whose proxy end is unknown.
        let records = vec![
            rec(10, 40001, (lo, 8080), 50_000_000, None, None),
            rec(12, 40003, (lo, 3129), 50_000_000, Some(("x.example", 443)), None),
            rec(20, 8080, (lo, 40001), 0, None, None),
            rec(20, 50002, (up, 443), 50_000_000, None, Some("x.example")),
        ];
        assert!(join(&records).is_empty());
    }
}
