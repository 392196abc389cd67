//! Minute one: fires when a job, or the host as a whole, sends more than the
//! floor in the short window to a service the catalog lists as cloud storage,
//! file sharing, paste or webhook (Cortex XDR's "massive upload to SaaS" and
//! Elastic's rare-destination jobs need days of data; this needs none).
//! Mega and other services marked `exfil_tool` are `exfil_tool_upload`'s.

use super::{Finding, Rule};
use crate::{
    detect::{
        reason::{human_bytes, where_to, who},
        subject::Subject,
        Detector,
    },
    services::{is_upload_category, is_within},
};

pub const RULE: Rule = Rule {
    id: "sluice.storage_upload",
    name: "Bulk upload to a cloud-storage or file-sharing service",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1567.002", "Exfiltration Over Web Service: Exfiltration to Cloud Storage")],
};

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = d.cfg.storage_upload.clone();
    let svc = s.service.as_ref().filter(|svc| is_upload_category(&svc.category) && !svc.exfil_tool)?.clone();
    if !r.enabled {
        return None;
    }
    let job_key = format!("storage|{}|{}", s.job, svc.id);
    let host_key = format!("storage|{}", svc.id);
    let by_job = d.bump_rule_window(&job_key, s);
    let by_host = d.bump_rule_window(&host_key, s);
    let (key, (out, inb), scope) = if by_job.0 >= r.floor {
        (job_key, by_job, "this job")
    } else if by_host.0 >= r.floor {
        (host_key, by_host, "programs on this host")
    } else {
        return None;
    };
    let endpoint = s.f.domain.as_deref().is_some_and(|d| svc.upload_hosts.iter().any(|h| is_within(d, h)));
    let reason = format!(
        "{} sent {} to {}, {} ({}{}); {scope} sent it {} in the last {} s, over the {} floor for moving data to a service \
         outside this organisation's control",
        who(&s.f.process),
        human_bytes(s.f.bytes_out),
        where_to(s.f),
        svc.name,
        svc.category,
        if endpoint { ", its upload endpoint" } else { "" },
        human_bytes(out),
        s.short_s,
        human_bytes(r.floor)
    );
    let mut ind = s.indicators.clone();
    ind.push(format!("service: {} ({})", svc.name, svc.category));
    let mut x = Finding::over_floor(RULE, &key, (out, inb), s, reason, ind);
    x.dest = svc.id.clone();
    Some(x)
}

#[cfg(test)]
mod tests {
    use crate::detect::tests::{detector, flow, ids, proc_, tick, MIB};

    #[test]
    fn bulk_to_a_storage_service_alerts_from_the_first_tick() {
        let mut d = detector();
        let py = proc_(12, 1, "/usr/bin/python3", &["python3", "sync.py"]);
        let mut f = flow(&py, 30 * MIB);
        f.domain = Some("content.dropboxapi.com".into());
        assert!(d.tick(&tick(5.0, vec![f.clone()])).iter().all(|a| a.rule.id != super::RULE.id));
        let a = d.tick(&tick(10.0, vec![f]));
        let a: Vec<_> = a.into_iter().filter(|a| a.rule.id == super::RULE.id).collect();
        assert_eq!(ids(&a), [super::RULE.id]);
        assert!(a[0].reason.contains("Dropbox (storage, its upload endpoint)") && a[0].reason.contains("this job sent it 60.0 MiB"), "{}", a[0].reason);
    }
}
