//! Fires when a program that runs from where no installed program does
//! (/tmp, /var/tmp, /dev/shm, /run/user, a hidden directory), whose file was
//! deleted while it runs or is a memfd, whose name carries control
//! characters, or that borrows a kernel thread's or system daemon's name (or
//! whose job's program does), sends more than a low floor in the short window.
//! Each of these is how implants hide; together with an upload they are
//! worth an analyst's look at a few MiB. The same facts are indicators on
//! every other alert of the process.

use super::{Finding, Rule};
use crate::detect::{
    reason::{human_bytes, where_to, who},
    subject::Subject,
    Detector,
};

pub const RULE: Rule = Rule {
    id: "sluice.suspicious_origin_upload",
    name: "Program from a suspicious location or with a borrowed name uploading",
    severity: "high",
    severity_num: 73,
    techniques: &[("T1036", "Masquerading"), ("T1070.004", "Indicator Removal: File Deletion"), ("T1048", "Exfiltration Over Alternative Protocol")],
};

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = &d.cfg.suspicious_origin;
    if !r.enabled || s.origin.is_empty() || s.job_out < r.floor {
        return None;
    }
    let reason = format!(
        "{} sent {} to {}, and its job sent {} in the last {} s; it {}: that is how implants hide, and they should not be uploading",
        who(&s.f.process),
        human_bytes(s.f.bytes_out),
        where_to(s.f),
        human_bytes(s.job_out),
        s.short_s,
        s.origin.join(", ")
    );
    Some(Finding::over_floor(RULE, &format!("origin|{}", s.job), (s.job_out, s.job_in), s, reason, s.indicators.clone()))
}

#[cfg(test)]
mod tests {
    use crate::detect::tests::{detector, flow, ids, proc_, tick, MIB};

    #[test]
    fn a_deleted_program_in_a_hidden_shm_directory_named_like_a_kernel_thread() {
        let mut d = detector();
        let mut p = proc_(90, 1, "/dev/shm/.x/kworker", &["[kworker/0:1]"]);
        p.exe_deleted = true;
        assert!(d.tick(&tick(5.0, vec![flow(&p, 3 * MIB)])).is_empty(), "under the floor");
        let a = d.tick(&tick(10.0, vec![flow(&p, 2 * MIB)]));
        assert_eq!(ids(&a), [super::RULE.id]);
        for want in ["memory-backed /dev/shm", "hidden directory", "deleted", "kernel thread"] {
            assert!(a[0].reason.contains(want), "{}", a[0].reason);
        }
        // An installed program sending the same is nothing.
        let mut d = detector();
        assert!(d.tick(&tick(5.0, vec![flow(&proc_(91, 1, "/usr/bin/python3", &["python3"]), 5 * MIB)])).is_empty());
    }
}
