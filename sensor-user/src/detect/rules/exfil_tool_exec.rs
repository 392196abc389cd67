//! A low-severity event when a Mega client (MEGAsync, MEGAcmd's `mega-*` and
//! server, megatools) or rclone with a remote or an upload verb starts, before
//! any byte moves: Splunk's "Mega Utility Execution" flags the execution
//! itself, and a client that only talks to its API (a few hundred bytes, a
//! login, a listing) never crosses an upload floor. The job's upload alerts
//! later name this exec.

use super::{Finding, Rule};
use crate::detect::{catalog, reason::command, Detector, ProcInfo};

pub const RULE: Rule = Rule {
    id: "sluice.exfil_tool_exec",
    name: "Mega client or bulk-sync tool started",
    severity: "low",
    severity_num: 21,
    techniques: &[("T1567.002", "Exfiltration Over Web Service: Exfiltration to Cloud Storage")],
};

/// Tool execs remembered at most (by job), so a storm of them stays bounded.
const MAX_TOOL_JOBS: usize = 4096;

pub fn check(d: &mut Detector, e: &ProcInfo, t: f64) -> Option<Finding> {
    let product = catalog::tool_exec(&e.executable, &e.args)?;
    if d.tool_execs.len() < MAX_TOOL_JOBS {
        d.tool_execs.insert(e.job_key(), (t, e.clone()));
    }
    if !d.cfg.exfil_tool_exec.enabled || d.allowlisted_process(e) {
        return None;
    }
    let reason = format!(
        "`{}` (pid {}, {}) started; it is {}, a client for pushing files to cloud storage that ransomware crews use to take data, \
         so its uploads from this job will be judged at the tool floor",
        command(e),
        e.pid,
        e.executable,
        product
    );
    Some(Finding {
        rule: RULE,
        // One event per program per suppression period, however many commands.
        entity: format!("exec:{}", e.executable),
        dest: String::new(),
        bytes_out: 0,
        bytes_in: 0,
        window_s: 0.0,
        baseline: None,
        score: 0.0,
        reason,
        indicators: vec![format!("tool: {product}")],
    })
}

#[cfg(test)]
mod tests {
    use crate::detect::tests::{detector, ids, proc_, tick};

    #[test]
    fn a_mega_client_that_only_talks_to_its_api_is_an_event_at_exec() {
        let mut d = detector();
        let mut t = tick(5.0, vec![]);
        t.execs = vec![proc_(40, 1, "/usr/local/bin/megaput", &["megaput", "--path", "/Root/x", "db.tar"])];
        let a = d.tick(&t);
        assert_eq!(ids(&a), [super::RULE.id]);
        assert_eq!(a[0].rule.severity, "low");
        assert!(a[0].remote_ip.is_none(), "about a process, not a flow");
        assert!(a[0].reason.starts_with("`megaput --path /Root/x db.tar` (pid 40, /usr/local/bin/megaput) started"), "{}", a[0].reason);
        // rclone without a remote is not worth an event; a second megaput within the hour is suppressed.
        let mut t = tick(10.0, vec![]);
        t.execs = vec![proc_(41, 1, "/usr/bin/rclone", &["rclone", "version"]), proc_(42, 1, "/usr/local/bin/megaput", &["megaput", "y"])];
        assert!(d.tick(&t).is_empty());
    }
}
