//! Fires when one job asks, under one registered domain, for many distinct
//! names whose labels look like data (long, or random-looking) within the
//! window: data encoded into query names and carried by resolvers to the
//! domain's authoritative server is a DNS tunnel (iodine, dnscat2, DNSExfiltrator;
//! MITRE T1048.003), which no byte count on the wire to a resolver shows.
//! A program resolving the same few names over and over asks few distinct
//! names; CDN-hashed names come one or two per page, not hundreds per zone.

use super::{Finding, Rule};
use crate::detect::{
    reason::{human_bytes, who},
    DnsObs, Detector,
};

pub const RULE: Rule = Rule {
    id: "sluice.dns_tunnel",
    name: "Data carried in DNS query names (DNS tunnel)",
    severity: "high",
    severity_num: 73,
    techniques: &[("T1048.003", "Exfiltration Over Alternative Protocol: Exfiltration Over Unencrypted Non-C2 Protocol"), ("T1071.004", "Application Layer Protocol: DNS")],
};

pub fn check(d: &mut Detector, q: &DnsObs, t: f64) -> Option<Finding> {
    let r = d.cfg.dns_tunnel.clone();
    if !r.enabled || d.allowlisted_process(&q.process) || d.cfg.allow_destinations.contains(&q.domain) {
        return None;
    }
    let window = r.window.as_secs_f64();
    let key = format!("dns|{}|{}", q.process.job_key(), q.domain);
    // The window's "out" sums data-carrying names, its "in" the bytes of names asked.
    let (names, bytes) = d.levels.add(&key, q.data_names, q.name_bytes, t, (window / 12.0).max(1.0), window);
    if names < r.names {
        return None;
    }
    let reason = format!(
        "{} asked for {names} distinct data-carrying names under {} in the last {window:.0} s ({} of names, longest label {} \
         characters); data encoded in query names is carried by resolvers to that domain's servers: a DNS tunnel",
        who(&q.process),
        q.domain,
        human_bytes(bytes),
        q.longest_label
    );
    Some(Finding {
        rule: RULE,
        entity: key,
        dest: q.domain.clone(),
        bytes_out: bytes,
        bytes_in: 0,
        window_s: window,
        baseline: None,
        score: names as f64,
        reason,
        indicators: vec![format!("dns zone: {}", q.domain), format!("data-carrying names: {names}")],
    })
}

#[cfg(test)]
mod tests {
    use crate::detect::{
        tests::{detector, ids, proc_, tick},
        DnsObs,
    };

    fn asked(pid: u32, domain: &str, data_names: u64) -> DnsObs {
        DnsObs { process: proc_(pid, 1, "/usr/bin/python3", &["python3", "t.py"]), domain: domain.into(), queries: data_names.max(5), name_bytes: data_names * 70, data_names, longest_label: 60 }
    }

    #[test]
    fn many_data_carrying_names_under_one_zone_are_a_tunnel_and_a_few_are_not() {
        let mut d = detector();
        let mut alerts = Vec::new();
        for i in 0..10u32 {
            let mut t = tick(5.0 * (i + 1) as f64, vec![]);
            t.dns = vec![asked(7, "exfil-test.net", 25), asked(8, "example.org", 2)];
            alerts.extend(d.tick(&t));
        }
        assert_eq!(ids(&alerts), [super::RULE.id], "once the job crossed 200 names");
        assert_eq!(alerts[0].process.pid, 7);
        assert!(alerts[0].reason.contains("200 distinct data-carrying names under exfil-test.net"), "{}", alerts[0].reason);
    }
}
