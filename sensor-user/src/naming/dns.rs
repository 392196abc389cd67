//! DNS answers (parsed with simple-dns) and a bounded, TTL-aware cache of
//! address -> the names that resolved to it, so connections without a TLS or
//! HTTP name (other protocols, QUIC, resumed sessions) are still named.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use simple_dns::{rdata::RData, Packet, PacketFlag};

/// One address an answer gave, with the name the client asked for first,
/// then the CNAME chain's names, and the record's TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ip: IpAddr,
    pub names: Vec<String>,
    pub ttl: u32,
}

/// A DNS message's transaction id and first question, as a query and its
/// answer must share them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    pub id: u16,
    /// Lowercased, without a trailing dot.
    pub name: String,
}

fn question_of(p: &Packet) -> Option<Question> {
    let q = p.questions.first()?;
    let name = q.qname.to_string().trim_end_matches('.').to_ascii_lowercase();
    Some(Question { id: p.id(), name })
}

/// Parse one outbound DNS message; Err unless it is a query with a question.
pub fn query(msg: &[u8]) -> Result<Question, String> {
    let p = Packet::parse(msg).map_err(|e| e.to_string())?;
    if p.has_flags(PacketFlag::RESPONSE) {
        return Err("not a query".into());
    }
    question_of(&p).ok_or_else(|| "a query without a question".into())
}

/// Parse one DNS response: its question (to match it to a query) and answers.
pub fn response(msg: &[u8]) -> Result<(Option<Question>, Vec<Answer>), String> {
    let p = Packet::parse(msg).map_err(|e| e.to_string())?;
    if !p.has_flags(PacketFlag::RESPONSE) {
        return Err("not a response".into());
    }
    Ok((question_of(&p), answers_of(&p)))
}

/// Parse one DNS message; Err for anything that is not a well-formed response.
pub fn answers(msg: &[u8]) -> Result<Vec<Answer>, String> {
    response(msg).map(|(_, a)| a)
}

fn answers_of(p: &Packet) -> Vec<Answer> {
    let asked = p.questions.first().map(|q| q.qname.to_string());
    let mut chain: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for rr in &p.answers {
        if let RData::CNAME(c) = &rr.rdata {
            chain.push(rr.name.to_string());
            chain.push(c.0.to_string());
        }
    }
    for rr in &p.answers {
        let ip = match &rr.rdata {
            RData::A(a) => IpAddr::V4(Ipv4Addr::from(a.address)),
            RData::AAAA(a) => IpAddr::V6(Ipv6Addr::from(a.address)),
            _ => continue,
        };
        let mut names: Vec<String> = Vec::new();
        for n in asked.iter().chain(chain.iter()).chain(std::iter::once(&rr.name.to_string())) {
            if let Some(n) = super::clean_name(n.as_bytes()) {
                if !names.contains(&n) && names.len() < MAX_NAMES {
                    names.push(n);
                }
            }
        }
        if !names.is_empty() {
            out.push(Answer { ip, names, ttl: rr.ttl });
        }
    }
    out
}

/// Names kept per address (a CDN address serves many; the newest win).
const MAX_NAMES: usize = 4;

/// Programs keep using an answer after its TTL (connection reuse, their own
/// caches), so an entry lives `ttl + GRACE_S`, and at least `MIN_LIFE_S`.
const GRACE_S: f64 = 600.0;
const MIN_LIFE_S: f64 = 300.0;
/// TTLs are capped at a day, as resolvers cap them (unbound's cache-max-ttl):
/// a forged answer with TTL 2^31 must not outlive every honest one and never
/// be the first to go when the cache is full.
pub const MAX_TTL_S: u32 = 86_400;

#[derive(Debug, Clone)]
struct Entry {
    names: Vec<String>,
    expires: f64,
}

/// address -> names, bounded: when full, the entries closest to expiry go.
#[derive(Debug)]
pub struct Cache {
    map: HashMap<IpAddr, Entry>,
    max: usize,
    pub evicted: u64,
}

impl Cache {
    pub fn new(max: usize) -> Cache {
        Cache { map: HashMap::new(), max: max.max(16), evicted: 0 }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn insert(&mut self, a: &Answer, now: f64) {
        let expires = now + (a.ttl.min(MAX_TTL_S) as f64 + GRACE_S).max(MIN_LIFE_S);
        if !self.map.contains_key(&a.ip) && self.map.len() >= self.max {
            self.evict(now);
        }
        let e = self.map.entry(a.ip).or_insert(Entry { names: Vec::new(), expires });
        e.expires = e.expires.max(expires);
        // Newest answer first: it is what the next connection most likely used.
        for n in a.names.iter().rev() {
            e.names.retain(|x| x != n);
            e.names.insert(0, n.clone());
        }
        e.names.truncate(MAX_NAMES);
    }

    /// Names for `ip`, most recent answer's first (the name asked for leads).
    pub fn get(&self, ip: &IpAddr, now: f64) -> Option<&[String]> {
        self.map.get(ip).filter(|e| e.expires > now).map(|e| e.names.as_slice())
    }

    /// Drop expired entries, then (if still full) the tenth closest to expiry:
    /// a batch, so a flood of answers costs one sort per tenth, not per insert.
    fn evict(&mut self, now: f64) {
        let before = self.map.len();
        self.map.retain(|_, e| e.expires > now);
        if self.map.len() >= self.max {
            crate::evict::oldest(&mut self.map, self.max / 10 + 1, |_, e| Some(e.expires));
        }
        self.evicted += (before - self.map.len()) as u64;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use simple_dns::{rdata, Name, Question, ResourceRecord, CLASS, QCLASS, QTYPE, TYPE};

    use super::*;

    /// A query for `asked` (A, IN) with transaction id 7, as `response` answers it.
    pub fn query(asked: &str) -> Vec<u8> {
        let mut p = Packet::new_query(7);
        p.questions.push(Question::new(Name::new_unchecked(asked), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
        p.build_bytes_vec().unwrap()
    }

    /// A response: `asked` CNAME `cname` (if any) with A records `ips`.
    pub fn response(asked: &str, cname: Option<&str>, ips: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
        let mut p = Packet::new_reply(7);
        p.questions.push(Question::new(Name::new_unchecked(asked), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
        let owner = match cname {
            Some(c) => {
                p.answers.push(ResourceRecord::new(
                    Name::new_unchecked(asked),
                    CLASS::IN,
                    ttl,
                    RData::CNAME(rdata::CNAME(Name::new_unchecked(c))),
                ));
                c
            }
            None => asked,
        };
        for ip in ips {
            p.answers.push(ResourceRecord::new(
                Name::new_unchecked(owner),
                CLASS::IN,
                ttl,
                RData::A(rdata::A { address: u32::from(*ip) }),
            ));
        }
        p.build_bytes_vec().unwrap()
    }

    #[test]
    fn answers_carry_the_asked_name_then_the_chain() {
        let msg = response("www.dropbox.com", Some("www-env.dropbox-dns.com"), &[Ipv4Addr::new(162, 125, 1, 18)], 60);
        let a = answers(&msg).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].ip, IpAddr::V4(Ipv4Addr::new(162, 125, 1, 18)));
        assert_eq!(a[0].names, vec!["www.dropbox.com".to_string(), "www-env.dropbox-dns.com".to_string()]);
        assert_eq!(a[0].ttl, 60);
    }

    #[test]
    fn queries_garbage_and_truncation_are_errors() {
        let mut q = Packet::new_query(1);
        q.questions.push(Question::new(Name::new_unchecked("x.example"), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
        assert!(answers(&q.build_bytes_vec().unwrap()).is_err());
        assert!(answers(b"\x00\x01garbage").is_err());
        let msg = response("a.example", None, &[Ipv4Addr::new(1, 2, 3, 4)], 60);
        for cut in 0..msg.len() {
            let _ = answers(&msg[..cut]); // never panics
        }
    }

    #[test]
    fn a_forged_huge_ttl_is_capped_and_goes_first_when_full() {
        let forged = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
        let mut c = Cache::new(16);
        c.insert(&Answer { ip: forged, names: vec!["backup.corp.example".into()], ttl: u32::MAX }, 0.0);
        let day = MAX_TTL_S as f64 + GRACE_S;
        assert!(c.get(&forged, day - 1.0).is_some() && c.get(&forged, day + 1.0).is_none(), "capped at a day");
        // Honest answers with the same day-long TTL, later: the forged one is evicted first.
        for i in 0..16u32 {
            c.insert(&Answer { ip: IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), names: vec!["x.example".into()], ttl: MAX_TTL_S }, 100.0);
        }
        assert!(c.get(&forged, 200.0).is_none(), "the oldest-expiring entry went first");
    }

    #[test]
    fn cache_is_ttl_aware_and_bounded() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let mut c = Cache::new(16);
        c.insert(&Answer { ip, names: vec!["a.example".into()], ttl: 3600 }, 0.0);
        assert_eq!(c.get(&ip, 100.0).unwrap(), ["a.example".to_string()]);
        assert!(c.get(&ip, 3600.0 + GRACE_S + 1.0).is_none(), "expired");
        // A second name for the same address leads, the first stays.
        c.insert(&Answer { ip, names: vec!["b.example".into()], ttl: 60 }, 10.0);
        assert_eq!(c.get(&ip, 20.0).unwrap()[0], "b.example");
        assert_eq!(c.get(&ip, 20.0).unwrap().len(), 2);
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            c.insert(&Answer { ip, names: vec!["x.example".into()], ttl: 60 + i }, 30.0);
        }
        assert!(c.len() <= 16);
        assert!(c.evicted > 0);
    }
}
