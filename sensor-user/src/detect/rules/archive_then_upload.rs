//! Fires when an upload is carried by a process started at or after an
//! archiver (tar, zip, 7z, gzip, split, gpg, ...) in the same job or under the
//! same parent: collect, pack, send (MITRE T1560.001 then T1567) is the shape
//! of a deliberate exfiltration. Order matters: a process that started before
//! the archiver (an earlier upload in the same script) is not carrying the
//! archive. Each archiver run is its own chain, so two chains in one job are
//! two alerts, each naming the process that carried it.
//!
//! Limit: an uploader started before the archiver and fed by it later (a
//! listener reading a fifo) is not chained; the job-level rules still count it.

use super::{Finding, Rule, TREE_DEPTH};
use crate::detect::{
    reason::{command, human_bytes, where_to, who},
    subject::Subject,
    Detector, ProcInfo,
};

pub const RULE: Rule = Rule {
    id: "sluice.archive_then_upload",
    name: "Archive created, then uploaded from the same process tree",
    severity: "high",
    severity_num: 73,
    techniques: &[("T1560.001", "Archive Collected Data: Archive via Utility"), ("T1567", "Exfiltration Over Web Service")],
};

/// The keys an archiver is remembered under, and a carrier looked up by: its
/// job, and the parent it shares with its pipeline partners.
pub fn keys(p: &ProcInfo) -> impl Iterator<Item = String> + '_ {
    std::iter::once(p.job_key()).chain(std::iter::once(p.ppid).chain(p.ancestors.iter().map(|a| a.0)).filter(|&q| q > 1).take(TREE_DEPTH).map(|q| format!("ppid:{q}")))
}

/// Where an archiver goes: its job and its parent only (not its ancestors).
pub fn archiver_keys(p: &ProcInfo) -> Vec<String> {
    let mut k = vec![p.job_key()];
    if p.ppid > 1 {
        k.push(format!("ppid:{}", p.ppid));
    }
    k
}

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = d.cfg.archive_then_upload.clone();
    if !r.enabled {
        return None;
    }
    let p = &s.f.process;
    let started_after = |a: &ProcInfo| a.pid != p.pid && (a.start_ns == 0 || p.start_ns == 0 || a.start_ns <= p.start_ns);
    // The latest archiver that this carrier could be carrying.
    let (at, archiver) = keys(p)
        .filter_map(|k| d.archives.get(&k))
        .flat_map(|q| q.iter().rev())
        .filter(|(_, a)| started_after(a))
        .max_by(|x, y| x.1.start_ns.cmp(&y.1.start_ns).then(x.0.total_cmp(&y.0)))
        .cloned()?;
    let key = format!("archive|{}", archiver.entity_id);
    let within = r.within.as_secs_f64();
    let (out, inb) = d.short.bump(&key, s.f, s.t, s.bucket, within);
    if out < r.floor {
        return None;
    }
    let reason = format!(
        "{} sent {} to {} within {:.0} s after `{}` (pid {}) started archiving in the same process tree (job pid {}); \
         packing data and then sending it off the host is how collected files are exfiltrated",
        who(p),
        human_bytes(out),
        where_to(s.f),
        (s.t - at).max(0.0),
        command(&archiver),
        archiver.pid,
        p.job_pid()
    );
    let mut ind = s.indicators.clone();
    ind.push(format!("archiver: {} (pid {})", command(&archiver), archiver.pid));
    let mut x = Finding::over_floor(RULE, &key, (out, inb), s, reason, ind);
    x.window_s = within;
    Some(x)
}

#[cfg(test)]
mod tests {
    use crate::detect::tests::{detector, flow, in_job, proc_, tick, MIB};

    #[test]
    fn two_chains_in_one_script_are_two_alerts_naming_their_carriers_and_not_an_earlier_upload() {
        // One script (job 500): a Mega client upload first, then two
        // `tar cf - dir | python3 up.py` pipelines.
        let job = |pid, exe: &str, args: &[&str], start| {
            let mut p = in_job(proc_(pid, 500, exe, args), 500, "/bin/sh", &["sh", "exfil.sh"]);
            p.start_ns = start;
            p
        };
        let mega = job(501, "/tmp/x/syncd", &["syncd"], 100);
        let tar1 = job(502, "/usr/bin/tar", &["tar", "cf", "-", "/srv/a"], 200);
        let up1 = job(503, "/usr/bin/python3", &["python3", "up.py", "a"], 201);
        let tar2 = job(504, "/usr/bin/tar", &["tar", "cf", "-", "/srv/b"], 300);
        let up2 = job(505, "/usr/bin/python3", &["python3", "up.py", "b"], 301);
        let mut d = detector();
        let mut t0 = tick(5.0, vec![flow(&mega, 2 * MIB)]);
        t0.execs = vec![mega.clone(), tar1.clone(), up1.clone()];
        let a0 = d.tick(&t0);
        assert!(a0.iter().all(|a| a.rule.id != super::RULE.id), "the earlier upload is not the archive's");
        let a1 = d.tick(&tick(10.0, vec![flow(&mega, 2 * MIB), flow(&up1, 2 * MIB)]));
        let mut t2 = tick(15.0, vec![flow(&up2, 2 * MIB)]);
        t2.execs = vec![tar2, up2.clone()];
        let a2 = d.tick(&t2);
        let chains: Vec<_> = a1.iter().chain(&a2).filter(|a| a.rule.id == super::RULE.id).collect();
        assert_eq!(chains.len(), 2, "{:?}", chains.iter().map(|a| &a.reason).collect::<Vec<_>>());
        assert_eq!((chains[0].process.pid, chains[1].process.pid), (503, 505));
        assert!(chains[0].reason.contains("`tar cf - /srv/a` (pid 502)") && chains[1].reason.contains("`tar cf - /srv/b` (pid 504)"));
    }
}
