//! Where the bytes go, by name: the first bytes of each connection (TLS SNI,
//! HTTP Host, QUIC recognition) and the DNS answers this host receives, as
//! copied by the kernel (`PayloadEvent`), turned into a `Destination` per
//! flow, with its service from the catalog. Names come from the traffic, not
//! from /etc/hosts or the resolver library a program chose.

pub mod dns;
pub mod http;
pub mod quic;
pub mod socks;
pub mod tls;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
};

use sensor_common::{FlowKey, HEAD_STREAM_LIMIT, PAYLOAD_DATAGRAM_HEAD, PAYLOAD_DNS, PAYLOAD_DNS_QUERY, PAYLOAD_STREAM_HEAD};

use crate::services::{Catalog, Service};

/// Longest domain name (RFC 1035).
const MAX_NAME: usize = 253;

/// A name as it may appear in output: lowercased, trailing dot dropped, only
/// the characters host names use. Anything else (control characters,
/// spaces, invalid UTF-8, overlong) is not a name.
pub fn clean_name(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?.trim_end_matches('.');
    if s.is_empty() || s.len() > MAX_NAME {
        return None;
    }
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'))
        .then(|| s.to_ascii_lowercase())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    TlsSni,
    HttpHost,
    Dns,
    /// The target of a request to a local forward proxy (CONNECT, absolute URI, SOCKS).
    ProxyRequest,
}

impl NameSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::TlsSni => "tls-sni",
            NameSource::HttpHost => "http-host",
            NameSource::Dns => "dns",
            NameSource::ProxyRequest => "proxy-request",
        }
    }
}

/// The application protocol a flow started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    Tls,
    Http,
    Quic,
    Socks,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Tls => "tls",
            AppProtocol::Http => "http",
            AppProtocol::Quic => "quic",
            AppProtocol::Socks => "socks",
        }
    }
}

/// What sluice knows about a flow's destination beyond its address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destination {
    pub domain: Option<String>,
    pub source: Option<NameSource>,
    pub protocol: Option<AppProtocol>,
    /// A complete TLS ClientHello carried no server name.
    pub tls_no_sni: bool,
    /// HTTP request path (plain HTTP only).
    pub http_path: Option<String>,
    pub service: Option<Arc<Service>>,
    /// The name is backed by a DNS answer to a query this host sent, mapping
    /// it to this address (a name from DNS is; SNI and Host are claims the
    /// sender makes, corroborated only when such an answer agrees).
    pub corroborated: bool,
    /// The connection asked a forward proxy for this (host, port).
    pub proxy_target: Option<(String, u16)>,
}

impl Destination {
    /// Rank for merging the sockets of one flow record: a name from the
    /// connection itself beats one from DNS beats none.
    fn rank(&self) -> u8 {
        match self.source {
            Some(NameSource::TlsSni) | Some(NameSource::HttpHost) | Some(NameSource::ProxyRequest) => 3,
            Some(NameSource::Dns) => 2,
            None if self.protocol.is_some() => 1,
            None => 0,
        }
    }

    /// Keep the better of two descriptions of one record's sockets.
    pub fn merge(&mut self, other: Destination) {
        if other.rank() > self.rank() {
            *self = other;
        }
    }
}

/// A socket as naming sees it: the sending pid is left out, so a connection
/// inherited by a child keeps the name its parent's ClientHello gave it.
type SockId = (u64, [u8; 16], u16, u8);

fn sock_id(k: &FlowKey) -> SockId {
    (k.cookie, k.remote_addr, k.remote_port, k.protocol)
}

/// A client asked a proxy for `host:port`: the target, and the name when it is one.
fn proxy_request(l: &mut Learned, host: String, port: u16) {
    if host.parse::<IpAddr>().is_err() {
        l.name = Some((host.clone(), NameSource::ProxyRequest));
    }
    l.proxy_target = Some((host, port));
}

/// What a socket's first bytes said.
#[derive(Debug, Clone)]
struct Learned {
    protocol: Option<AppProtocol>,
    name: Option<(String, NameSource)>,
    /// Once corroborated, for the socket's life (the answer may expire first).
    corroborated: bool,
    proxy_target: Option<(String, u16)>,
    no_sni: bool,
    path: Option<String>,
    last: f64,
}

/// A stream start being reassembled.
#[derive(Debug)]
struct Head {
    buf: Vec<u8>,
    since: f64,
}

/// DNS over TCP being reassembled (2-byte length-prefixed messages).
#[derive(Debug)]
struct TcpDns {
    next_seq: u32,
    buf: Vec<u8>,
    since: f64,
}

/// Counters of what naming saw and dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub payload_events: u64,
    pub tls_hellos: u64,
    pub tls_sni: u64,
    pub tls_no_sni: u64,
    pub tls_malformed: u64,
    pub http_requests: u64,
    pub http_malformed: u64,
    pub socks_requests: u64,
    pub socks_malformed: u64,
    pub quic_initials: u64,
    pub dns_answers: u64,
    pub dns_malformed: u64,
    pub heads_abandoned: u64,
    /// DNS-over-TCP reassemblies dropped to stay within bounds.
    pub tcp_dns_evicted: u64,
    /// Queries seen going out, and UDP answers that matched none (forged,
    /// or to a query this host never sent): ignored.
    pub dns_queries: u64,
    pub dns_unsolicited: u64,
    pub queries_untallied: u64,
}

impl Stats {
    /// Every counter by name, for stderr and `sluice_naming_total{name}`.
    pub fn named(&self) -> [(&'static str, u64); 16] {
        [
            ("tls_sni", self.tls_sni),
            ("tls_no_sni", self.tls_no_sni),
            ("tls_malformed", self.tls_malformed),
            ("http_requests", self.http_requests),
            ("http_malformed", self.http_malformed),
            ("socks_requests", self.socks_requests),
            ("socks_malformed", self.socks_malformed),
            ("quic_initials", self.quic_initials),
            ("dns_answers", self.dns_answers),
            ("dns_malformed", self.dns_malformed),
            ("dns_queries", self.dns_queries),
            ("dns_unsolicited", self.dns_unsolicited),
            ("heads_abandoned", self.heads_abandoned),
            ("tcp_dns_evicted", self.tcp_dns_evicted),
            ("queries_untallied", self.queries_untallied),
            ("payload_events", self.payload_events),
        ]
    }
}

/// Bounds: sockets whose first bytes are being reassembled / remembered.
const MAX_HEADS: usize = 4096;
const MAX_LEARNED: usize = 65_536;
/// A stream start that has not completed in this long never will.
const HEAD_TIMEOUT_S: f64 = 30.0;
/// A socket not seen for this long is forgotten (its flows have retired).
const LEARNED_IDLE_S: f64 = 3600.0;
/// One DNS message over TCP at most (2-byte length prefix + 65,535).
const MAX_TCP_DNS_BUF: usize = 65_537;
/// DNS-over-TCP connections reassembled at once, and their bytes in all: a
/// sender trickling segments from port 53 on many connections costs at most
/// this much; past it the oldest reassembly is dropped (and counted).
const MAX_TCP_DNS: usize = 512;
const MAX_TCP_DNS_BYTES: usize = 4 << 20;
/// A DNS answer over TCP arrives within seconds; a reassembly older than this is dropped.
const TCP_DNS_IDLE_S: f64 = 60.0;
/// (socket, registered domain) pairs tallied per tick at most (a flood of
/// zones costs this much; beyond, queries are counted in `queries_untallied`).
const MAX_TALLIES: usize = 4096;
/// Distinct names remembered per tally (enough to cross any sane threshold).
const MAX_TALLY_NAMES: usize = 4096;

/// What one socket asked under one registered domain in a tick: the DNS
/// tunnel rule's evidence (data carried in query names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryTally {
    pub queries: u64,
    /// Bytes of the names asked.
    pub name_bytes: u64,
    /// Distinct names whose labels look like data (long or high-entropy).
    pub data_names: u64,
    pub longest_label: usize,
    /// The asking socket's port and the server's address (from the packet):
    /// what lets the agent find the sender on the send-path backends, whose
    /// flows do not know the socket cookie the packet hook sees.
    pub local_port: u16,
    pub server: [u8; 16],
    seen: std::collections::HashSet<u64>,
}

/// A label that carries data rather than a host's name: long, or random-looking.
pub fn looks_like_data(label: &str) -> bool {
    if label.len() >= 24 {
        return true;
    }
    if label.len() < 12 {
        return false;
    }
    let mut counts = [0u32; 256];
    for b in label.bytes() {
        counts[b as usize] += 1;
    }
    let n = label.len() as f64;
    let entropy: f64 = counts.iter().filter(|&&c| c > 0).map(|&c| {
        let p = c as f64 / n;
        -p * p.log2()
    }).sum();
    entropy >= 3.3
}

/// Queries waiting for an answer at most, and how long one waits.
const MAX_PENDING: usize = 16_384;
const PENDING_S: f64 = 30.0;

/// A query as its answer must match it: transaction id, this host's port, the
/// server's address.
type QueryKey = (u16, u16, [u8; 16]);

pub struct Namer {
    heads: HashMap<SockId, Head>,
    learned: HashMap<SockId, Learned>,
    tcp_dns: HashMap<SockId, TcpDns>,
    /// Outbound UDP queries waiting for their answer: the question and when.
    pending: HashMap<QueryKey, (String, f64)>,
    /// This tick's queries by (socket cookie, registered domain); see `take_queries`.
    tallies: HashMap<(u64, String), QueryTally>,
    pub dns: dns::Cache,
    pub catalog: Arc<Catalog>,
    pub stats: Stats,
}

impl Namer {
    pub fn new(catalog: Arc<Catalog>, dns_cache_max: usize) -> Namer {
        Namer {
            heads: HashMap::new(),
            learned: HashMap::new(),
            tcp_dns: HashMap::new(),
            pending: HashMap::new(),
            tallies: HashMap::new(),
            dns: dns::Cache::new(dns_cache_max),
            catalog,
            stats: Stats::default(),
        }
    }

    /// One payload copy from the kernel. `now` is unix seconds.
    pub fn on_payload(&mut self, kind: u32, key: &FlowKey, offset: u64, data: &[u8], now: f64) {
        self.stats.payload_events += 1;
        match kind {
            PAYLOAD_STREAM_HEAD => self.stream_head(key, offset, data, now),
            PAYLOAD_DATAGRAM_HEAD => {
                let id = sock_id(key);
                if self.learned.get(&id).is_some_and(|l| l.protocol == Some(AppProtocol::Quic)) {
                    return;
                }
                if quic::initial(data).is_some() {
                    self.stats.quic_initials += 1;
                    self.learn(id, Learned { protocol: Some(AppProtocol::Quic), name: None, corroborated: false, proxy_target: None, no_sni: false, path: None, last: now });
                }
            }
            PAYLOAD_DNS_QUERY if key.protocol == 17 => self.dns_query(key, data, now),
            PAYLOAD_DNS if key.protocol == 17 => self.dns_udp_answer(key, data, now),
            // Over TCP the answer comes on a connection this host opened to the
            // server (an off-path sender cannot write into it): believed.
            PAYLOAD_DNS => self.dns_tcp_segment(key, offset as u32, data, now),
            _ => {}
        }
    }

    fn stream_head(&mut self, key: &FlowKey, offset: u64, data: &[u8], now: f64) {
        let id = sock_id(key);
        if self.learned.contains_key(&id) {
            return; // decided already (a retried write copies again)
        }
        if !self.heads.contains_key(&id) && self.heads.len() >= MAX_HEADS {
            self.expire_heads(now, true);
        }
        // Taken out while it grows, put back only if still undecided.
        let mut h = self.heads.remove(&id).unwrap_or(Head { buf: Vec::new(), since: now });
        let have = h.buf.len() as u64;
        if offset > have {
            // A gap (a lost copy): what is there is all there will be.
            self.conclude(id, &h.buf, true, now);
            return;
        }
        let skip = (have - offset) as usize;
        if skip < data.len() {
            h.buf.extend_from_slice(&data[skip..]);
        }
        h.buf.truncate(HEAD_STREAM_LIMIT as usize);
        let full = h.buf.len() >= HEAD_STREAM_LIMIT as usize;
        if !self.conclude(id, &h.buf, full, now) {
            self.heads.insert(id, h);
        }
    }

    /// Try to decide what a stream start says; true once decided. `last`:
    /// no more bytes will come, so an incomplete start is concluded as is.
    fn conclude(&mut self, id: SockId, buf: &[u8], last: bool, now: f64) -> bool {
        let mut l = Learned {
            protocol: None,
            name: None,
            corroborated: false,
            proxy_target: None,
            no_sni: false,
            path: None,
            last: now,
        };
        let decided = match buf.first() {
            Some(0x16) => self.tls_start(&mut l, buf),
            Some(4 | 5) => self.socks_start(&mut l, buf),
            _ => self.http_start(&mut l, buf),
        };
        if !decided {
            if !last {
                return false;
            }
            self.stats.heads_abandoned += 1;
        }
        self.learn(id, l);
        true
    }

    /// The three readers below fill `l` and return false while the start is incomplete.
    fn tls_start(&mut self, l: &mut Learned, buf: &[u8]) -> bool {
        l.protocol = Some(AppProtocol::Tls);
        match tls::client_hello(buf) {
            tls::Hello::Incomplete => return false,
            tls::Hello::Sni(n) => {
                self.stats.tls_hellos += 1;
                self.stats.tls_sni += 1;
                l.name = Some((n, NameSource::TlsSni));
            }
            tls::Hello::NoSni => {
                self.stats.tls_hellos += 1;
                self.stats.tls_no_sni += 1;
                l.no_sni = true;
            }
            tls::Hello::Malformed => {
                self.stats.tls_malformed += 1;
                l.protocol = None;
            }
        }
        true
    }

    fn http_start(&mut self, l: &mut Learned, buf: &[u8]) -> bool {
        l.protocol = Some(AppProtocol::Http);
        match http::request(buf) {
            http::Request::Incomplete => return false,
            http::Request::Host { host, path } => {
                self.stats.http_requests += 1;
                l.name = Some((host, NameSource::HttpHost));
                l.path = Some(path);
            }
            http::Request::NoHost { path } => {
                self.stats.http_requests += 1;
                l.path = Some(path);
            }
            http::Request::Proxy { host, port } => {
                self.stats.http_requests += 1;
                proxy_request(l, host, port);
            }
            http::Request::Malformed => {
                self.stats.http_malformed += 1;
                l.protocol = None;
            }
        }
        true
    }

    fn socks_start(&mut self, l: &mut Learned, buf: &[u8]) -> bool {
        l.protocol = Some(AppProtocol::Socks);
        match socks::request(buf) {
            socks::Request::Incomplete => return false,
            socks::Request::Connect { host, port } => {
                self.stats.socks_requests += 1;
                proxy_request(l, host, port);
            }
            socks::Request::NoTarget => self.stats.socks_requests += 1,
            socks::Request::Malformed => {
                self.stats.socks_malformed += 1;
                l.protocol = None;
            }
        }
        true
    }

    fn learn(&mut self, id: SockId, l: Learned) {
        if !self.learned.contains_key(&id) && self.learned.len() >= MAX_LEARNED {
            // Batch: drop the least recently used tenth.
            crate::evict::oldest(&mut self.learned, MAX_LEARNED / 10, |_, v| Some(v.last));
        }
        self.learned.insert(id, l);
    }

    fn dns_query(&mut self, key: &FlowKey, msg: &[u8], now: f64) {
        let Ok(q) = dns::query(msg) else { return };
        self.stats.dns_queries += 1;
        self.tally(key, &q.name);
        if self.pending.len() >= MAX_PENDING {
            self.pending.retain(|_, (_, at)| now - *at < PENDING_S);
            if self.pending.len() >= MAX_PENDING {
                return; // a query flood: its answers will count as unsolicited
            }
        }
        self.pending.insert((q.id, key.local_port, key.remote_addr), (q.name, now));
    }

    /// Count a query under its registered domain (`psl`), for the tunnel rule.
    fn tally(&mut self, key: &FlowKey, name: &str) {
        let Some(domain) = psl::domain_str(name).map(str::to_string) else {
            return;
        };
        let cookie = key.cookie;
        if !self.tallies.contains_key(&(cookie, domain.clone()))
            && self.tallies.len() >= MAX_TALLIES
        {
            self.stats.queries_untallied += 1;
            return;
        }
        let sub = name.strip_suffix(domain.as_str()).unwrap_or("").trim_end_matches('.');
        let t = self.tallies.entry((cookie, domain)).or_default();
        t.queries += 1;
        t.name_bytes += name.len() as u64;
        (t.local_port, t.server) = (key.local_port, key.remote_addr);
        t.longest_label = t
            .longest_label
            .max(name.split('.').map(str::len).max().unwrap_or(0));
        if sub.split('.').any(looks_like_data) && t.seen.len() < MAX_TALLY_NAMES {
            use std::hash::BuildHasher;
            if t.seen.insert(foldhash::fast::FixedState::default().hash_one(sub)) {
                t.data_names += 1;
            }
        }
    }

    /// This tick's query tallies, by (socket cookie, registered domain).
    pub fn take_queries(&mut self) -> Vec<((u64, String), QueryTally)> {
        self.tallies.drain().collect()
    }

    /// A UDP answer is believed only when it answers a query that left this
    /// host: same transaction id, sent to the server it comes from, to the
    /// port that asked, with the same question, within `PENDING_S`.
    fn dns_udp_answer(&mut self, key: &FlowKey, msg: &[u8], now: f64) {
        let (question, answers) = match dns::response(msg) {
            Ok(r) => r,
            Err(_) => {
                self.stats.dns_malformed += 1;
                return;
            }
        };
        let asked = question.and_then(|q| {
            let k = (q.id, key.local_port, key.remote_addr);
            self.pending.get(&k).filter(|(name, at)| *name == q.name && now - *at < PENDING_S).map(|_| k)
        });
        let Some(k) = asked else {
            self.stats.dns_unsolicited += 1;
            return;
        };
        self.pending.remove(&k);
        self.believe(&answers, now);
    }

    /// A DNS-over-TCP message: believed (see `on_payload`).
    /// Queries over TCP are not copied, so the answer's question is what the
    /// tunnel rule counts for them.
    fn dns_message(&mut self, key: &FlowKey, msg: &[u8], now: f64) {
        match dns::response(msg) {
            Ok((question, answers)) => {
                if let Some(q) = question {
                    self.tally(key, &q.name);
                }
                self.believe(&answers, now)
            }
            Err(_) => self.stats.dns_malformed += 1,
        }
    }

    /// An answer sluice believes: its addresses are named from now on.
    fn believe(&mut self, answers: &[dns::Answer], now: f64) {
        self.stats.dns_answers += 1;
        for a in answers {
            self.dns.insert(a, now);
        }
    }

    fn dns_tcp_segment(&mut self, key: &FlowKey, seq: u32, data: &[u8], now: f64) {
        let id = sock_id(key);
        if !self.tcp_dns.contains_key(&id) && self.tcp_dns.len() >= MAX_TCP_DNS {
            self.drop_oldest_tcp_dns();
        }
        let mut held: usize = self.tcp_dns.values().map(|s| s.buf.len()).sum();
        while held + data.len() > MAX_TCP_DNS_BYTES && !self.tcp_dns.is_empty() {
            held -= self.drop_oldest_tcp_dns();
        }
        let s = self.tcp_dns.entry(id).or_insert(TcpDns { next_seq: seq, buf: Vec::new(), since: now });
        if seq != s.next_seq {
            if seq.wrapping_sub(s.next_seq) as i32 <= 0 {
                return; // retransmission
            }
            s.buf.clear(); // a gap: resynchronise on this segment
        }
        s.next_seq = seq.wrapping_add(data.len() as u32);
        s.buf.extend_from_slice(data);
        let mut msgs = Vec::new();
        while s.buf.len() >= 2 {
            let n = u16::from_be_bytes([s.buf[0], s.buf[1]]) as usize;
            if s.buf.len() < 2 + n {
                break;
            }
            msgs.push(s.buf[2..2 + n].to_vec());
            s.buf.drain(..2 + n);
        }
        if s.buf.len() > MAX_TCP_DNS_BUF {
            s.buf.clear();
        }
        for m in msgs {
            self.dns_message(key, &m, now);
        }
    }

    /// Housekeeping once per tick: conclude stream starts that stalled,
    /// forget idle sockets.
    pub fn expire(&mut self, now: f64) {
        self.expire_heads(now, false);
        self.learned.retain(|_, l| now - l.last < LEARNED_IDLE_S);
        self.tcp_dns.retain(|_, s| now - s.since < TCP_DNS_IDLE_S);
        self.pending.retain(|_, (_, at)| now - *at < PENDING_S);
    }

    /// Drop the oldest DNS-over-TCP reassembly; the bytes it held.
    fn drop_oldest_tcp_dns(&mut self) -> usize {
        let oldest = self.tcp_dns.iter().min_by(|a, b| a.1.since.total_cmp(&b.1.since)).map(|(k, _)| *k);
        let Some(s) = oldest.and_then(|k| self.tcp_dns.remove(&k)) else { return 0 };
        self.stats.tcp_dns_evicted += 1;
        s.buf.len()
    }

    fn expire_heads(&mut self, now: f64, make_room: bool) {
        let stale: Vec<SockId> = self
            .heads
            .iter()
            .filter(|(_, h)| make_room || now - h.since >= HEAD_TIMEOUT_S)
            .map(|(k, _)| *k)
            .collect();
        for id in stale {
            if let Some(h) = self.heads.remove(&id) {
                self.conclude(id, &h.buf, true, now);
            }
        }
    }

    /// The destination of one kernel flow: the name its own first bytes gave,
    /// else the DNS answer for its address (remembered for the socket, so a
    /// long connection keeps its name after the answer expires).
    pub fn destination(&mut self, key: &FlowKey, remote_ip: IpAddr, now: f64) -> Destination {
        let id = sock_id(key);
        let mut d = Destination::default();
        if let Some(l) = self.learned.get_mut(&id) {
            l.last = now;
            d.protocol = l.protocol;
            d.tls_no_sni = l.no_sni;
            d.http_path = l.path.clone();
            d.proxy_target = l.proxy_target.clone();
            if let Some((n, src)) = &l.name {
                d.domain = Some(n.clone());
                d.source = Some(*src);
                // A claimed name is corroborated once an answer maps it here.
                if !l.corroborated {
                    l.corroborated = *src == NameSource::Dns || self.dns.get(&remote_ip, now).is_some_and(|names| names.contains(n));
                }
                d.corroborated = l.corroborated;
            }
        }
        if d.domain.is_none() {
            if let Some(names) = self.dns.get(&remote_ip, now) {
                // Prefer a name the catalog knows (the asked name or one of its CNAMEs).
                let pick = names.iter().find(|n| self.catalog.lookup(n).is_some()).or(names.first()).cloned();
                if let Some(n) = pick {
                    d.domain = Some(n.clone());
                    d.source = Some(NameSource::Dns);
                    d.corroborated = true;
                    let l = self.learned.entry(id).or_insert(Learned {
                        protocol: d.protocol,
                        name: None,
                        corroborated: true,
                        proxy_target: None,
                        no_sni: d.tls_no_sni,
                        path: d.http_path.clone(),
                        last: now,
                    });
                    l.name = Some((n, NameSource::Dns));
                    l.corroborated = true;
                }
            }
        }
        d.service = d.domain.as_deref().and_then(|n| self.catalog.lookup(n)).cloned();
        d
    }

    pub fn tracked(&self) -> (usize, usize, usize) {
        (self.heads.len(), self.learned.len(), self.dns.len())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn key(cookie: u64, port: u16, protocol: u8) -> FlowKey {
        let mut remote = [0u8; 16];
        remote[10] = 0xff;
        remote[11] = 0xff;
        remote[12..].copy_from_slice(&[10, 9, 8, 7]);
        FlowKey {
            cookie,
            local_addr: [0; 16],
            remote_addr: remote,
            local_port: 40000,
            remote_port: port,
            protocol,
            ip_version: 4,
            _pad: [0; 2],
            pid: 0,
            _pad2: 0,
        }
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7));

    fn namer() -> Namer {
        Namer::new(Arc::new(Catalog::builtin()), 1024)
    }

    #[test]
    fn a_client_hello_split_across_three_copies_names_the_socket() {
        let mut n = namer();
        let hello = tls::tests::hello(Some("gfs208n140.userstorage.mega.co.nz"), 1500);
        let k = key(1, 443, 6);
        n.on_payload(PAYLOAD_STREAM_HEAD, &k, 0, &hello[..700], 1.0);
        assert_eq!(n.destination(&k, IP, 1.0).domain, None, "not complete yet");
        // A retried write repeats bytes already seen.
        n.on_payload(PAYLOAD_STREAM_HEAD, &k, 500, &hello[500..1400], 1.0);
        n.on_payload(PAYLOAD_STREAM_HEAD, &k, 1400, &hello[1400..], 1.0);
        let d = n.destination(&k, IP, 1.0);
        assert_eq!(d.domain.as_deref(), Some("gfs208n140.userstorage.mega.co.nz"));
        assert_eq!(d.source, Some(NameSource::TlsSni));
        assert_eq!(d.protocol, Some(AppProtocol::Tls));
        assert_eq!(d.service.as_ref().map(|s| s.id.as_str()), Some("mega"));
        // Another process using the same socket (inherited) gets the same name.
        let mut child = k;
        child.pid = 4242;
        assert_eq!(n.destination(&child, IP, 2.0).domain, d.domain);
        assert_eq!(n.stats.tls_sni, 1);
    }

    #[test]
    fn a_socks5_greeting_and_request_in_two_writes_give_the_proxy_target() {
        let mut n = namer();
        let k = key(2, 1080, 6);
        n.on_payload(PAYLOAD_STREAM_HEAD, &k, 0, &[5, 1, 0], 1.0);
        assert_eq!(
            n.destination(&k, IP, 1.0).proxy_target,
            None,
            "greeting only"
        );
        let mut req = vec![5, 1, 0, 3, 18];
        req.extend_from_slice(b"upload.example.net");
        req.extend_from_slice(&443u16.to_be_bytes());
        n.on_payload(PAYLOAD_STREAM_HEAD, &k, 3, &req, 1.1);
        let d = n.destination(&k, IP, 1.1);
        assert_eq!(d.proxy_target, Some(("upload.example.net".into(), 443)));
        assert_eq!(
            (d.domain.as_deref(), d.source),
            (Some("upload.example.net"), Some(NameSource::ProxyRequest))
        );
        assert_eq!(
            (d.protocol, n.stats.socks_requests),
            (Some(AppProtocol::Socks), 1)
        );
    }

    #[test]
    fn no_sni_is_said_honestly_and_falls_back_to_dns() {
        let mut n = namer();
        let k = key(2, 443, 6);
        n.on_payload(PAYLOAD_STREAM_HEAD, &k, 0, &tls::tests::hello(None, 0), 1.0);
        let d = n.destination(&k, IP, 1.0);
        assert!(d.tls_no_sni && d.domain.is_none());
        let answer = dns::tests::response("www.dropbox.com", Some("www-env.dropbox-dns.com"), &[Ipv4Addr::new(10, 9, 8, 7)], 60);
        n.on_payload(PAYLOAD_DNS_QUERY, &key(9, 53, 17), 0, &dns::tests::query("www.dropbox.com"), 2.0);
        n.on_payload(PAYLOAD_DNS, &key(9, 53, 17), 0, &answer, 2.0);
        let d = n.destination(&k, IP, 3.0);
        assert_eq!(d.domain.as_deref(), Some("www.dropbox.com"));
        assert_eq!(d.source, Some(NameSource::Dns));
        assert!(d.tls_no_sni);
        assert_eq!(d.service.unwrap().id, "dropbox");
        // The socket keeps its name after the answer expires.
        assert_eq!(n.destination(&k, IP, 100_000.0).domain.as_deref(), Some("www.dropbox.com"));
    }

    #[test]
    fn plain_http_host_and_path() {
        let mut n = namer();
        let k = key(3, 80, 6);
        n.on_payload(PAYLOAD_STREAM_HEAD, &k, 0, b"PUT /2/files/upload HTTP/1.1\r\nHost: content.dropboxapi.com\r\n\r\n", 1.0);
        let d = n.destination(&k, IP, 1.0);
        assert_eq!(d.domain.as_deref(), Some("content.dropboxapi.com"));
        assert_eq!(d.http_path.as_deref(), Some("/2/files/upload"));
        assert_eq!(d.source, Some(NameSource::HttpHost));
    }

    #[test]
    fn dns_over_tcp_in_segments() {
        let mut n = namer();
        let msg = dns::tests::response("upload.box.com", None, &[Ipv4Addr::new(10, 9, 8, 7)], 300);
        let mut stream = (msg.len() as u16).to_be_bytes().to_vec();
        stream.extend_from_slice(&msg);
        let k = key(4, 53, 6);
        n.on_payload(PAYLOAD_DNS, &k, 1000, &stream[..10], 1.0);
        n.on_payload(PAYLOAD_DNS, &k, 1000, &stream[..10], 1.0); // retransmission
        n.on_payload(PAYLOAD_DNS, &k, 1010, &stream[10..], 1.0);
        assert_eq!(n.stats.dns_answers, 1);
        assert_eq!(n.destination(&key(5, 443, 6), IP, 2.0).service.unwrap().id, "box");
        // Queries over TCP are not copied: the answer's question is tallied
        // for the tunnel rule (an NXDOMAIN, with no answer, too).
        let nx = dns::tests::response("c2lsbHk.t.exfil-test.net", None, &[], 0);
        let mut nx_stream = (nx.len() as u16).to_be_bytes().to_vec();
        nx_stream.extend_from_slice(&nx);
        n.on_payload(PAYLOAD_DNS, &k, 1000 + stream.len() as u64, &nx_stream, 1.0);
        let mut t = n.take_queries();
        t.sort_by(|a, b| a.0.1.cmp(&b.0.1));
        assert_eq!(t.iter().map(|((c, d), q)| (*c, d.as_str(), q.queries, q.local_port)).collect::<Vec<_>>(), [(4, "box.com", 1, 40000), (4, "exfil-test.net", 1, 40000)]);
    }

    #[test]
    fn a_trickle_of_partial_tcp_dns_messages_on_many_connections_stays_bounded() {
        let mut n = namer();
        // 2,000 connections from port 53, each the start of a 60 KiB message that never ends.
        let mut start = 60_000u16.to_be_bytes().to_vec();
        start.extend_from_slice(&[0u8; 8_000]);
        for c in 0..2_000u64 {
            n.on_payload(PAYLOAD_DNS, &key(100 + c, 53, 6), 1, &start, 1.0);
        }
        let held: usize = n.tcp_dns.values().map(|s| s.buf.len()).sum();
        assert!(n.tcp_dns.len() <= MAX_TCP_DNS && held <= MAX_TCP_DNS_BYTES, "{} reassemblies, {held} bytes", n.tcp_dns.len());
        assert!(n.stats.tcp_dns_evicted >= 2_000 - MAX_TCP_DNS as u64, "{}", n.stats.tcp_dns_evicted);
        n.expire(1.0 + TCP_DNS_IDLE_S);
        assert!(n.tcp_dns.is_empty(), "stalled reassemblies expire");
    }

    #[test]
    fn only_answers_to_queries_this_host_sent_are_believed() {
        let mut n = namer();
        let answer = dns::tests::response("backup.corp.example", None, &[Ipv4Addr::new(10, 9, 8, 7)], 60);
        let (server, client) = (key(9, 53, 17), 40000);
        // Unsolicited, and answers that match a query in all but one field: ignored.
        n.on_payload(PAYLOAD_DNS, &server, 0, &answer, 1.0);
        n.on_payload(PAYLOAD_DNS_QUERY, &server, 0, &dns::tests::query("other.example"), 1.0);
        n.on_payload(PAYLOAD_DNS, &server, 0, &answer, 1.0);
        let mut elsewhere = server;
        elsewhere.remote_addr[15] = 99;
        n.on_payload(PAYLOAD_DNS_QUERY, &server, 0, &dns::tests::query("backup.corp.example"), 1.0);
        n.on_payload(PAYLOAD_DNS, &elsewhere, 0, &answer, 1.0);
        let mut other_port = server;
        other_port.local_port = client + 1;
        n.on_payload(PAYLOAD_DNS, &other_port, 0, &answer, 1.0);
        assert_eq!((n.stats.dns_answers, n.stats.dns_unsolicited), (0, 4));
        assert!(n.dns.get(&IP, 2.0).is_none());
        // Too late, then the real one.
        n.on_payload(PAYLOAD_DNS, &server, 0, &answer, 1.0 + PENDING_S + 1.0);
        assert_eq!(n.stats.dns_unsolicited, 5);
        n.on_payload(PAYLOAD_DNS_QUERY, &server, 0, &dns::tests::query("Backup.Corp.Example"), 50.0);
        n.on_payload(PAYLOAD_DNS, &server, 0, &answer, 50.5);
        assert_eq!(n.stats.dns_answers, 1);
        assert_eq!(n.dns.get(&IP, 51.0).unwrap()[0], "backup.corp.example");
        // A second answer to the same query is not believed either (one answer per query).
        n.on_payload(PAYLOAD_DNS, &server, 0, &answer, 50.6);
        assert_eq!(n.stats.dns_unsolicited, 6);
    }

    #[test]
    fn queries_are_tallied_by_socket_and_registered_domain_and_data_labels_counted() {
        let mut n = namer();
        let server = key(9, 53, 17);
        for i in 0..50u32 {
            let data = format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15);
            n.on_payload(PAYLOAD_DNS_QUERY, &server, 0, &dns::tests::query(&format!("{data}.{i}.t.exfil-test.net")), 1.0);
            n.on_payload(PAYLOAD_DNS_QUERY, &server, 0, &dns::tests::query("www.example.org"), 1.0);
        }
        let mut t = n.take_queries();
        t.sort_by(|a, b| a.0.1.cmp(&b.0.1));
        assert_eq!(t.len(), 2);
        let (example, tunnel) = (&t[0], &t[1]);
        assert_eq!((example.0.1.as_str(), example.1.queries, example.1.data_names), ("example.org", 50, 0));
        assert_eq!((tunnel.0.1.as_str(), tunnel.1.queries, tunnel.1.data_names), ("exfil-test.net", 50, 50));
        assert_eq!(tunnel.1.longest_label, 32);
        assert!(n.take_queries().is_empty(), "taken once per tick");
        assert!(!looks_like_data("www") && !looks_like_data("mail-eu-west") && looks_like_data("q9f3k2m8x7v1z4"));
    }

    #[test]
    fn a_claimed_name_is_corroborated_only_by_an_answer_mapping_it_to_that_address() {
        let mut n = namer();
        let (a, b) = (key(20, 443, 6), key(21, 443, 6));
        n.on_payload(PAYLOAD_STREAM_HEAD, &a, 0, &tls::tests::hello(Some("backup.corp.example"), 0), 1.0);
        let d = n.destination(&a, IP, 1.0);
        assert_eq!(d.domain.as_deref(), Some("backup.corp.example"));
        assert!(!d.corroborated, "the sender's own claim");
        // The host resolves that name to this very address: the claim holds, for
        // this socket and the next, and stays after the answer expires.
        n.on_payload(PAYLOAD_DNS_QUERY, &key(9, 53, 17), 0, &dns::tests::query("backup.corp.example"), 2.0);
        n.on_payload(PAYLOAD_DNS, &key(9, 53, 17), 0, &dns::tests::response("backup.corp.example", None, &[Ipv4Addr::new(10, 9, 8, 7)], 60), 2.0);
        assert!(n.destination(&a, IP, 3.0).corroborated);
        n.on_payload(PAYLOAD_STREAM_HEAD, &b, 0, &tls::tests::hello(Some("backup.corp.example"), 0), 3.0);
        assert!(n.destination(&b, IP, 3.0).corroborated);
        assert!(n.destination(&a, IP, 100_000.0).corroborated);
        // The same name claimed towards another address is not.
        let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        let c = key(22, 443, 6);
        n.on_payload(PAYLOAD_STREAM_HEAD, &c, 0, &tls::tests::hello(Some("backup.corp.example"), 0), 3.0);
        assert!(!n.destination(&c, other, 3.0).corroborated);
    }

    #[test]
    fn stalled_and_garbage_starts_are_concluded_and_counted() {
        let mut n = namer();
        let hello = tls::tests::hello(Some("a.example"), 0);
        let k = key(6, 443, 6);
        n.on_payload(PAYLOAD_STREAM_HEAD, &k, 0, &hello[..20], 1.0);
        n.expire(1.0 + HEAD_TIMEOUT_S);
        assert_eq!(n.stats.heads_abandoned, 1);
        assert_eq!(n.tracked().0, 0);
        n.on_payload(PAYLOAD_STREAM_HEAD, &key(7, 443, 6), 0, b"\x16\x03\x01\x00\x04\xff\xff\xff\xff", 1.0);
        n.on_payload(PAYLOAD_DNS, &key(8, 53, 17), 0, b"\xff\xff\xff", 1.0);
        assert_eq!((n.stats.tls_malformed, n.stats.dns_malformed), (1, 1));
    }

    #[test]
    fn quic_initials_are_flagged() {
        let mut n = namer();
        let mut p = vec![0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0];
        p.resize(1200, 0);
        let k = key(10, 443, 17);
        n.on_payload(PAYLOAD_DATAGRAM_HEAD, &k, 0, &p, 1.0);
        n.on_payload(PAYLOAD_DATAGRAM_HEAD, &k, 1, &p, 1.0);
        assert_eq!(n.destination(&k, IP, 1.0).protocol, Some(AppProtocol::Quic));
        assert_eq!(n.stats.quic_initials, 1);
    }

    #[test]
    fn hostile_names_are_not_names() {
        assert_eq!(clean_name(b"Mega.NZ."), Some("mega.nz".into()));
        assert_eq!(clean_name(b"a\x1b[31m.example"), None);
        assert_eq!(clean_name(b"a\nb"), None);
        assert_eq!(clean_name(&[0xff, 0xfe]), None);
        assert_eq!(clean_name(&[b'a'; 300]), None);
    }
}

/// Fuzzing: every parser and the reassembly in front of them take arbitrary
/// and mutated input without panicking (proptest; `cargo test` runs 2,000
/// cases per property, SLUICE_FUZZ_CASES=N runs a longer session).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn mutate(mut base: Vec<u8>, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
        for &(i, b) in edits {
            if !base.is_empty() {
                let n = base.len();
                base[i % n] = b;
            }
        }
        base.truncate(cut.max(1).min(base.len()));
        base
    }

    fn cases() -> u32 {
        std::env::var("SLUICE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn parsers_take_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = tls::client_hello(&data);
            let _ = http::request(&data);
            let _ = dns::answers(&data);
            let _ = quic::initial(&data);
            let _ = socks::request(&data);
        }

        #[test]
        fn parsers_take_mutated_valid_messages(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in 0usize..3000,
        ) {
            let hello = mutate(tls::tests::hello(Some("a.userstorage.mega.co.nz"), 600), &edits, cut);
            if let tls::Hello::Sni(n) = tls::client_hello(&hello) {
                prop_assert!(clean_name(n.as_bytes()).is_some());
            }
            let answer = dns::tests::response("www.dropbox.com", Some("x.dropbox-dns.com"), &[std::net::Ipv4Addr::new(1, 2, 3, 4)], 60);
            if let Ok(answers) = dns::answers(&mutate(answer, &edits, cut)) {
                for a in answers {
                    prop_assert!(a.names.iter().all(|n| clean_name(n.as_bytes()).is_some()));
                }
            }
            let _ = http::request(&mutate(b"PUT /ul/x HTTP/1.1\r\nHost: a.mega.nz\r\n\r\n".to_vec(), &edits, cut));
            let socks5 = [&[5u8, 2, 0, 2, 1, 1, b'u', 1, b'p', 5, 1, 0, 3, 9][..], b"x.example", &[1, 187]].concat();
            if let socks::Request::Connect { host, .. } = socks::request(&mutate(socks5, &edits, cut)) {
                prop_assert!(host.parse::<IpAddr>().is_ok() || clean_name(host.as_bytes()).is_some());
            }
        }

        #[test]
        fn reassembly_takes_any_sequence_of_copies(
            copies in proptest::collection::vec((0u32..4, 0u64..5000, proptest::collection::vec(any::<u8>(), 0..600)), 0..40),
        ) {
            let mut n = Namer::new(Arc::new(Catalog::builtin()), 64);
            let k = FlowKey {
                cookie: 1, local_addr: [0; 16], remote_addr: [0; 16], local_port: 1, remote_port: 53,
                protocol: 6, ip_version: 4, _pad: [0; 2], pid: 0, _pad2: 0,
            };
            for (i, (kind, offset, data)) in copies.iter().enumerate() {
                n.on_payload(*kind, &k, *offset, data, i as f64);
                let _ = n.destination(&k, IpAddr::from([1, 2, 3, 4]), i as f64);
            }
            n.expire(1e9);
            prop_assert!(n.tracked().0 == 0);
        }
    }
}
