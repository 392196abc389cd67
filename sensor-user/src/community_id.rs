//! Community ID v1 (corelight/community-id-spec): one hash of a flow's
//! endpoints that Zeek, Suricata, Elastic Agent and others compute alike, so
//! a sluice flow record joins their records of the same connection
//! (`network.community_id`).

use std::net::IpAddr;

use base64::Engine;
use sha1::{Digest, Sha1};

/// `1:<base64 of SHA-1>` over seed, both addresses, protocol and both ports,
/// endpoints in a fixed order so both directions give the same ID. `None`
/// when the two addresses are of different families (no such flow exists).
pub fn v1(seed: u16, protocol: u8, a: (IpAddr, u16), b: (IpAddr, u16)) -> Option<String> {
    let (first, second) = if (octets(a.0), a.1) <= (octets(b.0), b.1) { (a, b) } else { (b, a) };
    let (x, y) = (octets(first.0), octets(second.0));
    if x.len() != y.len() {
        return None;
    }
    let mut h = Sha1::new();
    h.update(seed.to_be_bytes());
    h.update(&x);
    h.update(&y);
    h.update([protocol, 0]);
    h.update(first.1.to_be_bytes());
    h.update(second.1.to_be_bytes());
    Some(format!("1:{}", base64::engine::general_purpose::STANDARD.encode(h.finalize())))
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, port: u16) -> (IpAddr, u16) {
        (ip.parse().unwrap(), port)
    }

    #[test]
    fn matches_the_reference_implementations_vectors_in_either_direction() {
        // Zeek's community_id_v1 test vectors (seed 0).
        assert_eq!(v1(0, 6, ep("1.2.3.4", 1122), ep("5.6.7.8", 3344)).unwrap(), "1:wCb3OG7yAFWelaUydu0D+125CLM=");
        assert_eq!(v1(0, 6, ep("5.6.7.8", 3344), ep("1.2.3.4", 1122)).unwrap(), "1:wCb3OG7yAFWelaUydu0D+125CLM=");
        assert_eq!(v1(0, 17, ep("1.2.3.4", 1122), ep("5.6.7.8", 3344)).unwrap(), "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg=");
        assert!(v1(0, 6, ep("::1", 1), ep("1.2.3.4", 2)).is_none());
        assert!(v1(0, 6, ep("fd00::1", 1), ep("fd00::2", 2)).unwrap().starts_with("1:"));
    }
}
